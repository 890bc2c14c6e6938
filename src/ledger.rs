//! The in-process quota ledger: per quota key, a request bucket and a token bucket that
//! admit in FIFO order, take reservations and give back what was not used.
//!
//! governor's GCRA cannot refund tokens, and a dual limit must check both buckets before it
//! takes from either, so both buckets are kept here, side by side, under one lock per key.
//! Each bucket holds one period's worth of its current rate when full and refills
//! continuously at that rate. A token bucket may go below zero when a settled charge exceeds
//! its reservation; admissions then wait for the debt to refill.
//!
//! The current rate of each bucket is its quota's rate times a multiplier that a
//! [`Controller`] of its own moves: down on the upstream throttles that name its limit
//! ("Too many tokens" the token bucket, "Too many requests" the request bucket, an
//! unrecognised throttle both), back up on a cubic curve afterwards (see the `gate` module
//! docs, "Slowing down"). The multiplier is re-evaluated on a fixed grid of steps (a hundredth of
//! the period) and held constant in between, so the refill is an exact sum of constant-rate
//! segments, the same however often the ledger is looked at, also under paused time.

mod queue;

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use self::queue::WaitQueue;
use crate::{
    quota::ResolvedQuota,
    tenant::{Priority, Tenant},
    QuotaKey, ThrottleError, ThrottleKind,
};

#[cfg(feature = "redis")]
mod redis;
mod shared;

#[cfg(feature = "redis")]
pub use self::redis::RedisLedger;
pub(crate) use self::shared::Budget;
pub use self::shared::{
    Ask, Grant, Hold, Ledger as SharedLedger, LedgerError, LedgerFuture, Limits, LocalLedger,
    OutagePolicy,
};
use self::shared::{Asking, Remote};

/// Multiplicative decrease on an upstream throttle (the AWS SDK's β).
const BETA: f64 = 0.7;
/// The lowest multiplier, as a share of the configured quota (or the discovery guess).
const FLOOR: f64 = 0.01;
/// The highest multiplier of a discovered quota, as a multiple of its starting guess.
const DISCOVER_CAP: f64 = 10_000.0;
/// The multiplier is re-evaluated this many times per quota period.
const STEPS_PER_PERIOD: u32 = 100;
/// A discovered quota that has never been throttled doubles its rate every this many
/// periods while the key is busy (slow start): from the starting guess to ten times it in
/// half a period, so a short burst of load finds its quota before it is over.
const SLOW_START_DOUBLING: f64 = 0.15;
/// A bucket below this share of its capacity counts as busy: the curve only advances while
/// the callers use what the rate gives.
const BUSY_LEVEL: f64 = 0.5;
/// Forward simulation of a waiter's wake-up time stops after this many steps and assumes
/// the rate of the last one.
const MAX_SIM_STEPS: usize = 100_000;

/// Quota state of every key.
#[derive(Debug)]
pub(crate) struct Ledger {
    keys: Mutex<HashMap<QuotaKey, Arc<KeyLedger>>>,
    /// Per key and capped tenant, the tenant's cap (see [`crate::tenant`]).
    caps: Mutex<HashMap<(QuotaKey, Tenant), Arc<KeyLedger>>>,
    recovery: Option<Duration>,
    headroom: Duration,
    /// A budget shared with other processes, asked after the key's own buckets.
    budget: Option<Arc<Budget>>,
}

impl Ledger {
    pub(crate) fn new(recovery: Option<Duration>, headroom: Duration) -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
            caps: Mutex::new(HashMap::new()),
            recovery,
            headroom,
            budget: None,
        }
    }

    pub(crate) fn with_budget(mut self, budget: Option<Budget>) -> Self {
        self.budget = budget.map(Arc::new);
        self
    }

    /// The ledger of `key`, created with `quota` on first use.
    pub(crate) fn key(&self, key: &QuotaKey, quota: ResolvedQuota) -> Arc<KeyLedger> {
        let mut keys = lock(&self.keys);
        if let Some(k) = keys.get(key) {
            return k.clone();
        }
        let recovery = self.recovery.unwrap_or(quota.period.mul_f64(1.5));
        let mut ledger = KeyLedger::new(key.clone(), quota, recovery, self.headroom);
        ledger.shared = self
            .budget
            .clone()
            .map(|b| (b, shared::limits(quota, self.headroom)));
        let ledger = Arc::new(ledger);
        keys.insert(key.clone(), ledger.clone());
        ledger
    }

    /// The cap ledger of `tenant` on `key`: `share` of `quota`, fixed (no adaptation).
    pub(crate) fn cap(
        &self,
        key: &QuotaKey,
        tenant: &Tenant,
        quota: ResolvedQuota,
        share: f64,
    ) -> Arc<KeyLedger> {
        let mut caps = lock(&self.caps);
        if let Some(k) = caps.get(&(key.clone(), tenant.clone())) {
            return k.clone();
        }
        let capped = ResolvedQuota {
            requests: quota
                .requests
                .map(|r| ((f64::from(r) * share).ceil() as u32).max(1)),
            tokens: ((quota.tokens as f64 * share).ceil() as u64).max(1),
            discover: false,
            ..quota
        };
        let ledger = Arc::new(KeyLedger::new(
            key.clone(),
            capped,
            Duration::ZERO,
            self.headroom,
        ));
        caps.insert((key.clone(), tenant.clone()), ledger.clone());
        ledger
    }

    /// The ledger of `key`, if it has been used.
    pub(crate) fn get(&self, key: &QuotaKey) -> Option<Arc<KeyLedger>> {
        lock(&self.keys).get(key).cloned()
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
    /// The shared budget and this key's limits in it.
    shared: Option<(Arc<Budget>, Limits)>,
}

