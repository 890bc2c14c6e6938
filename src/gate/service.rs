use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{header::CONTENT_LENGTH, Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use super::{
    future::{Charge, Learn, Terms},
    ResponseFuture, SettlingBody,
};
use crate::{
    config::{fallback_output_limit, Shared},
    estimate::{EstimateMethod, Operation, TokenEstimate},
    ledger::Admission,
    BoxError, QuotaKey, ThrottleConfig, ThrottleError,
};

/// Admits each request against its key's request and token budgets. See the
/// [module docs](super).
#[derive(Clone, Debug)]
pub struct Gate<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Gate<S> {
    /// Wraps `inner`, spending from `cfg`'s quotas.
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
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
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
        let Some(quota) = quota else {
            return ResponseFuture::calling(inner.call(request), None);
        };
        let reserved_output = (output_limit as f64 * quota.burndown).ceil() as u64;
        let tokens = input.saturating_add(reserved_output);
        let record = self.shared.diagnosis.key(&key, quota.period);
        record.demand(tokens);
        // A discovered quota's number is only a guess: a larger request waits for a full bucket.
        if !quota.discover && tokens > quota.tokens {
            return ResponseFuture::failed(ThrottleError::NeverFits {
                key,
                tokens,
                quota_tokens: quota.tokens,
            });
        }
        let terms = Terms {
            burndown: quota.burndown,
            reserved_output,
            record,
            learn: raw_input.map(|raw_input| Learn {
                shared: self.shared.clone(),
                model: key.clone(),
                raw_input,
            }),
        };
        let ledger = self.shared.ledger.key(&key, quota);
        let deadline = Instant::now() + self.shared.settings.max_wait;
        match ledger.admit(tokens, deadline) {
            Admission::Admitted(reservation) => {
                let charge = Charge::new(reservation, terms);
                ResponseFuture::calling(inner.call(request), Some(charge))
            }
            Admission::Queued(acquire) => ResponseFuture::waiting(acquire, inner, request, terms),
        }
    }
}
