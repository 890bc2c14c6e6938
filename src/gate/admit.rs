//! Admission: how a request gets from its head to a reservation of its key's budgets.
//!
//! [`Plan::new`] decides what a request asks for and under which terms; [`Reserve::enter`]
//! asks the tenant's cap (if any) and then the key for room. A request that has to wait is
//! [`Parked`] with the ready service that will send it; the response future polls its
//! place in the queue and hands the reservation back to [`Parked::admitted`].

use std::{sync::Arc, time::Duration};

use http::{header::CONTENT_LENGTH, Request};
use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use tower_service::Service;

use super::settle::{Charge, Learn, Terms};
use crate::{
    config::{fallback_output_limit, Shared},
    estimate::{EstimateMethod, Operation, TokenEstimate},
    ledger::{Acquire, Admission, KeyLedger, Reservation, Waiter},
    telemetry::{ChargeTrace, QueueGuard, Trace},
    QuotaKey, SendDeadline, ThrottleError,
};

/// What a request asks for, read from the estimate attached to it or else from its head.
struct Ask {
    key: QuotaKey,
    operation: Operation,
    input: u64,
    output_limit: u64,
    /// The estimator's raw input count, when the estimator may learn from this request.
    raw_input: Option<u64>,
    method: Option<EstimateMethod>,
}

impl Ask {
    fn of<B>(request: &Request<B>) -> Self {
        let Some(e) = request.extensions().get::<TokenEstimate>() else {
            // Used without the estimate layer: a quarter token per declared body byte.
            let (key, operation) = QuotaKey::from_uri(request.uri());
            let len = request
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(0);
            let output_limit = fallback_output_limit(key.model());
            return Self {
                key,
                operation,
                input: len.div_ceil(4),
                output_limit,
                raw_input: None,
                method: None,
            };
        };
        let (key, operation) = match e.key() {
            Some(k) => (k.clone(), e.operation()),
            None => QuotaKey::from_uri(request.uri()),
        };
        // Hand-set estimates teach the estimator nothing.
        let learnable = e.method() != EstimateMethod::Manual;
        Self {
            key,
            operation,
            input: e.input_tokens(),
            output_limit: e.output_limit(),
            raw_input: learnable.then(|| e.raw_input_tokens()),
            method: Some(e.method()),
        }
    }
}

/// How a request is to be admitted.
pub(super) enum Plan {
    /// No quota applies (counting tokens is free at Bedrock, or the key has no quota): the
    /// request is sent at once and charged nothing.
    Unmetered,
    /// The request can never be admitted; it is not sent.
    Refused(ThrottleError),
    /// The request reserves its tokens.
    Reserve(Reserve),
}

impl Plan {
    /// Reads the request's key, tokens, quota and tenant, and records its demand.
    pub(super) fn new<B>(shared: &Arc<Shared>, request: &Request<B>, trace: &Trace) -> Self {
        let ask = Ask::of(request);
        let key = ask.key;
        let quota = match ask.operation {
            Operation::CountTokens => None, // free at Bedrock
            _ => shared.settings.quota_for(&key),
        };
        trace.describe(&key, ask.input, ask.output_limit, ask.method);
        let Some(quota) = quota else {
            return Plan::Unmetered;
        };
        let reserved_output = (ask.output_limit as f64 * quota.burndown).ceil() as u64;
        let tokens = ask.input.saturating_add(reserved_output);
        if send_deadline(request).is_some_and(|d| d.passed_at(Instant::now())) {
            return Plan::Refused(ThrottleError::SendDeadlinePassed {
                key,
                waited: Duration::ZERO,
            });
        }
        let record = shared.diagnosis.key(&key, quota.period);
        record.demand(tokens);
        trace.reserved(tokens);
        // A discovered quota's number is only a guess: a larger request waits for a full bucket.
        if !quota.discover && tokens > quota.tokens {
            return Plan::Refused(ThrottleError::NeverFits {
                key,
                tokens,
                quota_tokens: quota.tokens,
            });
        }
        let terms = Terms {
            burndown: quota.burndown,
            reserved_output,
            quota_tokens: quota.tokens,
            record,
            learn: ask.raw_input.map(|raw_input| Learn {
                shared: shared.clone(),
                model: key.clone(),
                raw_input,
            }),
            trace: ChargeTrace {
                span: trace.span.clone(),
                key: shared.telemetry.key(&key),
                input_estimate: Some(ask.input),
                period: quota.period,
            },
        };
        let tenants = &shared.settings.tenants;
        let (tenant, priority) = tenants.classify(request.extensions(), request.headers());
        let policy = tenants.policy(tenant.as_ref());
        trace.tenant(tenant.as_ref(), priority);
        let stage = KeyStage {
            ledger: shared.ledger.key(&key, quota),
            tokens,
            deadline: deadline(shared, request),
            waiter: Waiter {
                tenant,
                weight: policy.weight_value(),
                priority,
            },
            max_queued: tenants.max_queued,
        };
        // A capped tenant first waits for room under its cap, in its own FIFO order.
        let cap = (tenants.cap(stage.waiter.tenant.as_ref()))
            .map(|(owner, share)| shared.ledger.cap(&key, owner.as_ref(), quota, share));
        Plan::Reserve(Reserve { terms, cap, stage })
    }
}

