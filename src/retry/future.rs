use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::{policy::delay, Attempts};
use crate::{
    bedrock::classify::{classify, Outcome},
    body::{CollectBody, RequestTemplate},
    config::Shared,
    telemetry::Trace,
    BoxError, ThrottleError, ThrottleKind,
};

pin_project! {
    /// Response future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
        B: Body,
    {
        #[pin]
        state: State<S::Future, B>,
        service: S,
        template: Option<RequestTemplate>,
        body: Bytes,
        attempts: u32,
        shared: Arc<Shared>,
        trace: Trace,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B: Body> {
        Collecting { #[pin] collect: CollectBody<B> },
        PollReady,
        Calling { #[pin] future: F },
        Sleeping { #[pin] sleep: Sleep },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    B: Body,
{
    pub(super) fn new(request: Request<B>, service: S, shared: Arc<Shared>, trace: Trace) -> Self {
        let (parts, body) = request.into_parts();
        Self {
            state: State::Collecting {
                collect: CollectBody::new(
                    body,
                    shared.settings.body_limit,
                    shared.settings.body_timeout,
                ),
            },
            service,
            template: Some(RequestTemplate::new(parts)),
            body: Bytes::new(),
            attempts: 0,
            shared,
            trace,
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    B: Body + From<Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _span = this.trace.entered();
        let settings = &this.shared.settings.retry;
        loop {
            match this.state.as_mut().project() {
                StateProj::Collecting { collect } => {
                    *this.body = match ready!(collect.poll(cx)) {
                        Ok(body) => body,
                        Err(e) => {
                            let e = e.into();
                            this.trace.error(&e);
                            return Poll::Ready(Err(e));
                        }
                    };
                    // The service was made ready by `Retry::poll_ready`.
                    let future = call(
                        this.service,
                        this.template,
                        this.body,
                        this.attempts,
                        settings.max_attempts,
                    );
                    this.state.set(State::Calling { future });
                }
                StateProj::PollReady => {
                    if let Err(e) = ready!(this.service.poll_ready(cx)) {
                        let e = e.into();
                        this.trace.error(&e);
                        return Poll::Ready(Err(e));
                    }
                    let future = call(
                        this.service,
                        this.template,
                        this.body,
                        this.attempts,
                        settings.max_attempts,
                    );
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let attempts = *this.attempts;
                    let result = ready!(future.poll(cx));
                    let budget = this.shared.retry_budget.as_ref();
                    let send_deadline = this.template.as_ref().and_then(|t| t.send_deadline());
                    // A retry that would start past the send deadline (a signature's
                    // validity) is not made: the caller gets this outcome, and signs anew.
                    let can_retry = |wait: Duration| {
                        attempts < settings.max_attempts
                            && !send_deadline.is_some_and(|d| d.passed_at(Instant::now() + wait))
                            && budget.is_none_or(|b| b.withdraw())
                    };
                    match result {
                        Ok(mut response) => {
                            let mut outcome = classify(response.status(), response.headers());
                            match response.extensions().get::<ThrottleKind>() {
                                // The day's tokens are gone: retrying within minutes cannot help.
                                Some(ThrottleKind::DailyTokens) => outcome = Outcome::Final,
                                // The gate below read a throttle's code in its body.
                                Some(_) if !response.status().is_success() => {
                                    outcome = Outcome::Throttled
                                }
                                _ => {}
                            }
                            let retryable =
                                matches!(outcome, Outcome::Throttled | Outcome::Transient);
                            // The wait (and its header parsing) only for a response to retry.
                            let wait = retryable
                                .then(|| delay(settings, attempts, Some(response.headers())))
                                .filter(|&wait| can_retry(wait));
                            if let Some(wait) = wait {
                                tracing::debug!(status = %response.status(), attempts, ?wait, "retrying");
                                retried(this.shared, this.template);
                                this.state.set(State::Sleeping {
                                    sleep: tokio::time::sleep(wait),
                                });
                                continue;
                            }
                            if attempts == 1 && outcome == Outcome::Success {
                                if let Some(b) = budget {
                                    b.deposit();
                                }
                            }
                            response.extensions_mut().insert(Attempts(attempts));
                            this.trace.span.record("attempts", attempts);
                            this.trace.response(response.status());
                            return Poll::Ready(Ok(response));
                        }
                        Err(error) => {
                            let error: BoxError = error.into();
                            if error.is::<ThrottleError>() {
                                this.trace.span.record("attempts", attempts);
                                this.trace.error(&error);
                                return Poll::Ready(Err(error)); // our own verdict: final
                            }
                            let wait = delay(settings, attempts, None);
                            if can_retry(wait) {
                                tracing::debug!(%error, attempts, ?wait, "retrying after an error");
                                retried(this.shared, this.template);
                                this.state.set(State::Sleeping {
                                    sleep: tokio::time::sleep(wait),
                                });
                                continue;
                            }
                            let error = ThrottleError::Upstream {
                                attempts,
                                source: error,
                            }
                            .into();
                            this.trace.span.record("attempts", attempts);
                            this.trace.error(&error);
                            return Poll::Ready(Err(error));
                        }
                    }
                }
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::PollReady);
                }
            }
        }
    }
}

/// Counts a retry against the request's quota key, if the gate meters that key: a retry
/// never creates metric series of its own (a model without a quota has none).
fn retried(shared: &Shared, template: &Option<RequestTemplate>) {
    if let Some(k) = template
        .as_ref()
        .and_then(|t| shared.telemetry.get(&t.quota_key()))
    {
        k.retried();
    }
}

/// Sends attempt number `attempts + 1`; the last one moves the request head instead of
/// copying it.
fn call<S, B>(
    service: &mut S,
    template: &mut Option<RequestTemplate>,
    body: &Bytes,
    attempts: &mut u32,
    max_attempts: u32,
) -> S::Future
where
    S: Service<Request<B>>,
    B: From<Bytes>,
{
    *attempts += 1;
    let request = if *attempts >= max_attempts {
        template
            .take()
            .expect("request head")
            .into_request(body.clone())
    } else {
        template.as_ref().expect("request head").build(body.clone())
    };
    service.call(request)
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    B: Body,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}
