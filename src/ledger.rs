//! The in-process quota ledger: per quota key, a request bucket and a token bucket that
//! admit in FIFO order, take reservations and give back what was not used.
//!
//! governor's GCRA cannot refund tokens, and a dual limit must check both buckets before it
//! takes from either, so both buckets are kept here, side by side, under one lock per key.
//! Each bucket holds one period's quota when full and refills continuously at quota/period
//! (scaled down for a while after an upstream throttle). A token bucket may go below zero
//! when a settled charge exceeds its reservation; admissions then wait for the debt to
//! refill.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::{config::ResolvedQuota, QuotaKey, ThrottleError};

/// Rate multiplier right after an upstream throttle, and its floor after repeated ones.
const THROTTLE_CUT: f64 = 0.7;
const THROTTLE_FLOOR: f64 = 0.1;
/// Throttles closer together than this count as one (a burst of in-flight refusals).
const THROTTLE_DEBOUNCE: Duration = Duration::from_secs(1);

/// Quota state of every key.
#[derive(Debug)]
pub(crate) struct Ledger {
    keys: Mutex<HashMap<QuotaKey, Arc<KeyLedger>>>,
    recovery: Option<Duration>,
    headroom: Duration,
}

impl Ledger {
    pub(crate) fn new(recovery: Option<Duration>, headroom: Duration) -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
            recovery,
            headroom,
        }
    }

    /// The ledger of `key`, created with `quota` on first use.
    pub(crate) fn key(&self, key: &QuotaKey, quota: ResolvedQuota) -> Arc<KeyLedger> {
        let mut keys = lock(&self.keys);
        if let Some(k) = keys.get(key) {
            return k.clone();
        }
        let recovery = self.recovery.unwrap_or(quota.period);
        let ledger = Arc::new(KeyLedger::new(key.clone(), quota, recovery, self.headroom));
        keys.insert(key.clone(), ledger.clone());
        ledger
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain numbers; the
/// numbers are still usable, so carry on rather than spread the panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One key's buckets and queue.
#[derive(Debug)]
pub(crate) struct KeyLedger {
    key: QuotaKey,
    state: Mutex<KeyState>,
}

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    per_sec: f64,
    level: f64,
    /// Refill kept unused on top of each cost (see `ThrottleConfigBuilder::headroom`).
    headroom: f64,
}

impl Bucket {
    fn full(per_period: f64, period: Duration, headroom: Duration) -> Self {
        let per_sec = per_period / period.as_secs_f64();
        Self {
            capacity: per_period,
            per_sec,
            level: per_period,
            headroom: per_sec * headroom.as_secs_f64(),
        }
    }

    /// The level at which `cost` may be taken: cost plus headroom, never above capacity.
    fn need(&self, cost: f64) -> f64 {
        (cost + self.headroom).min(self.capacity)
    }

    /// Time for the level to reach `need` at `per_sec × scale`.
    fn time_to(&self, need: f64, scale: f64) -> Duration {
        let deficit = need - self.level;
        if deficit <= 0.0 {
            return Duration::ZERO;
        }
        // Round up to the next microsecond so a wake-up at that instant finds the room.
        let secs = deficit / (self.per_sec * scale);
        Duration::from_secs_f64((secs * 1e6).ceil() / 1e6 + 1e-6)
    }
}

/// The rate multiplier after upstream throttles: cut to 70 % (of the current multiplier,
/// floor 10 %), then back to 100 % linearly over `recovery`.
#[derive(Debug)]
struct RateScale {
    recovery: Duration,
    cut: Option<(Instant, f64)>,
}

impl RateScale {
    fn at(&self, t: Instant) -> f64 {
        match self.cut {
            None => 1.0,
            Some((at, s0)) => {
                let f = t.saturating_duration_since(at).as_secs_f64() / self.recovery.as_secs_f64();
                (s0 + (1.0 - s0) * f).min(1.0)
            }
        }
    }

    /// Seconds of full-rate refill between `a` and `b` (∫ scale dt).
    fn integral(&self, a: Instant, b: Instant) -> f64 {
        let Some((at, _)) = self.cut else {
            return b.saturating_duration_since(a).as_secs_f64();
        };
        let full = at + self.recovery;
        let mut total = 0.0;
        if a < full {
            let end = b.min(full);
            total +=
                (self.at(a) + self.at(end)) / 2.0 * end.saturating_duration_since(a).as_secs_f64();
        }
        if b > full {
            total += b.saturating_duration_since(a.max(full)).as_secs_f64();
        }
        total
    }
}