/// A reservation to make: under the tenant's cap first when it has one, then at the key.
pub(super) struct Reserve {
    terms: Terms,
    cap: Option<Arc<KeyLedger>>,
    stage: KeyStage,
}

impl Reserve {
    /// Asks for room for the request, which `service` (made ready for it) sends once
    /// admitted; `place` is its place among the waiting requests under
    /// `Overload::Backpressure`.
    pub(super) fn enter<S, B>(
        self,
        service: S,
        request: Request<B>,
        place: Option<OwnedSemaphorePermit>,
    ) -> Entered<S, B>
    where
        S: Service<Request<B>>,
    {
        let Reserve { terms, cap, stage } = self;
        let Some(cap) = cap else {
            let parked = Parked::new(service, request, terms, None, place);
            return stage.enter(None, parked);
        };
        // Its own queue is bounded like the key's.
        match cap.admit_as(
            stage.tokens,
            stage.deadline,
            &Waiter::default(),
            stage.max_queued,
        ) {
            Admission::Admitted(r) => {
                let parked = Parked::new(service, request, terms, None, place);
                stage.enter(Some(r), parked)
            }
            Admission::Queued(acquire) => {
                tracing::debug!(quota_key = %stage.ledger.key(), tokens = stage.tokens, "no room under the tenant's cap: queued");
                let queued = terms.trace.key.queued();
                let mut parked = Parked::new(service, request, terms, Some(stage), place);
                parked.queued = Some(queued);
                Entered::Waiting(acquire, parked)
            }
            Admission::Shed {
                queued,
                retry_after,
            } => {
                terms.trace.key.shed();
                Entered::Failed(ThrottleError::Overloaded {
                    key: stage.ledger.key().clone(),
                    queued,
                    retry_after,
                })
            }
        }
    }
}

/// Where a request stands after asking for room.
// Built once per request and moved straight into the response future: boxing the large
// variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Entered<S: Service<Request<B>>, B> {
    /// Sent: the call, the charge its response settles (none when no quota applies), and
    /// how long it waited.
    Calling(S::Future, Option<Charge>, Duration),
    /// Waiting for room under its tenant's cap or at its key.
    Waiting(Acquire, Parked<S, B>),
    Failed(ThrottleError),
}

/// A request waiting for admission, with the ready service that will send it.
pub(super) struct Parked<S, B> {
    service: S,
    request: Request<B>,
    terms: Terms,
    /// While the request waits under its tenant's cap: the key's admission that follows.
    next: Option<KeyStage>,
    cap: CapHold,
    /// Its place among the waiting requests under `Overload::Backpressure`.
    place: Option<OwnedSemaphorePermit>,
    /// Counts the request in its key's queue depth while it waits, and times the wait.
    queued: Option<QueueGuard>,
}

impl<S, B> Unpin for Parked<S, B> {}

