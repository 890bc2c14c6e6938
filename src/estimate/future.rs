use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::Request;
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{Operation, RequestInfo, TokenEstimate};
use crate::{
    bedrock::{context::context_window, service_tier},
    body::CollectBody,
    config::Shared,
    telemetry::Trace,
    BoxError, QuotaKey, ServiceTier,
};

pin_project! {
    /// Response future of [`Estimate`](super::Estimate): reads the body, then calls the
    /// inner service.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
        B: Body,
    {
        #[pin]
        state: State<S::Future, B>,
        pending: Option<Pending<S, B>>,
        trace: Trace,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B: Body> {
        Collecting { #[pin] collect: CollectBody<B> },
        Calling { #[pin] future: F },
    }
}

struct Pending<S, B> {
    service: S,
    parts: http::request::Parts,
    shared: Arc<Shared>,
    _body: std::marker::PhantomData<fn(B)>,
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    B: Body,
{
    pub(super) fn calling(future: S::Future, trace: Trace) -> Self {
        Self {
            state: State::Calling { future },
            pending: None,
            trace,
        }
    }

    pub(super) fn collecting(
        request: Request<B>,
        service: S,
        shared: Arc<Shared>,
        trace: Trace,
    ) -> Self {
        let (parts, body) = request.into_parts();
        Self {
            state: State::Collecting {
                collect: CollectBody::new(
                    body,
                    shared.settings.body_limit,
                    shared.settings.body_timeout,
                ),
            },
            pending: Some(Pending {
                service,
                parts,
                shared,
                _body: std::marker::PhantomData,
            }),
            trace,
        }
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    B: Body + From<Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _span = this.trace.entered();
        loop {
            match this.state.as_mut().project() {
                StateProj::Collecting { collect } => {
                    let bytes = match ready!(collect.poll(cx)) {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            let e = e.into();
                            this.trace.error(&e);
                            return Poll::Ready(Err(e));
                        }
                    };
                    let Pending {
                        mut service,
                        mut parts,
                        shared,
                        ..
                    } = this.pending.take().expect("polled after completion");
                    let (mut key, operation) = QuotaKey::from_uri(&parts.uri);
                    if operation == Operation::ChatCompletions {
                        // Its model is in the body, and so is its quota.
                        let model = crate::bedrock::chat::model(&bytes);
                        key = QuotaKey::new(model.as_deref(), key.region());
                    }
                    let tier = match parts.extensions.get::<ServiceTier>() {
                        Some(tier) => Some(*tier),
                        None => {
                            let tier = service_tier::of_request(&parts.headers, operation, &bytes);
                            if let Some(tier) = tier {
                                parts.extensions.insert(tier);
                            }
                            tier
                        }
                    };
                    if tier == Some(ServiceTier::Reserved) {
                        key = key.reserved();
                    }
                    let estimate = shared.estimator.estimate(&RequestInfo {
                        model: key.model(),
                        operation,
                        body: &bytes,
                    });
                    let calibrated = match key.model() {
                        Some(m) => shared.calibration.apply(m, estimate.input_tokens),
                        None => estimate.input_tokens,
                    };
                    tracing::trace!(
                        quota_key = %key,
                        input_tokens = calibrated,
                        raw_input_tokens = estimate.input_tokens,
                        output_limit = estimate.output_limit,
                        method = ?estimate.method,
                        "estimated request"
                    );
                    let key = key.with_context(context_window(&bytes, calibrated));
                    (this.trace).describe(
                        &key,
                        calibrated,
                        estimate.output_limit,
                        Some(estimate.method),
                    );
                    parts.extensions.insert(TokenEstimate::from_body(
                        key, operation, estimate, calibrated,
                    ));
                    let request = Request::from_parts(parts, B::from(bytes));
                    let future = service.call(request);
                    this.state.set(State::Calling { future });
                }
                // The layers below record the outcome.
                StateProj::Calling { future } => return future.poll(cx).map_err(Into::into),
            }
        }
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    B: Body,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

// The parked service and request head carry no pinning requirement.
impl<S, B> Unpin for Pending<S, B> {}
