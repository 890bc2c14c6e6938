//! One key's state: its meter, its queue of waiters and their wakers, behind one lock.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    task::Waker,
    time::Duration,
};

use tokio::time::Instant;

use super::{
    lock::lock,
    meter::Meter,
    queue::WaitQueue,
    remote::{RemoteKey, RemoteStep},
};
use crate::{
    quota::ResolvedQuota,
    tenant::{Priority, Tenant},
    QuotaKey, ThrottleKind,
};

/// One key's buckets and queue.
#[derive(Debug)]
pub(crate) struct KeyLedger {
    key: QuotaKey,
    state: Mutex<KeyState>,
    /// The shared ledger and this key's limits in it.
    remote: Option<RemoteKey>,
}

/// Who asks for room: the tenant, its weight and the request's priority.
#[derive(Clone, Debug)]
pub(crate) struct Waiter {
    pub(crate) tenant: Option<Tenant>,
    pub(crate) weight: f64,
    pub(crate) priority: Priority,
}

impl Default for Waiter {
    fn default() -> Self {
        Self {
            tenant: None,
            weight: 1.0,
            priority: Priority::Interactive,
        }
    }
}

/// Where a request stands after [`KeyLedger::enter`].
#[derive(Debug)]
pub(super) enum Entry {
    /// Taken from the buckets at once.
    Taken,
    /// Queued as waiter `id`.
    Queued(u64),
    /// The queue is full; draining it takes about `retry_after`.
    Shed {
        queued: usize,
        retry_after: Duration,
    },
}

impl KeyLedger {
    pub(super) fn new(
        key: QuotaKey,
        quota: ResolvedQuota,
        recovery: Duration,
        headroom: Duration,
    ) -> Self {
        Self {
            key,
            state: Mutex::new(KeyState {
                meter: Meter::new(quota, recovery, headroom),
                queue: WaitQueue::default(),
                wakers: HashMap::new(),
                next_id: 0,
            }),
            remote: None,
        }
    }

    /// Asks `link` as well, with `limits`, after the key's own buckets.
    pub(super) fn with_remote(mut self, remote: Option<RemoteKey>) -> Self {
        self.remote = remote;
        self
    }

    pub(crate) fn key(&self) -> &QuotaKey {
        &self.key
    }

    pub(super) fn state(&self) -> MutexGuard<'_, KeyState> {
        lock(&self.state)
    }

    /// A waiter's step of asking the shared ledger, when the key has one.
    pub(super) fn remote_step(&self) -> Option<RemoteStep> {
        self.remote.as_ref().map(RemoteKey::step)
    }

    /// Takes `tokens` at once if nobody is queued, both limits have room and no shared
    /// ledger must be asked; else queues `waiter`, unless `max_queued` waiters already are.
    pub(super) fn enter(
        &self,
        tokens: u64,
        waiter: &Waiter,
        max_queued: Option<usize>,
        now: Instant,
    ) -> Entry {
        let mut state = self.state();
        // With a shared ledger every admission asks it, from the queue.
        if state.queue.is_empty() && self.remote.is_none() {
            state.refill(now);
            if state.fits(tokens) {
                state.take(tokens);
                return Entry::Taken;
            }
        }
        if max_queued.is_some_and(|max| state.queue.sheds(&waiter.tenant, waiter.weight, max)) {
            state.refill(now);
            return Entry::Shed {
                queued: state.queue.len(),
                // At least until this request would fit: with few (or no) places the
                // queue ahead may be empty while the buckets are not.
                retry_after: state.drain_time().max(state.time_to_fit(tokens)),
            };
        }
        let id = state.next_id;
        state.next_id += 1;
        let cost = state.meter.cost(tokens);
        let weight = waiter.weight;
        state
            .queue
            .push(id, waiter.tenant.clone(), weight, waiter.priority, cost);
        Entry::Queued(id)
    }

    /// Upstream throttled a request admitted at `admitted_at` after it had started (inside
    /// an event stream), naming the limit it hit (`kind`). Whatever room this ledger
    /// thought it had in that limit is gone, and its rate is cut unless the request was
    /// admitted before that rate's last cut (its refusal is news of the rate already
    /// corrected):
    ///
    /// - [`ThrottleKind::Tokens`]: the token bucket;
    /// - [`ThrottleKind::Requests`]: the request bucket. A key without one (a quota with no
    ///   RPM, or [`Quota::discover`](crate::Quota::discover)) gets one now, starting at the
    ///   request rate that was throttled and discovered from there on, as a discovered
    ///   token rate is;
    /// - [`ThrottleKind::Unknown`]: both buckets, as before the classes were told apart;
    /// - [`ThrottleKind::DailyTokens`]: nothing; a per-minute rate cannot fix a daily
    ///   quota, and cutting it would only slow the key down after the day turns.
    pub(crate) fn throttled(&self, admitted_at: Instant, kind: ThrottleKind) {
        self.slow_down(admitted_at, kind, None);
    }

    /// Upstream refused a request admitted at `admitted_at` before running it (a 429, or a
    /// throttle as an event stream's first frame). The buckets `kind` names are emptied as
    /// for [`throttled`](Self::throttled), which brings the gate's account in line with
    /// upstream's; a configured rate is cut only when the refusals recur (see the `rate`
    /// module's `Controller::refused`): one stray refusal costs the refused request's retry,
    /// not a quota period of slower admissions. `tokens`: the refused request's reservation,
    /// which measures by how much a recurring refusal shows the rate to be too high.
    pub(crate) fn refused(&self, admitted_at: Instant, kind: ThrottleKind, tokens: u64) {
        self.slow_down(admitted_at, kind, Some(tokens));
    }

    /// `refused`: the refused request's tokens, when upstream refused before running it.
    fn slow_down(&self, admitted_at: Instant, kind: ThrottleKind, refused: Option<u64>) {
        let now = Instant::now();
        let mut state = self.state();
        state.refill(now);
        // Only while requests queue is the rate drawn the rate the gate allowed.
        let queued = !state.queue.is_empty();
        let cut = state
            .meter
            .throttle(now, admitted_at, kind, queued, refused);
        let (token_rate_scale, request_rate_scale) = state.meter.scales();
        if cut {
            tracing::debug!(
                quota_key = %self.key,
                ?kind,
                token_rate_scale,
                request_rate_scale,
                "upstream throttled: slowing down"
            );
        } else if refused.is_some() {
            tracing::debug!(
                quota_key = %self.key,
                ?kind,
                token_rate_scale,
                request_rate_scale,
                "upstream refused: emptied the bucket, kept the rate"
            );
        }
    }

    /// The current rates per period: tokens, and requests when limited.
    pub(crate) fn rates(&self) -> (f64, Option<f64>) {
        let mut state = self.state();
        state.refill(Instant::now());
        state.meter.rates()
    }

    /// What the buckets hold now: tokens, and requests when limited.
    pub(crate) fn available(&self) -> (f64, Option<f64>) {
        let mut state = self.state();
        state.refill(Instant::now());
        state.meter.levels()
    }

    /// Whether the key is in the state a new one starts in: nobody waits, its buckets are
    /// full and its rates are the quota's. (Holders of reservations are the caller's to
    /// rule out.)
    pub(crate) fn at_rest(&self) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        state.refill(now);
        state.queue.is_empty() && state.wakers.is_empty() && state.meter.at_rest(now)
    }

    /// The current token level and rate multiplier, and the queue's length (for tests).
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> (f64, f64, usize) {
        let now = Instant::now();
        let mut state = self.state();
        state.refill(now);
        (
            state.meter.token_level(),
            state.meter.scales().0,
            state.queue.len(),
        )
    }
}

