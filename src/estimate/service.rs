use std::{
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::Request;
use http_body::Body;
use tower_service::Service;

use super::{ResponseFuture, TokenEstimate};
use crate::{
    bedrock::{context::context_window_of_input, service_tier},
    config::Shared,
    telemetry::Trace,
    BoxError, ThrottleConfig,
};

/// Reads each request body once and attaches a [`TokenEstimate`] to the request. See the
/// [module docs](super).
#[derive(Clone, Debug)]
pub struct Estimate<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Estimate<S> {
    /// Wraps `inner`, estimating with `cfg`.
    pub fn new(inner: S, cfg: ThrottleConfig) -> Self {
        Self::from_shared(inner, cfg.shared)
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for Estimate<S>
where
    S: Service<Request<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + From<Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let trace = Trace::attach(&mut request);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if let Some(estimate) = request.extensions().get::<TokenEstimate>() {
            // Set by the caller: no body read. Fill in the key from the path if absent.
            if estimate.key.is_none() {
                let (key, operation) = service_tier::key_of_head(
                    request.uri(),
                    request.headers(),
                    request.extensions(),
                );
                let estimate = request
                    .extensions_mut()
                    .get_mut::<TokenEstimate>()
                    .expect("present");
                let context = context_window_of_input(estimate.input_tokens);
                estimate.key = Some(key.with_context(context));
                estimate.operation = operation;
            }
            return ResponseFuture::calling(inner.call(request), trace);
        }
        ResponseFuture::collecting(request, inner, self.shared.clone(), trace)
    }
}