/// A bucket whose capacity and refill rate are its quota's times the controller's
/// multiplier.
#[derive(Clone, Debug)]
struct Bucket {
    /// Capacity and refill per second at multiplier 1.
    capacity: f64,
    per_sec: f64,
    level: f64,
    /// Refill time kept unused on top of each cost (see `ThrottleConfigBuilder::headroom`).
    headroom: f64,
}

impl Bucket {
    fn full(per_period: f64, period: Duration, headroom: Duration) -> Self {
        Self {
            capacity: per_period,
            per_sec: per_period / period.as_secs_f64(),
            level: per_period,
            headroom: headroom.as_secs_f64(),
        }
    }

    fn capacity(&self, scale: f64) -> f64 {
        self.capacity * scale
    }

    /// The level at which `cost` may be taken: cost plus headroom, never above capacity
    /// (so a request larger than the current capacity is admitted from a full bucket).
    fn need(&self, cost: f64, scale: f64) -> f64 {
        (cost + self.per_sec * scale * self.headroom).min(self.capacity(scale))
    }

    fn fill(&mut self, secs: f64, scale: f64) {
        self.level = (self.level + self.per_sec * scale * secs).min(self.capacity(scale));
    }
}

/// Where the rate curve is.
#[derive(Clone, Debug, PartialEq)]
enum Phase {
    /// At the cap (the configured quota) and not throttled since.
    Full,
    /// A discovered quota never throttled yet: doubling every `SLOW_START_DOUBLING`
    /// periods of busy time.
    SlowStart,
    /// After a throttle that hit at multiplier `last_max`; `clock` counts busy seconds since.
    Cubic { last_max: f64, clock: f64 },
}

/// The rate multiplier of one key: CUBIC-like, as the AWS SDK's adaptive client, but
/// scale-free (the curve is relative to `last_max`) and in units of the quota period.
///
/// On a throttle: `last_max = min(m, measured)`, `m = β × last_max` (β = 0.7), `measured`
/// the multiplier tokens were drawn at over the last period (as the AWS SDK takes the
/// measured send rate). Afterwards
/// `m(t) = last_max × (1 + (1 − β) × (t / K − 1)³)`, `t` the time since the cut (for a
/// discovered quota, only the busy time), so
/// `m(0) = β × last_max`, `m(K) = last_max` and the curve then probes above it (`m(2K) =
/// 1.3 × last_max`); i.e. `C = (1 − β) × last_max / K³`. `K` is `throttle_recovery`, one
/// and a half quota periods unless set. Clamped to `[FLOOR, cap]`.
#[derive(Clone, Debug)]
struct Controller {
    scale: f64,
    cap: f64,
    phase: Phase,
    /// K in seconds; zero turns adaptation off.
    recovery: f64,
    period: f64,
    /// When the last cut happened: throttles of requests admitted before it were caused by
    /// the rate it already corrected, so they do not cut again.
    last_cut: Option<Instant>,
}

impl Controller {
    fn new(discover: bool, recovery: Duration, period: Duration) -> Self {
        Self {
            scale: 1.0,
            cap: if discover { DISCOVER_CAP } else { 1.0 },
            phase: if discover {
                Phase::SlowStart
            } else {
                Phase::Full
            },
            recovery: recovery.as_secs_f64(),
            period: period.as_secs_f64(),
            last_cut: None,
        }
    }

    fn recovery_duration(&self) -> Duration {
        Duration::from_secs_f64(self.recovery)
    }