#[derive(Debug)]
struct KeyState {
    tokens: Bucket,
    requests: Option<Bucket>,
    scale: RateScale,
    updated: Instant,
    /// Waiter ids in arrival order; the head is the only one that may be admitted.
    queue: VecDeque<u64>,
    wakers: HashMap<u64, Waker>,
    next_id: u64,
}

impl KeyState {
    fn refill(&mut self, now: Instant) {
        let secs = self.scale.integral(self.updated, now);
        self.updated = self.updated.max(now);
        for b in std::iter::once(&mut self.tokens).chain(self.requests.as_mut()) {
            b.level = (b.level + b.per_sec * secs).min(b.capacity);
        }
    }

    fn fits(&self, tokens: u64) -> bool {
        self.tokens.level >= self.tokens.need(tokens as f64)
            && self
                .requests
                .as_ref()
                .is_none_or(|r| r.level >= r.need(1.0))
    }

    fn take(&mut self, tokens: u64) {
        self.tokens.level -= tokens as f64;
        if let Some(r) = &mut self.requests {
            r.level -= 1.0;
        }
    }

    fn time_to_fit(&self, tokens: u64, now: Instant) -> Duration {
        let scale = self.scale.at(now);
        let t = self.tokens.time_to(self.tokens.need(tokens as f64), scale);
        let r = self
            .requests
            .as_ref()
            .map_or(Duration::ZERO, |r| r.time_to(r.need(1.0), scale));
        t.max(r)
    }

    fn wake_head(&mut self) {
        if let Some(head) = self.queue.front() {
            if let Some(w) = self.wakers.get(head) {
                w.wake_by_ref();
            }
        }
    }

    /// Removes waiter `id`; wakes the next head if `id` was the head.
    fn leave(&mut self, id: u64) {
        self.wakers.remove(&id);
        if self.queue.front() == Some(&id) {
            self.queue.pop_front();
            self.wake_head();
        } else if let Some(pos) = self.queue.iter().position(|&w| w == id) {
            self.queue.remove(pos);
        }
    }
}

impl KeyLedger {
    fn new(key: QuotaKey, quota: ResolvedQuota, recovery: Duration, headroom: Duration) -> Self {
        Self {
            key,
            state: Mutex::new(KeyState {
                tokens: Bucket::full(quota.tokens as f64, quota.period, headroom),
                requests: quota
                    .requests
                    .map(|r| Bucket::full(f64::from(r), quota.period, headroom)),
                scale: RateScale {
                    recovery,
                    cut: None,
                },
                updated: Instant::now(),
                queue: VecDeque::new(),
                wakers: HashMap::new(),
                next_id: 0,
            }),
        }
    }

    pub(crate) fn key(&self) -> &QuotaKey {
        &self.key
    }

    /// Admits at once if nobody is queued and both limits have room; else queues a waiter
    /// that gives up at `deadline`.
    pub(crate) fn admit(self: &Arc<Self>, tokens: u64, deadline: Instant) -> Admission {
        let now = Instant::now();
        let mut state = lock(&self.state);
        if state.queue.is_empty() {
            state.refill(now);
            if state.fits(tokens) {
                state.take(tokens);
                return Admission::Admitted(Reservation::new(self.clone(), tokens));
            }
        }
        let id = state.next_id;
        state.next_id += 1;
        state.queue.push_back(id);
        drop(state);
        Admission::Queued(Acquire {
            ticket: Ticket {
                ledger: self.clone(),
                id,
                tokens,
                queued_at: now,
                done: false,
            },
            sleep: tokio::time::sleep_until(deadline),
            deadline,
        })
    }

    /// Upstream refused a request for lack of quota: whatever room this ledger thought it
    /// had is gone, and the rates are cut (at most once per second).
    pub(crate) fn throttled(&self) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.refill(now);
        let state = &mut *state;
        for b in std::iter::once(&mut state.tokens).chain(state.requests.as_mut()) {
            b.level = b.level.min(0.0);
        }
        if state.scale.recovery.is_zero() {
            return;
        }
        let recent = state
            .scale
            .cut
            .is_some_and(|(at, _)| now.saturating_duration_since(at) < THROTTLE_DEBOUNCE);
        if !recent {
            let s = (state.scale.at(now) * THROTTLE_CUT).max(THROTTLE_FLOOR);
            state.scale.cut = Some((now, s));
            tracing::debug!(quota_key = %self.key, rate_scale = s, "upstream throttled: slowing down");
        }
    }

    /// The current token level and rate multiplier (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> (f64, f64, usize) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.refill(now);
        (state.tokens.level, state.scale.at(now), state.queue.len())
    }
}