/// What the key's lock guards.
#[derive(Debug)]
pub(super) struct KeyState {
    meter: Meter,
    /// Waiter ids in service order (see the `queue` module); the first is the only one that
    /// may be admitted, and a waiter that leaves from the middle is removed in O(log n).
    queue: WaitQueue,
    wakers: HashMap<u64, Waker>,
    next_id: u64,
}

impl KeyState {
    pub(super) fn refill(&mut self, now: Instant) {
        let queued = !self.queue.is_empty();
        self.meter.advance(now, queued);
    }

    pub(super) fn fits(&self, tokens: u64) -> bool {
        self.meter.fits(tokens)
    }

    pub(super) fn take(&mut self, tokens: u64) {
        self.meter.take(tokens);
    }

    pub(super) fn time_to_fit(&self, tokens: u64) -> Duration {
        self.meter.time_to_fit(tokens)
    }

    /// How long the queued requests take to be admitted at the current rate.
    pub(super) fn drain_time(&self) -> Duration {
        self.meter.drain_time(self.queue.queued_periods())
    }

    /// Whether waiter `id` is the one the queue serves next.
    pub(super) fn is_head(&self, id: u64) -> bool {
        self.queue.first() == Some(id)
    }

    /// Wakes waiter `id` through `waker` when its turn may have come.
    pub(super) fn register(&mut self, id: u64, waker: &Waker) {
        match self.wakers.get_mut(&id) {
            Some(w) if w.will_wake(waker) => {}
            Some(w) => w.clone_from(waker),
            None => {
                self.wakers.insert(id, waker.clone());
            }
        }
    }

    /// Gives `diff` tokens back (takes them as debt when negative) and, when that made
    /// room, wakes the head.
    pub(super) fn give_back(&mut self, diff: f64) {
        self.refill(Instant::now());
        self.meter.give_back(diff);
        if diff > 0.0 {
            self.wake_head();
        }
    }

    fn wake_head(&mut self) {
        if let Some(head) = self.queue.first() {
            if let Some(w) = self.wakers.get(&head) {
                w.wake_by_ref();
            }
        }
    }

    /// Removes waiter `id`, which was `admitted` (then it was the head) or gave up; wakes
    /// the next head if `id` was the head. Only an admission counts as service in the fair
    /// order: a tenant whose requests time out is not charged for them.
    pub(super) fn leave(&mut self, id: u64, admitted: bool) {
        self.refill(Instant::now());
        self.wakers.remove(&id);
        let head = self.queue.first();
        if admitted && head == Some(id) {
            self.queue.pop_first();
        } else {
            // Given up; or admitted by a shared ledger that answered after a newly arrived
            // request took the head, which is then not booked to the tenant's share.
            self.queue.remove(id);
        }
        // Leaving from the middle can change the head too: a tenant then puts another
        // request forward at the same tag.
        if self.queue.first() != head {
            self.wake_head();
        }
    }
}