    /// Moves the curve on by one step of `dt` seconds.
    fn step(&mut self, dt: f64, busy: bool) {
        match &mut self.phase {
            Phase::Full => {}
            Phase::SlowStart => {
                if busy {
                    let doubling = SLOW_START_DOUBLING * self.period;
                    self.scale = (self.scale * (dt / doubling).exp2()).min(self.cap);
                }
            }
            Phase::Cubic { last_max, clock } => {
                // Under a configured quota the curve climbs with time, as the AWS SDK's,
                // idle or not: it can never pass the quota the user vouched for. A
                // discovered rate has no such cap, so it climbs only while it is tested.
                if busy || self.cap <= 1.0 {
                    *clock += dt;
                }
                let x = *clock / self.recovery - 1.0;
                let m = *last_max * (1.0 + (1.0 - BETA) * x * x * x);
                self.scale = m.clamp(FLOOR, self.cap);
                if x > 0.0 && self.scale >= self.cap {
                    self.phase = Phase::Full;
                }
            }
        }
    }

    /// Cuts the rate for a throttle of a request admitted at `admitted_at`, `measured` the
    /// multiplier the key actually drew at over the last period when the gate was holding
    /// requests back (else `None`); false when the throttle is stale or adaptation is off.
    fn cut(&mut self, now: Instant, admitted_at: Instant, measured: Option<f64>) -> bool {
        if self.recovery == 0.0 || self.last_cut.is_some_and(|c| admitted_at <= c) {
            return false;
        }
        // As the AWS SDK: the rate that was throttled is what was really sent, when that was
        // less than the rate allowed (upstream's burst room hides an excess for a while).
        // A throttle under light load says nothing of the rate the gate would have drawn at
        // its limit: cut from the limit itself, or one stray 429 would pin the key near the
        // floor.
        let m = measured.map_or(self.scale, |x| self.scale.min(x.max(FLOOR)));
        let last_max = m;
        self.scale = (BETA * m).max(FLOOR);
        self.phase = Phase::Cubic {
            last_max,
            clock: 0.0,
        };
        self.last_cut = Some(now);
        true
    }
}

/// The buckets of one key and the controllers that set their rates.
#[derive(Clone, Debug)]
struct Meter {
    tokens: Bucket,
    requests: Option<Bucket>,
    /// The token bucket's multiplier.
    ctl: Controller,
    /// The request bucket's multiplier (at 1 and `Full` while there is no request bucket).
    req_ctl: Controller,
    /// Requests taken per step over the last period, as `drawn` for tokens.
    drawn_requests: Vec<f64>,
    /// When the key was first used: the draw history covers no more than the time since.
    started: Instant,
    updated: Instant,
    /// End of the current step; the multiplier is constant until then.
    step_end: Instant,
    step: Duration,
    /// Net tokens drawn (taken less given back) per step over the last period, the current
    /// step at `slot`.
    drawn: Vec<f64>,
    slot: usize,
}

impl Meter {
    /// Refills every bucket for `secs` at its own multiplier.
    fn fill(&mut self, secs: f64) {
        self.tokens.fill(secs, self.ctl.scale);
        if let Some(r) = &mut self.requests {
            r.fill(secs, self.req_ctl.scale);
        }
    }

    /// Caps every bucket at its capacity under its current multiplier.
    fn clamp(&mut self) {
        let cap = self.tokens.capacity(self.ctl.scale);
        self.tokens.level = self.tokens.level.min(cap);
        if let Some(r) = &mut self.requests {
            r.level = r.level.min(r.capacity(self.req_ctl.scale));
        }
    }

    /// Whether a bucket is below its busy level.
    fn busy(&self) -> bool {
        self.tokens.level < BUSY_LEVEL * self.tokens.capacity(self.ctl.scale)
            || self
                .requests
                .as_ref()
                .is_some_and(|r| r.level < BUSY_LEVEL * r.capacity(self.req_ctl.scale))
    }

    /// Both multipliers at their cap: the rates are constant.
    fn full(&self) -> bool {
        self.ctl.phase == Phase::Full && self.req_ctl.phase == Phase::Full
    }

    fn record(&mut self, tokens: f64) {
        self.drawn[self.slot] += tokens;
    }

    fn next_slot(&mut self) {
        self.slot = (self.slot + 1) % self.drawn.len();
        self.drawn[self.slot] = 0.0;
        self.drawn_requests[self.slot] = 0.0;
    }

    /// The multiplier at which requests were drawn over the last period.
    fn measured_requests(&self) -> Option<f64> {
        let r = self.requests.as_ref()?;
        Some(self.drawn_requests.iter().sum::<f64>() / r.capacity)
    }

    /// Requests per period drawn over the last period (or since the key was first used,
    /// scaled up to a period, when that is shorter).
    fn request_rate(&self, now: Instant) -> f64 {
        let period = self.step.as_secs_f64() * self.drawn.len() as f64;
        let covered = (now - self.started)
            .as_secs_f64()
            .clamp(self.step.as_secs_f64(), period);
        self.drawn_requests.iter().sum::<f64>() * period / covered
    }

    /// The multiplier at which tokens were drawn over the last period.
    fn measured(&self) -> f64 {
        self.drawn.iter().sum::<f64>() / self.tokens.capacity
    }