/// The result of asking for room.
#[derive(Debug)]
pub(crate) enum Admission {
    Admitted(Reservation),
    Queued(Acquire),
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
            lock(&self.ledger.state).leave(self.id);
        }
    }
}

pin_project! {
    /// Waits in the key's queue until it is at the head and both limits have room.
    #[derive(Debug)]
    pub(crate) struct Acquire {
        ticket: Ticket,
        #[pin]
        sleep: Sleep,
        deadline: Instant,
    }
}

impl Future for Acquire {
    type Output = Result<Reservation, ThrottleError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        assert!(!this.ticket.done, "Acquire polled after completion");
        let ledger = this.ticket.ledger.clone();
        // A timer that is already due is polled again at once; a few rounds always settle it.
        for _ in 0..8 {
            let now = Instant::now();
            let mut state = lock(&ledger.state);
            let id = this.ticket.id;
            let mut wake_at = *this.deadline;
            if state.queue.front() == Some(&id) {
                state.refill(now);
                if state.fits(this.ticket.tokens) {
                    state.take(this.ticket.tokens);
                    state.leave(id);
                    this.ticket.done = true;
                    drop(state);
                    tracing::trace!(
                        quota_key = %ledger.key,
                        waited = ?now.saturating_duration_since(this.ticket.queued_at),
                        "admitted after waiting"
                    );
                    return Poll::Ready(Ok(Reservation::new(ledger, this.ticket.tokens)));
                }
                wake_at = wake_at.min(now + state.time_to_fit(this.ticket.tokens, now));
            }
            if now >= *this.deadline {
                state.leave(id);
                this.ticket.done = true;
                return Poll::Ready(Err(ThrottleError::MaxWaitExceeded {
                    key: ledger.key.clone(),
                    waited: now.saturating_duration_since(this.ticket.queued_at),
                }));
            }
            match state.wakers.get_mut(&id) {
                Some(w) if w.will_wake(cx.waker()) => {}
                Some(w) => w.clone_from(cx.waker()),
                None => {
                    state.wakers.insert(id, cx.waker().clone());
                }
            }
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

/// Tokens taken from a key's bucket for one request. Settle it with the actual charge;
/// dropped unsettled, the whole reservation stays charged (the safe side when the outcome
/// is unknown).
#[derive(Debug)]
pub(crate) struct Reservation {
    ledger: Arc<KeyLedger>,
    tokens: u64,
}

impl Reservation {
    fn new(ledger: Arc<KeyLedger>, tokens: u64) -> Self {
        Self { ledger, tokens }
    }

    pub(crate) fn ledger(&self) -> &Arc<KeyLedger> {
        &self.ledger
    }

    pub(crate) fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Charges `actual` tokens instead of the reservation: the difference goes back (or,
    /// when `actual` is larger, is taken as debt).
    pub(crate) fn settle(self, actual: u64) {
        let diff = self.tokens as f64 - actual as f64;
        if diff == 0.0 {
            return;
        }
        let mut state = lock(&self.ledger.state);
        state.refill(Instant::now());
        state.tokens.level = (state.tokens.level + diff).min(state.tokens.capacity);
        if diff > 0.0 {
            state.wake_head();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;
    use tokio_test::{assert_pending, assert_ready_ok, task};

    fn ledger(rpm: Option<u32>, tpm: u64) -> Arc<KeyLedger> {
        Arc::new(KeyLedger::new(
            QuotaKey::new(Some("m"), None),
            ResolvedQuota {
                requests: rpm,
                tokens: tpm,
                period: Duration::from_secs(60),
                burndown: 1.0,
            },
            Duration::from_secs(60),
            Duration::ZERO,
        ))
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    fn admitted(a: Admission) -> Reservation {
        match a {
            Admission::Admitted(r) => r,
            Admission::Queued(_) => panic!("queued"),
        }
    }

    fn queued(a: Admission) -> Acquire {
        match a {
            Admission::Queued(q) => q,
            Admission::Admitted(_) => panic!("admitted"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refills_at_quota_per_period_and_settles_the_difference() {
        let l = ledger(None, 6_000);
        let r = admitted(l.admit(6_000, far()));
        assert_eq!(l.snapshot().0, 0.0);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!((l.snapshot().0 - 1_000.0).abs() < 1e-6);
        r.settle(2_000);
        assert!((l.snapshot().0 - 5_000.0).abs() < 1e-6);
        // Never above the capacity.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(l.snapshot().0, 6_000.0);
        // A charge above the reservation is debt.
        let r = admitted(l.admit(1_000, far()));
        r.settle(7_000);
        assert!((l.snapshot().0 - -1_000.0).abs() < 1e-6);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_limit_admission_too() {
        let l = ledger(Some(2), 1_000_000);
        let _a = admitted(l.admit(1, far()));
        let _b = admitted(l.admit(1, far()));
        let mut c = task::spawn(queued(l.admit(1, far())));
        assert_pending!(c.poll());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_pending!(c.poll());
        // 30 s refill one request; the wake-up is rounded up to the timer's millisecond.
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert!(c.is_woken());
        assert_ready_ok!(c.poll());
    }

    #[tokio::test(start_paused = true)]
    async fn the_head_is_not_overtaken_and_a_dropped_head_lets_the_next_in() {
        let l = ledger(None, 1_000);
        let _all = admitted(l.admit(1_000, far()));
        let mut big = task::spawn(queued(l.admit(900, far())));
        assert_pending!(big.poll());
        // A small request behind the big one waits even though it would fit sooner.
        tokio::time::advance(Duration::from_secs(6)).await; // 100 tokens back
        let mut small = task::spawn(queued(l.admit(50, far())));
        assert_pending!(small.poll());
        assert_pending!(big.poll());
        drop(big);
        assert!(small.is_woken());
        assert_ready_ok!(small.poll());
        assert_eq!(l.snapshot().2, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_past_its_deadline_fails_and_leaves_the_queue() {
        let l = ledger(None, 1_000);
        let _all = admitted(l.admit(1_000, far()));
        let mut w = task::spawn(queued(
            l.admit(1_000, Instant::now() + Duration::from_secs(5)),
        ));
        assert_pending!(w.poll());
        tokio::time::advance(Duration::from_secs(5)).await;
        match w.poll() {
            Poll::Ready(Err(ThrottleError::MaxWaitExceeded { waited, .. })) => {
                assert_eq!(waited, Duration::from_secs(5))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(l.snapshot().2, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_empties_the_buckets_and_slows_refill_for_a_while() {
        let l = ledger(None, 6_000);
        l.throttled();
        let (level, scale, _) = l.snapshot();
        assert_eq!((level, scale), (0.0, 0.7));
        // Throttles within a second count once.
        l.throttled();
        assert_eq!(l.snapshot().1, 0.7);
        // Half-way through recovery: scale 0.85; refilled ∫ = 30 s × (0.7 + 0.85) / 2.
        tokio::time::advance(Duration::from_secs(30)).await;
        let (level, scale, _) = l.snapshot();
        assert!((scale - 0.85).abs() < 1e-9);
        assert!((level - 100.0 * 30.0 * 0.775).abs() < 1e-6, "{level}");
        tokio::time::advance(Duration::from_secs(40)).await;
        assert_eq!(l.snapshot().1, 1.0);
        // A second throttle cuts from the current scale, never below the floor.
        for _ in 0..20 {
            l.throttled();
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert!(l.snapshot().1 >= THROTTLE_FLOOR);
    }

    #[test]
    fn rate_scale_integral_matches_a_numeric_sum() {
        let start = Instant::now();
        let s = RateScale {
            recovery: Duration::from_secs(10),
            cut: Some((start, 0.5)),
        };
        let (a, b) = (
            start + Duration::from_secs(2),
            start + Duration::from_secs(15),
        );
        let n = 130_000;
        let dt = (b - a).as_secs_f64() / n as f64;
        let sum: f64 = (0..n)
            .map(|i| s.at(a + Duration::from_secs_f64(dt * (i as f64 + 0.5))) * dt)
            .sum();
        assert!((s.integral(a, b) - sum).abs() < 1e-6);
    }
}