/// The request's [`SendDeadline`], if it carries one.
fn send_deadline<B>(request: &Request<B>) -> Option<SendDeadline> {
    request.extensions().get().copied()
}

/// The latest a request may be admitted: after `max_wait`, or at its send deadline.
fn deadline<B>(shared: &Shared, request: &Request<B>) -> Instant {
    let max_wait = Instant::now() + shared.settings.max_wait;
    send_deadline(request).map_or(max_wait, |d| d.0.min(max_wait))
}

impl<S, B> Parked<S, B> {
    fn new(
        service: S,
        request: Request<B>,
        terms: Terms,
        next: Option<KeyStage>,
        place: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            service,
            request,
            terms,
            next,
            cap: CapHold(None),
            place,
            queued: None,
        }
    }

    /// The error for a request that found no room by its deadline: a send deadline that
    /// passed is named as such (the request must be signed again), else `max_wait`.
    pub(super) fn timed_out(&self, error: ThrottleError) -> ThrottleError {
        match error {
            ThrottleError::MaxWaitExceeded { key, waited }
                if send_deadline(&self.request).is_some_and(|d| Instant::now() >= d.0) =>
            {
                ThrottleError::SendDeadlinePassed { key, waited }
            }
            other => other,
        }
    }

    /// Room was found where the request waited: from under its tenant's cap it goes on to
    /// its key; admitted by its key it is sent.
    pub(super) fn admitted(mut self, reservation: Reservation) -> Entered<S, B>
    where
        S: Service<Request<B>>,
    {
        match self.next.take() {
            Some(stage) => stage.enter(Some(reservation), self),
            None => self.send(reservation, None),
        }
    }

    /// Admitted by the key: sends the request with the charge to settle.
    fn send(mut self, reservation: Reservation, cap: Option<Reservation>) -> Entered<S, B>
    where
        S: Service<Request<B>>,
    {
        let cap = cap.or_else(|| self.cap.0.take());
        let wait = self.queued.take().map_or(Duration::ZERO, |q| q.waited());
        self.terms.trace.key.admitted(reservation.tokens(), wait);
        self.terms.trace.rates(reservation.ledger());
        let Parked {
            mut service,
            request,
            terms,
            ..
        } = self;
        let charge = Charge::new(reservation, cap, terms);
        Entered::Calling(service.call(request), Some(charge), wait)
    }
}

/// A tenant cap's reservation held while the request waits for its key: given back if the
/// request never gets there (it timed out, was shed or dropped).
struct CapHold(Option<Reservation>);

impl Drop for CapHold {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.settle(0);
        }
    }
}

/// The key's admission of a request, after its tenant's cap admitted it (or at once when
/// the tenant has none).
#[derive(Debug)]
struct KeyStage {
    ledger: Arc<KeyLedger>,
    tokens: u64,
    deadline: Instant,
    waiter: Waiter,
    max_queued: Option<usize>,
}

impl KeyStage {
    /// Asks the key for room: the parked request is sent at once, waits or is shed.
    fn enter<S, B>(self, cap: Option<Reservation>, mut parked: Parked<S, B>) -> Entered<S, B>
    where
        S: Service<Request<B>>,
    {
        match self
            .ledger
            .admit_as(self.tokens, self.deadline, &self.waiter, self.max_queued)
        {
            Admission::Admitted(reservation) => {
                parked.place = None;
                parked.send(reservation, cap)
            }
            Admission::Queued(acquire) => {
                parked.cap.0 = cap;
                if parked.queued.is_none() {
                    tracing::debug!(quota_key = %self.ledger.key(), tokens = self.tokens, "no room: queued");
                    parked.queued = Some(parked.terms.trace.key.queued());
                }
                Entered::Waiting(acquire, parked)
            }
            Admission::Shed {
                queued,
                retry_after,
            } => {
                parked.cap.0 = cap; // given back as `parked` goes
                parked.terms.trace.key.shed();
                Entered::Failed(ThrottleError::Overloaded {
                    key: self.ledger.key().clone(),
                    queued,
                    retry_after,
                })
            }
        }
    }
}