    /// Refills up to `now`, stepping the controller at each step boundary on the way.
    /// `queued`: someone waited all along (the queue only changes at a refill).
    fn advance(&mut self, now: Instant, queued: bool) {
        if self.full() && now > self.updated {
            // Constant rate: one segment, and the step grid moves along.
            let secs = (now - self.updated).as_secs_f64();
            self.fill(secs);
            self.updated = now;
            // The draw history moves along the step grid; after a whole period idle it is
            // empty, and the grid starts again from now.
            let period = self.step * self.drawn.len() as u32;
            if now >= self.step_end + period {
                self.drawn.iter_mut().for_each(|d| *d = 0.0);
                self.drawn_requests.iter_mut().for_each(|d| *d = 0.0);
                self.step_end = now + self.step;
            }
            while self.step_end <= now {
                self.step_end += self.step;
                self.next_slot();
            }
            return;
        }
        while self.updated < now {
            let end = now.min(self.step_end);
            let secs = (end - self.updated).as_secs_f64();
            self.fill(secs);
            self.updated = end;
            if end == self.step_end {
                let busy = queued || self.busy();
                self.ctl.step(self.step.as_secs_f64(), busy);
                self.req_ctl.step(self.step.as_secs_f64(), busy);
                self.clamp();
                self.step_end += self.step;
                self.next_slot();
            }
        }
    }

    /// A request's share of the quota period at multiplier 1: its tokens' or its one
    /// request's, whichever is larger.
    fn cost(&self, tokens: u64) -> f64 {
        let t = tokens as f64 / self.tokens.capacity.max(1.0);
        let r = self
            .requests
            .as_ref()
            .map_or(0.0, |r| 1.0 / r.capacity.max(1.0));
        t.max(r)
    }

    fn fits(&self, tokens: u64) -> bool {
        let rs = self.req_ctl.scale;
        self.tokens.level >= self.tokens.need(tokens as f64, self.ctl.scale)
            && self
                .requests
                .as_ref()
                .is_none_or(|r| r.level >= r.need(1.0, rs))
    }

    /// Seconds at the current multipliers until both buckets hold what `tokens` needs.
    fn wait_at_current_rate(&self, tokens: u64) -> f64 {
        let t = |b: &Bucket, cost: f64, s: f64| {
            ((b.need(cost, s) - b.level) / (b.per_sec * s)).max(0.0)
        };
        let r = self
            .requests
            .as_ref()
            .map_or(0.0, |r| t(r, 1.0, self.req_ctl.scale));
        t(&self.tokens, tokens as f64, self.ctl.scale).max(r)
    }

    /// How long from `self.updated` until `tokens` fits, following the rate curve forward
    /// as a waiting key would.
    fn time_to_fit(&self, tokens: u64) -> Duration {
        let start = self.updated;
        let mut m = self.clone();
        let mut wait = m.wait_at_current_rate(tokens);
        if wait == 0.0 {
            return Duration::ZERO;
        }
        for _ in 0..MAX_SIM_STEPS {
            if m.full() || m.updated + Duration::from_secs_f64(wait) <= m.step_end {
                break;
            }
            let end = m.step_end;
            m.advance(end, true);
            wait = m.wait_at_current_rate(tokens);
            if wait == 0.0 {
                break;
            }
        }
        let secs = (m.updated - start).as_secs_f64() + wait;
        // Round up to the next microsecond so a wake-up at that instant finds the room.
        Duration::from_secs_f64((secs * 1e6).ceil() / 1e6 + 1e-6)
    }
}

#[derive(Debug)]
struct KeyState {
    meter: Meter,
    /// Waiter ids in service order (see [`queue`]); the first is the only one that may be
    /// admitted, and a waiter that leaves from the middle is removed in O(log n).
    queue: WaitQueue,
    wakers: HashMap<u64, Waker>,
    next_id: u64,
}

impl KeyState {
    fn refill(&mut self, now: Instant) {
        let queued = !self.queue.is_empty();
        self.meter.advance(now, queued);
    }

    fn fits(&self, tokens: u64) -> bool {
        self.meter.fits(tokens)
    }

    fn take(&mut self, tokens: u64) {
        self.meter.tokens.level -= tokens as f64;
        self.meter.record(tokens as f64);
        if let Some(r) = &mut self.meter.requests {
            r.level -= 1.0;
        }
        let slot = self.meter.slot;
        self.meter.drawn_requests[slot] += 1.0;
    }

