//! Admission to a key: at once when it has room, else the one future that waits for it.
//!
//! [`Acquire`] is the only place that waits. Each round it looks at the key under its lock:
//! the head of the queue takes its tokens once both buckets have room, anyone else sleeps
//! until the deadline (the head's leaving wakes the next one), the head until its tokens
//! would fit. With a shared ledger the head, once the key's own buckets have room, takes one
//! more step before it is admitted: it asks the ledger and waits as long as that answers
//! (see [`RemoteStep`]).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::{
    key::{Entry, KeyLedger, Waiter},
    remote::{Answer, RemoteHold, RemoteStep},
    reservation::Reservation,
    spi::LedgerError,
};
use crate::{RefusedBy, ThrottleError};

/// The result of asking for room.
#[derive(Debug)]
pub(crate) enum Admission {
    Admitted(Reservation),
    Queued(Acquire),
    /// The queue is full; draining it takes about `retry_after`.
    Shed {
        queued: usize,
        retry_after: Duration,
    },
}

impl KeyLedger {
    /// Admits at once if nobody is queued and both limits have room; else queues a waiter
    /// that gives up at `deadline`.
    #[cfg(test)]
    pub(crate) fn admit(self: &Arc<Self>, tokens: u64, deadline: Instant) -> Admission {
        self.admit_as(tokens, deadline, &Waiter::default(), None)
    }

    /// As `admit`, for `waiter`'s tenant and priority; with `max_queued` waiters already
    /// queued the request is shed instead.
    pub(crate) fn admit_as(
        self: &Arc<Self>,
        tokens: u64,
        deadline: Instant,
        waiter: &Waiter,
        max_queued: Option<usize>,
    ) -> Admission {
        let now = Instant::now();
        match self.enter(tokens, waiter, max_queued, now) {
            Entry::Taken => Admission::Admitted(Reservation::new(self.clone(), tokens, now, None)),
            Entry::Shed {
                queued,
                retry_after,
            } => Admission::Shed {
                queued,
                retry_after,
            },
            Entry::Queued(id) => Admission::Queued(Acquire {
                ticket: Ticket {
                    ledger: self.clone(),
                    id,
                    tokens,
                    queued_at: now,
                    done: false,
                },
                sleep: tokio::time::sleep_until(deadline),
                deadline,
                remote: self.remote_step(),
            }),
        }
    }
}

/// A queue place; leaving it (admitted, timed out or dropped) lets the next waiter on.
#[derive(Debug)]
struct Ticket {
    ledger: Arc<KeyLedger>,
    id: u64,
    tokens: u64,
    queued_at: Instant,
    done: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.ledger.state().leave(self.id, false);
        }
    }
}

pin_project! {
    /// Waits in the key's queue until it is at the head and both limits have room (and,
    /// with a shared ledger, that ledger has reserved too).
    #[derive(Debug)]
    pub(crate) struct Acquire {
        ticket: Ticket,
        #[pin]
        sleep: Sleep,
        deadline: Instant,
        // With a shared ledger: the question in flight, and when to ask again.
        remote: Option<RemoteStep>,
    }
}

/// What a round decided, besides sleeping.
enum Next {
    /// Take the tokens: admitted (with the shared ledger's hold, if it has one).
    Admit(Option<RemoteHold>),
    /// The shared ledger is unreachable and the policy fails closed.
    Fail(LedgerError),
    /// Go round again at once.
    Again,
}

impl From<Answer> for Next {
    fn from(answer: Answer) -> Self {
        match answer {
            Answer::Reserved(hold) => Next::Admit(Some(hold)),
            Answer::Unavailable(error) => Next::Fail(error),
            Answer::Again => Next::Again,
        }
    }
}

impl Future for Acquire {
    type Output = Result<Reservation, ThrottleError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        assert!(!this.ticket.done, "Acquire polled after completion");
        let ledger = this.ticket.ledger.clone();
        let (id, tokens, key) = (this.ticket.id, this.ticket.tokens, ledger.key());
        // A timer that is already due is polled again at once; a few rounds always settle it.
        for _ in 0..8 {
            let now = Instant::now();
            let mut next = this
                .remote
                .as_mut()
                .and_then(|r| r.poll_answer(key, tokens, now, cx))
                .map(Next::from);
            let asking = this.remote.as_ref().is_some_and(RemoteStep::in_flight);
            let mut state = ledger.state();
            let mut wake_at = *this.deadline;
            if next.is_none() && !asking && state.is_head(id) {
                state.refill(now);
                if !state.fits(tokens) {
                    wake_at = wake_at.min(now + state.time_to_fit(tokens));
                } else if let Some(remote) = this.remote.as_mut() {
                    // The key's own buckets have room: the shared ledger's turn.
                    if let Some(t) = remote.retry_at(now) {
                        wake_at = wake_at.min(t);
                    } else {
                        // The ledger is not asked under the key's lock.
                        drop(state);
                        next = Some(remote.ask(key, tokens, now).into());
                        state = ledger.state();
                    }
                } else {
                    next = Some(Next::Admit(None));
                }
            }
            match next {
                Some(Next::Admit(remote)) => {
                    state.take(tokens);
                    state.leave(id, true);
                    this.ticket.done = true;
                    drop(state);
                    let waited = now.saturating_duration_since(this.ticket.queued_at);
                    match &remote {
                        None => {
                            tracing::trace!(quota_key = %key, ?waited, "admitted after waiting")
                        }
                        Some(hold) => tracing::trace!(
                            quota_key = %key,
                            fallback = hold.is_fallback(),
                            ?waited,
                            "admitted by the shared ledger"
                        ),
                    }
                    return Poll::Ready(Ok(Reservation::new(ledger, tokens, now, remote)));
                }
                Some(Next::Fail(source)) => {
                    state.leave(id, false);
                    this.ticket.done = true;
                    return Poll::Ready(Err(ThrottleError::LedgerUnavailable {
                        key: key.clone(),
                        source: Box::new(source),
                    }));
                }
                Some(Next::Again) => continue,
                None => {}
            }
            if now >= *this.deadline {
                if let Some(remote) = this.remote.as_mut() {
                    remote.abandon();
                }
                // Measured while it still counts in the queue: a retry joins its back.
                let retry_after = state.drain_time().max(state.time_to_fit(tokens));
                state.leave(id, false);
                this.ticket.done = true;
                // The gate names the tenant and the limit (`Parked::timed_out`).
                return Poll::Ready(Err(ThrottleError::MaxWaitExceeded {
                    key: key.clone(),
                    tenant: None,
                    refused_by: RefusedBy::ModelQuota,
                    waited: now.saturating_duration_since(this.ticket.queued_at),
                    retry_after,
                }));
            }
            state.register(id, cx.waker());
            drop(state);
            if this.sleep.deadline() != wake_at {
                this.sleep.as_mut().reset(wake_at);
            }
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
