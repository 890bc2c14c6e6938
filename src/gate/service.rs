use std::{
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{header::CONTENT_LENGTH, Request, Response};
use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use tokio_util::sync::PollSemaphore;
use tower_service::Service;

use super::{
    future::{KeyStage, Parked},
    settle::{Learn, Terms},
    ResponseFuture, SettlingBody,
};
use crate::{
    config::{fallback_output_limit, Shared},
    estimate::{EstimateMethod, Operation, TokenEstimate},
    ledger::{Admission, Waiter},
    telemetry::{ChargeTrace, Trace},
    BoxError, QuotaKey, ThrottleConfig, ThrottleError,
};

/// Admits each request against its key's request and token budgets. See the
/// [module docs](super).
#[derive(Debug)]
pub struct Gate<S> {
    inner: S,
    shared: Arc<Shared>,
    /// Under `Overload::Backpressure`: the places of waiting requests, and the one
    /// `poll_ready` took for the next request.
    places: Option<PollSemaphore>,
    place: Option<OwnedSemaphorePermit>,
}

impl<S: Clone> Clone for Gate<S> {
    fn clone(&self) -> Self {
        // A clone has to be made ready on its own: the place stays with this one.
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            places: self.places.clone(),
            place: None,
        }
    }
}

impl<S> Gate<S> {
    /// Wraps `inner`, spending from `cfg`'s quotas.
    pub fn new(inner: S, cfg: ThrottleConfig) -> Self {
        Self::from_shared(inner, cfg.shared)
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        let places = shared.waiting_places.clone().map(PollSemaphore::new);
        Self {
            inner,
            shared,
            places,
            place: None,
        }
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for Gate<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    ResB: http_body::Body,
{
    type Response = Response<SettlingBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReqB, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.place.is_none() {
            if let Some(places) = &mut self.places {
                // The semaphore is never closed.
                self.place = ready!(places.poll_acquire(cx));
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<ReqB>) -> Self::Future {
        let trace = Trace::attach(&mut request);
        let method = request
            .extensions()
            .get::<TokenEstimate>()
            .map(TokenEstimate::method);
        let (key, operation, input, output_limit, raw_input) =
            match request.extensions().get::<TokenEstimate>() {
                Some(e) => {
                    let (key, operation) = match e.key() {
                        Some(k) => (k.clone(), e.operation()),
                        None => QuotaKey::from_head(request.uri(), request.headers()),
                    };
                    // Hand-set estimates teach the estimator nothing.
                    let learnable = e.method() != EstimateMethod::Manual;
                    let raw = learnable.then(|| e.raw_input_tokens());
                    (key, operation, e.input_tokens(), e.output_limit(), raw)
                }
                None => {
                    // Used without the estimate layer: a quarter token per declared body byte.
                    let (key, operation) = QuotaKey::from_head(request.uri(), request.headers());
                    let len = request
                        .headers()
                        .get(CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .unwrap_or(0);
                    let output = fallback_output_limit(key.model());
                    (key, operation, len.div_ceil(4), output, None)
                }
            };

        let quota = match operation {
            Operation::CountTokens => None, // free at Bedrock
            _ => self.shared.settings.quota_for(&key),
        };
        let clone = self.inner.clone();
        // The service `poll_ready` made ready goes with the request, also while it waits:
        // a clone would need readiness of its own, which a concurrency limit below could
        // not give while the ready ones sit idle.
        let mut inner = std::mem::replace(&mut self.inner, clone);
        trace.describe(&key, input, output_limit, method);
        let Some(quota) = quota else {
            return ResponseFuture::calling(inner.call(request), None, trace);
        };
        let reserved_output = (output_limit as f64 * quota.burndown).ceil() as u64;
        let tokens = input.saturating_add(reserved_output);
        let record = self.shared.diagnosis.key(&key, quota.period);
        record.demand(tokens);
        trace.reserved(tokens);
        // A discovered quota's number is only a guess: a larger request waits for a full bucket.
        if !quota.discover && tokens > quota.tokens {
            return ResponseFuture::failed(
                ThrottleError::NeverFits {
                    key,
                    tokens,
                    quota_tokens: quota.tokens,
                },
                trace,
            );
        }
        let telemetry = self.shared.telemetry.key(&key);
        let terms = Terms {
            burndown: quota.burndown,
            reserved_output,
            record,
            learn: raw_input.map(|raw_input| Learn {
                shared: self.shared.clone(),
                model: key.clone(),
                raw_input,
            }),
            trace: ChargeTrace {
                span: trace.span.clone(),
                key: telemetry.clone(),
                input_estimate: Some(input),
                period: quota.period,
            },
        };
        let tenants = &self.shared.settings.tenants;
        let (tenant, priority) = tenants.classify(request.extensions(), request.headers());
        let policy = tenants.policy(tenant.as_ref());
        trace.tenant(tenant.as_ref(), priority);
        let stage = KeyStage {
            ledger: self.shared.ledger.key(&key, quota),
            tokens,
            deadline: Instant::now() + self.shared.settings.max_wait,
            waiter: Waiter {
                tenant,
                weight: policy.weight_value(),
                priority,
            },
            max_queued: tenants.max_queued,
        };
        let place = self.place.take();
        // A capped tenant first waits for room under its cap, in its own FIFO order.
        let cap = match (&stage.waiter.tenant, policy.cap()) {
            (Some(t), Some(share)) => {
                let cap = self.shared.ledger.cap(&key, t, quota, share);
                // Its own queue is bounded like the key's.
                match cap.admit_as(tokens, stage.deadline, &Waiter::default(), stage.max_queued) {
                    Admission::Admitted(r) => Some(r),
                    Admission::Queued(acquire) => {
                        tracing::debug!(quota_key = %key, tokens, "no room under the tenant's cap: queued");
                        let mut parked = Parked::new(inner, request, terms, Some(stage), place);
                        parked.queued = Some(telemetry.queued());
                        return ResponseFuture::waiting(acquire, parked, trace);
                    }
                    Admission::Shed {
                        queued,
                        retry_after,
                    } => {
                        telemetry.shed();
                        return ResponseFuture::failed(
                            ThrottleError::Overloaded {
                                key,
                                queued,
                                retry_after,
                            },
                            trace,
                        );
                    }
                }
            }
            _ => None,
        };
        let parked = Parked::new(inner, request, terms, None, place);
        ResponseFuture::entered(stage.enter(cap, parked), trace)
    }
}