    fn time_to_fit(&self, tokens: u64) -> Duration {
        self.meter.time_to_fit(tokens)
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
    fn leave(&mut self, id: u64, admitted: bool) {
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

impl KeyLedger {
    fn new(key: QuotaKey, quota: ResolvedQuota, recovery: Duration, headroom: Duration) -> Self {
        let now = Instant::now();
        let step = (quota.period / STEPS_PER_PERIOD).max(Duration::from_micros(1));
        Self {
            key,
            state: Mutex::new(KeyState {
                meter: Meter {
                    tokens: Bucket::full(quota.tokens as f64, quota.period, headroom),
                    requests: quota
                        .requests
                        .map(|r| Bucket::full(f64::from(r), quota.period, headroom)),
                    ctl: Controller::new(quota.discover, recovery, quota.period),
                    req_ctl: Controller::new(false, recovery, quota.period),
                    drawn_requests: vec![0.0; STEPS_PER_PERIOD as usize],
                    started: now,
                    updated: now,
                    step_end: now + step,
                    step,
                    drawn: vec![0.0; STEPS_PER_PERIOD as usize],
                    slot: 0,
                },
                queue: WaitQueue::default(),
                wakers: HashMap::new(),
                next_id: 0,
            }),
            shared: None,
        }
    }
    pub(crate) fn key(&self) -> &QuotaKey {
        &self.key
    }

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
        let mut state = lock(&self.state);
        // With a shared budget every admission asks it, from the queue.
        if state.queue.is_empty() && self.shared.is_none() {
            state.refill(now);
            if state.fits(tokens) {
                state.take(tokens);
                return Admission::Admitted(Reservation::new(self.clone(), tokens, now));
            }
        }
        if max_queued.is_some_and(|max| state.queue.len() >= max) {
            state.refill(now);
            let period = state.meter.step * STEPS_PER_PERIOD;
            let drain = state.queue.queued_periods() / state.meter.ctl.scale.max(FLOOR);
            return Admission::Shed {
                queued: state.queue.len(),
                retry_after: period.mul_f64(drain.min(1e6)),
            };
        }
        let id = state.next_id;
        state.next_id += 1;
        let cost = state.meter.cost(tokens);
        let weight = waiter.weight;
        state
            .queue
            .push(id, waiter.tenant.clone(), weight, waiter.priority, cost);
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
            asking: None,
            retry_at: None,
        })
    }

    /// Upstream refused a request admitted at `admitted_at` for lack of quota, naming the
    /// limit it hit (`kind`). Whatever room this ledger thought it had in that limit is
    /// gone, and its rate is cut unless the request was admitted before that rate's last cut
    /// (its refusal is news of the rate already corrected):
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
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.refill(now);
        // Only while requests queue is the rate drawn the rate the gate allowed.
        let queued = !state.queue.is_empty();
        let m = &mut state.meter;
        let (cut_tokens, cut_requests) = match kind {
            ThrottleKind::Tokens => (true, false),
            ThrottleKind::Requests => (false, true),
            ThrottleKind::DailyTokens => (false, false),
            _ => (true, m.requests.is_some()),
        };
        let mut cut = false;
        if cut_tokens {
            // Before its first throttle a discovered rate is a probe, not a rate anyone vouched
            // for: what was really drawn is the better estimate even when nothing waited.
            let probing = m.ctl.phase == Phase::SlowStart;
            let measured = (queued || probing).then(|| m.measured());
            m.tokens.level = m.tokens.level.min(0.0);
            cut |= m.ctl.cut(now, admitted_at, measured);
        }
        if cut_requests {
            if m.requests.is_none() {
                if m.ctl.recovery == 0.0 {
                    // Adaptation is off: no limit of its own to find.
                    return;
                }
                // The rate that was throttled, at least one request per period.
                let rate = m.request_rate(now).max(1.0);
                let period = m.step * STEPS_PER_PERIOD;
                let mut bucket =
                    Bucket::full(rate, period, Duration::from_secs_f64(m.tokens.headroom));
                bucket.level = 0.0;
                m.requests = Some(bucket);
                m.req_ctl = Controller::new(true, m.ctl.recovery_duration(), period);
                // Measured at the throttle: the rate drawn was the bucket's whole rate.
                cut |= m.req_ctl.cut(now, admitted_at, Some(1.0));
            } else {
                let measured = if queued { m.measured_requests() } else { None };
                if let Some(r) = &mut m.requests {
                    r.level = r.level.min(0.0);
                }
                cut |= m.req_ctl.cut(now, admitted_at, measured);
            }
        }
        if cut {
            // A new step grid from the cut, so the curve's steps line up with it.
            m.step_end = now + m.step;
            tracing::debug!(
                quota_key = %self.key,
                ?kind,
                token_rate_scale = m.ctl.scale,
                request_rate_scale = m.req_ctl.scale,
                "upstream throttled: slowing down"
            );
        }
    }

    /// The current rates per period: tokens, and requests when limited.
    pub(crate) fn rates(&self) -> (f64, Option<f64>) {
        let mut state = lock(&self.state);
        state.refill(Instant::now());
        let m = &state.meter;
        (
            m.tokens.capacity(m.ctl.scale),
            m.requests.as_ref().map(|r| r.capacity(m.req_ctl.scale)),
        )
    }

    /// The current token level and rate multiplier (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> (f64, f64, usize) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.refill(now);
        (
            state.meter.tokens.level,
            state.meter.ctl.scale,
            state.queue.len(),
        )
    }
}

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
            lock(&self.ledger.state).leave(self.id, false);
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
        // With a shared budget: the question in flight, and when to ask again.
        asking: Option<Asking>,
        retry_at: Option<Instant>,
    }
}

