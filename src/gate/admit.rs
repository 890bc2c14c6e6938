//! Admission: how a request gets from its head to a reservation of its key's budgets.
//!
//! [`Plan::new`] decides what a request asks for, under which terms and through which
//! stages; [`Reserve::enter`] asks each stage for room in turn: the tenant's cap (if any),
//! the Region's stage of unproven models (while the model is one, see [`crate::keys`]),
//! then the key. A request that has to wait is [`Parked`] with the ready service that will
//! send it; the response future polls its place in the queue and hands the reservation
//! back to [`Parked::admitted`].

use std::{sync::Arc, time::Duration};

use http::{header::CONTENT_LENGTH, Request};
use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use tower_service::Service;

use super::settle::{Charge, Holds, Learn, Terms};
use crate::{
    config::{fallback_output_limit, Shared},
    estimate::{EstimateMethod, Operation, TokenEstimate},
    keys::{self, Proof},
    ledger::{Acquire, Admission, DailyHolds, KeyLedger, Reservation, Waiter},
    telemetry::{ChargeTrace, QueueGuard, Trace},
    QuotaKey, RefusedBy, SendDeadline, Tenant, ThrottleError,
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

/// The key and operation of a request by its head alone (see
/// [`key_of_head`](crate::bedrock::service_tier::key_of_head)).
fn head_key<B>(request: &Request<B>) -> (QuotaKey, Operation) {
    crate::bedrock::service_tier::key_of_head(
        request.uri(),
        request.headers(),
        request.extensions(),
    )
}

impl Ask {
    fn of<B>(request: &Request<B>) -> Self {
        let Some(e) = request.extensions().get::<TokenEstimate>() else {
            // Used without the estimate layer: a quarter token per declared body byte.
            let (key, operation) = head_key(request);
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
            None => head_key(request),
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
// Made once per request and taken apart at once: boxing the large variant would only add
// an allocation.
#[allow(clippy::large_enum_variant)]
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
        // One spelling per quota: an ARN of a foundation model or profile is its id.
        let key = keys::canonical(&ask.key).into_owned();
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
        // The key whose state this request uses: its own, or its Region's overflow.
        let filed = keys::file(shared, &key);
        let tenants = &shared.settings.tenants;
        let (tenant, priority) = tenants.classify(request.extensions(), request.headers());
        trace.tenant(tenant.as_ref(), priority);
        // Counted by name only with a policy of its own: the rest share one entry.
        let counted = tenant.clone().filter(|t| tenants.policies.contains_key(t));
        if send_deadline(request).is_some_and(|d| d.passed_at(Instant::now())) {
            // It ran out of time before it could queue (in an earlier attempt's backoff):
            // a timeout of its tenant all the same.
            let key_telemetry = shared.telemetry.key(&filed.key);
            key_telemetry.timed_out(&key_telemetry.tenant(counted));
            return Plan::Refused(ThrottleError::SendDeadlinePassed {
                key,
                tenant,
                waited: Duration::ZERO,
                retry_after: Duration::ZERO,
            });
        }
        let record = shared.diagnosis.key(&filed.key, quota.period);
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
        // The day's quotas are booked now, so that a request that would pass one is told at
        // once rather than after it waited for the minute's.
        let daily = match shared.ledger.reserve_daily(&key, quota.daily, tokens) {
            Ok(daily) => daily,
            Err(refused) => {
                tracing::debug!(quota_key = %key, tokens, "no room in a daily quota: refused");
                return Plan::Refused(refused);
            }
        };
        let policy = tenants.policy(tenant.as_ref());
        let key_telemetry = shared.telemetry.key(&filed.key);
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
            proof: filed.unproven.is_some().then(|| Proof {
                shared: shared.clone(),
                key: key.clone(),
            }),
            trace: ChargeTrace {
                span: trace.span.clone(),
                tenant: key_telemetry.tenant(counted),
                key: key_telemetry,
                input_estimate: Some(ask.input),
                period: quota.period,
            },
        };
        let stage = KeyStage {
            ledger: shared.ledger.key(&filed.key, quota),
            tokens,
            deadline: deadline(shared, request),
            waiter: Waiter {
                tenant,
                weight: policy.weight_value(),
                priority,
            },
            max_queued: tenants.max_queued,
        };
        // Asked last to first. A capped tenant first waits for room under its cap, in its
        // own FIFO order; an unproven model then in its Region's shared stage, in fair order
        // across tenants.
        let mut before = Vec::new();
        if let Some(stage) = filed.unproven {
            before.push(Before {
                ledger: shared.ledger.cap(&stage, None, quota, 1.0),
                fair: true,
                max_queued: tenants.max_queued,
            });
        }
        if let Some((owner, share)) = tenants.cap(stage.waiter.tenant.as_ref()) {
            before.push(Before {
                ledger: shared.ledger.cap(&filed.key, owner.as_ref(), quota, share),
                fair: false,
                // As many as the cap admits while the key's full queue drains.
                max_queued: (tenants.max_queued).map(|max| (max as f64 * share).ceil() as usize),
            });
        }
        Plan::Reserve(Reserve {
            terms,
            before,
            stage,
            daily,
        })
    }
}

/// A stage a request passes before its key: its tenant's cap, or the stage of unproven
/// models.
struct Before {
    ledger: Arc<KeyLedger>,
    /// Queues in the request's fair order across tenants (a tenant's own cap: in FIFO).
    fair: bool,
    /// How many may wait here.
    max_queued: Option<usize>,
}

/// A reservation to make: under each stage before the key, then at the key.
pub(super) struct Reserve {
    terms: Terms,
    /// The stages before the key, the next one last.
    before: Vec<Before>,
    stage: KeyStage,
    /// What the daily quotas booked.
    daily: DailyHolds,
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
        let Reserve {
            terms,
            before,
            stage,
            daily,
        } = self;
        let parked = Parked {
            service,
            request,
            terms,
            tenant: stage.waiter.tenant.clone(),
            waiting_at: RefusedBy::ModelQuota,
            before,
            next: Some(stage),
            held: StageHolds {
                stages: Vec::new(),
                daily: Some(daily),
            },
            place,
            queued: None,
        };
        parked.advance(None)
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
    /// The request's tenant, for its errors.
    tenant: Option<Tenant>,
    /// The limit it waits for: its tenant's cap, or the key's quota.
    waiting_at: RefusedBy,
    /// The stages still to pass before the key, the next one last.
    before: Vec<Before>,
    /// Until the request waits at its key: the key's admission.
    next: Option<KeyStage>,
    /// What the stages passed have reserved.
    held: StageHolds,
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
    /// The error for a request that found no room by its deadline, counted as its
    /// tenant's timeout: a send deadline that passed is named as such (the request must be
    /// signed again), else `max_wait`, with the tenant and the limit it waited for.
    pub(super) fn timed_out(&self, error: ThrottleError) -> ThrottleError {
        let ThrottleError::MaxWaitExceeded {
            key,
            waited,
            retry_after,
            ..
        } = error
        else {
            return error;
        };
        self.terms.trace.timed_out();
        if send_deadline(&self.request).is_some_and(|d| Instant::now() >= d.0) {
            return ThrottleError::SendDeadlinePassed {
                key,
                tenant: self.tenant.clone(),
                waited,
                retry_after,
            };
        }
        ThrottleError::MaxWaitExceeded {
            key,
            tenant: self.tenant.clone(),
            refused_by: self.waiting_at,
            waited,
            retry_after,
        }
    }

    /// Room was found where the request waited: from a stage before its key it goes on;
    /// admitted by its key it is sent.
    pub(super) fn admitted(self, reservation: Reservation) -> Entered<S, B>
    where
        S: Service<Request<B>>,
    {
        self.advance(Some(reservation))
    }

    /// Asks the stages left for room, `got` the reservation of the one just passed: the
    /// request is sent at once, waits or is shed.
    fn advance(mut self, got: Option<Reservation>) -> Entered<S, B>
    where
        S: Service<Request<B>>,
    {
        let Some(stage) = self.next.take() else {
            return match got {
                Some(r) => self.send(r),
                None => unreachable!("a request waits at its key only once"),
            };
        };
        self.held.stages.extend(got);
        while let Some(before) = self.before.pop() {
            let default = Waiter::default();
            let waiter = if before.fair { &stage.waiter } else { &default };
            // Its own queue is bounded like the key's.
            match (before.ledger).admit_as(stage.tokens, stage.deadline, waiter, before.max_queued)
            {
                Admission::Admitted(r) => self.held.stages.push(r),
                Admission::Queued(acquire) => {
                    self.waiting_at = if before.fair {
                        RefusedBy::ModelQuota
                    } else {
                        RefusedBy::TenantCap
                    };
                    if self.queued.is_none() {
                        if before.fair {
                            tracing::debug!(quota_key = %stage.ledger.key(), tokens = stage.tokens, "no room among unproven models: queued");
                        } else {
                            tracing::debug!(quota_key = %stage.ledger.key(), tokens = stage.tokens, "no room under the tenant's cap: queued");
                        }
                        self.queued = Some(self.terms.trace.queued());
                    }
                    self.next = Some(stage);
                    return Entered::Waiting(acquire, self);
                }
                Admission::Shed {
                    queued,
                    retry_after,
                } => {
                    let full = if before.fair {
                        RefusedBy::ModelQueue
                    } else {
                        RefusedBy::TenantQueue
                    };
                    return self.shed(&stage, full, queued, retry_after);
                }
            }
        }
        match (stage.ledger).admit_as(
            stage.tokens,
            stage.deadline,
            &stage.waiter,
            stage.max_queued,
        ) {
            Admission::Admitted(reservation) => {
                self.place = None;
                self.send(reservation)
            }
            Admission::Queued(acquire) => {
                self.waiting_at = RefusedBy::ModelQuota;
                if self.queued.is_none() {
                    tracing::debug!(quota_key = %stage.ledger.key(), tokens = stage.tokens, "no room: queued");
                    self.queued = Some(self.terms.trace.queued());
                }
                Entered::Waiting(acquire, self)
            }
            Admission::Shed {
                queued,
                retry_after,
            } => self.shed(&stage, RefusedBy::ModelQueue, queued, retry_after),
        }
    }

    /// A queue was full: the request fails, and what its stages reserved goes back as it
    /// goes.
    fn shed(
        self,
        stage: &KeyStage,
        full: RefusedBy,
        queued: usize,
        retry_after: Duration,
    ) -> Entered<S, B>
    where
        S: Service<Request<B>>,
    {
        self.terms.trace.shed();
        Entered::Failed(ThrottleError::Overloaded {
            key: stage.ledger.key().clone(),
            tenant: self.tenant.clone(),
            refused_by: full,
            queued,
            retry_after,
        })
    }

    /// Admitted by the key: sends the request with the charge to settle.
    fn send(mut self, reservation: Reservation) -> Entered<S, B>
    where
        S: Service<Request<B>>,
    {
        let holds = std::mem::take(&mut self.held.stages);
        let daily = self.held.daily.take();
        let wait = self.queued.take().map_or(Duration::ZERO, |q| q.waited());
        self.terms.trace.admitted(reservation.tokens(), wait);
        self.terms.trace.rates(reservation.ledger());
        let Parked {
            mut service,
            request,
            terms,
            ..
        } = self;
        let stages = (!holds.is_empty()).then_some(Holds::new(holds));
        let charge = Charge::new(reservation, stages, daily, terms);
        Entered::Calling(service.call(request), Some(charge), wait)
    }
}

/// The reservations of the stages before the key and the daily quotas' bookings, held
/// while the request waits for its key: given back if the request never gets there (it
/// timed out, was shed or dropped).
struct StageHolds {
    stages: Vec<Reservation>,
    daily: Option<DailyHolds>,
}

impl Drop for StageHolds {
    fn drop(&mut self) {
        for r in self.stages.drain(..) {
            r.settle(0);
        }
        if let Some(daily) = self.daily.take() {
            daily.settle(0);
        }
    }
}

/// The key's admission of a request, after the stages before it admitted it.
#[derive(Debug)]
struct KeyStage {
    ledger: Arc<KeyLedger>,
    tokens: u64,
    deadline: Instant,
    waiter: Waiter,
    max_queued: Option<usize>,
}