impl Future for Acquire {
    type Output = Result<Reservation, ThrottleError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        assert!(!this.ticket.done, "Acquire polled after completion");
        if this.ticket.ledger.shared.is_some() {
            return shared::poll_acquire(
                this.ticket,
                this.sleep,
                *this.deadline,
                this.asking,
                this.retry_at,
                cx,
            );
        }
        let ledger = this.ticket.ledger.clone();
        // A timer that is already due is polled again at once; a few rounds always settle it.
        for _ in 0..8 {
            let now = Instant::now();
            let mut state = lock(&ledger.state);
            let id = this.ticket.id;
            let mut wake_at = *this.deadline;
            if state.queue.first() == Some(id) {
                state.refill(now);
                if state.fits(this.ticket.tokens) {
                    state.take(this.ticket.tokens);
                    state.leave(id, true);
                    this.ticket.done = true;
                    drop(state);
                    tracing::trace!(
                        quota_key = %ledger.key,
                        waited = ?now.saturating_duration_since(this.ticket.queued_at),
                        "admitted after waiting"
                    );
                    return Poll::Ready(Ok(Reservation::new(ledger, this.ticket.tokens, now)));
                }
                wake_at = wake_at.min(now + state.time_to_fit(this.ticket.tokens));
            }
            if now >= *this.deadline {
                state.leave(id, false);
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
    admitted_at: Instant,
    /// The hold in the shared budget, settled along with the key's own buckets.
    remote: Option<Remote>,
}

impl Reservation {
    fn new(ledger: Arc<KeyLedger>, tokens: u64, admitted_at: Instant) -> Self {
        Self {
            ledger,
            tokens,
            admitted_at,
            remote: None,
        }
    }

    pub(crate) fn ledger(&self) -> &Arc<KeyLedger> {
        &self.ledger
    }

    pub(crate) fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Charges `actual` tokens instead of the reservation: the difference goes back (or,
    /// when `actual` is larger, is taken as debt).
    pub(crate) fn settle(mut self, actual: u64) {
        if let Some(remote) = self.remote.take() {
            remote.settle(actual);
        }
        let diff = self.tokens as f64 - actual as f64;
        if diff == 0.0 {
            return;
        }
        let mut state = lock(&self.ledger.state);
        state.refill(Instant::now());
        let cap = state.meter.tokens.capacity(state.meter.ctl.scale);
        state.meter.tokens.level = (state.meter.tokens.level + diff).min(cap);
        state.meter.record(-diff);
        if diff > 0.0 {
            state.wake_head();
        }
    }

    /// Upstream refused this request for lack of quota. `refund`: it refused before running
    /// (a 429), so the whole reservation comes back at once; otherwise (a throttle inside a
    /// stream) it stays charged. Either way the key slows down (see
    /// [`KeyLedger::throttled`]).
    pub(crate) fn throttled(self, refund: bool, kind: ThrottleKind) {
        let ledger = self.ledger.clone();
        let admitted_at = self.admitted_at;
        if refund {
            self.settle(0);
        }
        ledger.throttled(admitted_at, kind);
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
                discover: false,
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
            other => panic!("not admitted: {other:?}"),
        }
    }

    fn queued(a: Admission) -> Acquire {
        match a {
            Admission::Queued(q) => q,
            other => panic!("not queued: {other:?}"),
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
    async fn a_throttle_empties_the_buckets_and_cuts_the_rate_once_per_cut() {
        let l = ledger(None, 6_000);
        let t0 = Instant::now();
        // A period's quota drawn: the rate that was throttled is the whole quota.
        let _r = admitted(l.admit(6_000, far()));
        tokio::time::advance(Duration::from_millis(10)).await;
        l.throttled(t0, ThrottleKind::Unknown);
        let (level, scale, _) = l.snapshot();
        assert_eq!((level, scale), (0.0, 0.7));
        // Refusals of requests admitted before the cut do not cut again ...
        tokio::time::advance(Duration::from_secs(1)).await;
        l.throttled(t0, ThrottleKind::Unknown);
        let (level, scale, _) = l.snapshot();
        assert_eq!(level, 0.0, "but they empty the bucket");
        // (the rate has begun to climb back)
        assert!(scale > 0.7 && scale < 0.71, "{scale}");
        // ... a refusal of one admitted after it does.
        let later = Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        l.throttled(later, ThrottleKind::Unknown);
        assert!(
            (l.snapshot().1 - 0.7 * scale).abs() < 1e-3,
            "{}",
            l.snapshot().1
        );
        // Never below the floor, however many.
        for _ in 0..40 {
            let t = Instant::now();
            tokio::time::advance(Duration::from_millis(1)).await;
            l.throttled(t, ThrottleKind::Unknown);
        }
        assert!((l.snapshot().1 - FLOOR).abs() < 1e-3);
    }

    /// The current rates per period: (tokens, requests).
    fn rates(l: &KeyLedger) -> (f64, Option<f64>) {
        l.rates()
    }

    #[tokio::test(start_paused = true)]
    async fn each_class_of_throttle_cuts_the_budget_it_names() {
        let t = || Instant::now();
        // "Too many tokens": the token rate only.
        let l = ledger(Some(60), 6_000);
        let at = t();
        let _r = admitted(l.admit(100, far()));
        tokio::time::advance(Duration::from_millis(10)).await;
        l.throttled(at, ThrottleKind::Tokens);
        let (tokens, requests) = rates(&l);
        assert!((tokens - 4_200.0).abs() < 1e-6, "{tokens}");
        assert_eq!(requests, Some(60.0));
        assert!(l.snapshot().0 <= 0.0, "the token bucket is emptied");

        // "Too many requests": the request rate only, and the request bucket is emptied.
        let l = ledger(Some(60), 6_000);
        let at = t();
        let _r = admitted(l.admit(100, far()));
        tokio::time::advance(Duration::from_millis(10)).await;
        l.throttled(at, ThrottleKind::Requests);
        let (tokens, requests) = rates(&l);
        assert_eq!(tokens, 6_000.0);
        assert!((requests.unwrap() - 42.0).abs() < 1e-6, "{requests:?}");
        assert!(l.snapshot().0 > 5_000.0, "the token bucket keeps its room");
        // The next request waits for the request bucket.
        assert!(matches!(l.admit(1, far()), Admission::Queued(_)));

        // Unknown: both.
        let l = ledger(Some(60), 6_000);
        let at = t();
        let _r = admitted(l.admit(100, far()));
        tokio::time::advance(Duration::from_millis(10)).await;
        l.throttled(at, ThrottleKind::Unknown);
        let (tokens, requests) = rates(&l);
        assert!((tokens - 4_200.0).abs() < 1e-6, "{tokens}");
        assert!((requests.unwrap() - 42.0).abs() < 1e-6, "{requests:?}");

        // Daily: neither rate moves, nothing is emptied.
        let l = ledger(Some(60), 6_000);
        let at = t();
        let _r = admitted(l.admit(100, far()));
        tokio::time::advance(Duration::from_millis(10)).await;
        l.throttled(at, ThrottleKind::DailyTokens);
        assert_eq!(rates(&l), (6_000.0, Some(60.0)));
        assert!(l.snapshot().0 > 5_800.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_throttle_without_a_request_quota_starts_one_at_the_rate_that_was_throttled()
    {
        // No RPM configured; 30 requests in the first 30 s, then "Too many requests".
        let l = ledger(None, 1_000_000);
        let mut last = Instant::now();
        for _ in 0..30 {
            last = Instant::now();
            drop(admitted(l.admit(10, far())));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(rates(&l).1, None);
        l.throttled(last, ThrottleKind::Requests);
        let (tokens, requests) = rates(&l);
        assert_eq!(tokens, 1_000_000.0, "the token rate is not cut");
        // 30 requests in 30 s is 60 per minute; cut to 70 %.
        assert!((requests.unwrap() - 42.0).abs() < 1e-6, "{requests:?}");
        let mut next = task::spawn(queued(l.admit(10, far())));
        assert_pending!(next.poll());
        // One request refills in 60 / 42 s at the cut rate (plus the curve's climb).
        tokio::time::advance(Duration::from_millis(1_430)).await;
        assert_ready_ok!(next.poll());
        // Discovered: it climbs back past the throttled rate while it is used.
        for _ in 0..600 {
            if let Admission::Admitted(r) = l.admit(10, far()) {
                drop(r);
            }
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        assert!(rates(&l).1.unwrap() > 60.0, "{:?}", rates(&l));
    }

    fn period() -> Duration {
        Duration::from_secs(60)
    }

    #[test]
    fn the_curve_returns_to_the_throttled_rate_after_k_then_probes_above_it() {
        let t0 = Instant::now();
        let mut c = Controller::new(false, period(), period());
        assert!(c.cut(t0, t0 - Duration::from_secs(1), Some(10.0)));
        assert_eq!(c.scale, 0.7);
        // Under a configured quota idle time counts as well. Half-way: 1 + 0.3 × (−0.5)³.
        (0..25).for_each(|_| c.step(0.6, false));
        (0..25).for_each(|_| c.step(0.6, true));
        assert!((c.scale - 0.9625).abs() < 1e-9, "{}", c.scale);
        // At K the throttled rate, then the cap (the configured quota) holds.
        (0..60).for_each(|_| c.step(0.6, true));
        assert_eq!(c.scale, 1.0);
        assert_eq!(c.phase, Phase::Full);

        // Without a ceiling (discovery) it probes above: 1.3 × last_max at 2K.
        let mut d = Controller::new(true, period(), period());
        // Slow start: doubles per 0.15 period (9 s) of busy time.
        (0..15).for_each(|_| d.step(0.6, true));
        assert!((d.scale - 2.0).abs() < 1e-9, "{}", d.scale);
        assert!(d.cut(t0, t0 - Duration::from_secs(1), Some(10.0)));
        assert!((d.scale - 1.4).abs() < 1e-9);
        // A discovered rate climbs only while it is tested: idle steps do not move it.
        (0..100).for_each(|_| d.step(0.6, false));
        assert!((d.scale - 1.4).abs() < 1e-9);
        (0..200).for_each(|_| d.step(0.6, true));
        assert!((d.scale - 2.6).abs() < 1e-9, "{}", d.scale);
    }

    fn meter(discover: bool) -> Meter {
        let now = Instant::now();
        let step = period() / STEPS_PER_PERIOD;
        Meter {
            tokens: Bucket::full(6_000.0, period(), Duration::from_millis(100)),
            requests: Some(Bucket::full(60.0, period(), Duration::from_millis(100))),
            ctl: Controller::new(discover, period(), period()),
            req_ctl: Controller::new(false, period(), period()),
            drawn_requests: vec![0.0; STEPS_PER_PERIOD as usize],
            started: now,
            updated: now,
            step_end: now + step,
            step,
            drawn: vec![0.0; STEPS_PER_PERIOD as usize],
            slot: 0,
        }
    }

    #[test]
    fn refill_is_the_same_however_often_it_is_looked_at() {
        for discover in [false, true] {
            let start = Instant::now();
            let mut a = meter(discover);
            a.tokens.level = -3_000.0;
            a.ctl.cut(start, start - Duration::from_secs(1), Some(10.0));
            let mut b = a.clone();
            let end = start + Duration::from_secs(150);
            // Irregular small increments against one jump.
            let mut t = start;
            let mut i = 0u64;
            while t < end {
                t = (t + Duration::from_micros(1 + (i * 7_919) % 900_000)).min(end);
                a.advance(t, true);
                i += 1;
            }
            b.advance(end, true);
            assert!((a.tokens.level - b.tokens.level).abs() < 1e-6, "{discover}");
            assert_eq!(a.ctl.scale, b.ctl.scale);
            // And it is the sum of rate × time over the steps: replay the steps by hand.
            let mut c = meter(discover);
            c.tokens.level = -3_000.0;
            c.ctl.cut(start, start - Duration::from_secs(1), Some(10.0));
            let mut level = -3_000.0;
            for _ in 0..250 {
                let s = c.ctl.scale;
                level = (level + 100.0 * s * 0.6).min(6_000.0 * s);
                c.ctl.step(0.6, true);
                level = f64::min(level, 6_000.0 * c.ctl.scale);
            }
            assert!(
                (level - b.tokens.level).abs() < 1e-6,
                "{level} {}",
                b.tokens.level
            );
        }
    }

    #[test]
    fn the_wake_up_time_follows_the_rising_rate() {
        let start = Instant::now();
        let mut m = meter(false);
        m.tokens.level = 0.0;
        m.ctl.cut(start, start - Duration::from_secs(1), Some(10.0));
        let wait = m.time_to_fit(5_000);
        // Slower than at full rate, faster than at the cut rate.
        assert!(
            wait > Duration::from_secs(50) && wait < Duration::from_secs(5_000 / 70),
            "{wait:?}"
        );
        let mut early = m.clone();
        early.advance(start + wait - Duration::from_millis(1), true);
        assert!(!early.fits(5_000));
        m.advance(start + wait, true);
        assert!(m.fits(5_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_discovered_quota_admits_a_request_larger_than_its_guess_from_a_full_bucket() {
        let l = Arc::new(KeyLedger::new(
            QuotaKey::new(Some("m"), None),
            ResolvedQuota {
                requests: None,
                tokens: 1_000,
                period: period(),
                burndown: 1.0,
                discover: true,
            },
            period(),
            Duration::ZERO,
        ));
        let r = admitted(l.admit(5_000, far()));
        assert_eq!(l.snapshot().0, -4_000.0);
        drop(r);
        // The debt refills (and, busy, the guess grows), then the next one is admitted.
        let mut next = task::spawn(queued(l.admit(5_000, far())));
        assert_pending!(next.poll());
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_ready_ok!(next.poll());
        assert!(l.rates().0 > 1_000.0);
    }
}
