//! The buckets of one key and their controllers, refilled on a fixed grid of steps.
//!
//! The multiplier is re-evaluated on a fixed grid of steps (a hundredth of the period) and
//! held constant in between, so the refill is an exact sum of constant-rate segments, the
//! same however often the meter is looked at, also under paused time.

use std::time::Duration;

use tokio::time::Instant;

use super::{
    bucket::Bucket,
    rate::{Controller, Phase, FLOOR},
};
use crate::{quota::ResolvedQuota, ThrottleKind};

/// The multiplier is re-evaluated this many times per quota period.
const STEPS_PER_PERIOD: u32 = 100;
/// A bucket below this share of its capacity counts as busy: the curve only advances while
/// the callers use what the rate gives.
const BUSY_LEVEL: f64 = 0.5;
/// Forward simulation of a waiter's wake-up time stops after this many steps and assumes
/// the rate of the last one.
const MAX_SIM_STEPS: usize = 100_000;

/// The buckets of one key and the controllers that set their rates.
#[derive(Clone, Debug)]
pub(super) struct Meter {
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
    /// Full buckets for `quota`, their rates recovering over `recovery` after a throttle.
    pub(super) fn new(quota: ResolvedQuota, recovery: Duration, headroom: Duration) -> Self {
        let now = Instant::now();
        let step = (quota.period / STEPS_PER_PERIOD).max(Duration::from_micros(1));
        Self {
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
        }
    }

    /// Takes one request and `tokens` tokens.
    pub(super) fn take(&mut self, tokens: u64) {
        self.tokens.level -= tokens as f64;
        self.record(tokens as f64);
        if let Some(r) = &mut self.requests {
            r.level -= 1.0;
        }
        self.drawn_requests[self.slot] += 1.0;
        self.ctl.admitted();
    }

    /// Gives `diff` tokens back (takes them as debt when negative), never above capacity.
    pub(super) fn give_back(&mut self, diff: f64) {
        let cap = self.tokens.capacity(self.ctl.scale);
        self.tokens.level = (self.tokens.level + diff).min(cap);
        self.record(-diff);
    }

    /// How long `queued_periods` of queued cost (see [`cost`](Self::cost)) take to drain at
    /// the current token rate.
    pub(super) fn drain_time(&self, queued_periods: f64) -> Duration {
        let period = self.step * STEPS_PER_PERIOD;
        let drain = queued_periods / self.ctl.scale.max(FLOOR);
        period.mul_f64(drain.min(1e6))
    }

    /// The current rates per period: tokens, and requests when limited.
    pub(super) fn rates(&self) -> (f64, Option<f64>) {
        (
            self.tokens.capacity(self.ctl.scale),
            self.requests
                .as_ref()
                .map(|r| r.capacity(self.req_ctl.scale)),
        )
    }

    /// What the buckets hold: tokens, and requests when limited (below zero while a
    /// settlement's debt is paid off).
    pub(super) fn levels(&self) -> (f64, Option<f64>) {
        (self.tokens.level, self.requests.as_ref().map(|r| r.level))
    }

    /// The token rate multiplier and the request rate multiplier.
    pub(super) fn scales(&self) -> (f64, f64) {
        (self.ctl.scale, self.req_ctl.scale)
    }

    /// The token level (for tests).
    #[cfg(test)]
    pub(super) fn token_level(&self) -> f64 {
        self.tokens.level
    }

    /// Empties the buckets `kind` names and cuts their rates for a throttle of a request
    /// admitted at `admitted_at` (see `KeyLedger::throttled`); `queued`: requests were
    /// waiting, so the rate drawn was the rate allowed; `refused`: upstream refused the
    /// request, of that many tokens, before running it, and a configured rate is cut only on
    /// evidence (see `Controller::refused`). True when a rate was cut.
    pub(super) fn throttle(
        &mut self,
        now: Instant,
        admitted_at: Instant,
        kind: ThrottleKind,
        queued: bool,
        refused: Option<u64>,
    ) -> bool {
        let m = self;
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
            let measured = m.measured();
            let told = (queued || probing).then_some(measured);
            m.tokens.level = m.tokens.level.min(0.0);
            cut |= match refused {
                Some(tokens) => {
                    let size = tokens as f64 / m.tokens.capacity;
                    let measured = if m.ctl.discovers() {
                        told
                    } else {
                        Some(measured)
                    };
                    m.ctl.refused(now, admitted_at, measured, size)
                }
                None => m.ctl.cut(now, admitted_at, told),
            };
        }
        if cut_requests {
            if m.requests.is_none() {
                if !m.ctl.adapts() {
                    // Adaptation is off: no limit of its own to find.
                    return false;
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
                let measured = m.measured_requests();
                let told = if queued { measured } else { None };
                if let Some(r) = &mut m.requests {
                    r.level = r.level.min(0.0);
                }
                cut |= match (refused, m.req_ctl.discovers()) {
                    (Some(_), false) => {
                        let size = m.requests.as_ref().map_or(0.0, |r| 1.0 / r.capacity);
                        m.req_ctl.refused(now, admitted_at, measured, size)
                    }
                    (Some(_), true) => m.req_ctl.refused(now, admitted_at, told, 0.0),
                    (None, _) => m.req_ctl.cut(now, admitted_at, told),
                };
            }
        }
        if cut {
            // A new step grid from the cut, so the curve's steps line up with it.
            m.step_end = now + m.step;
        }
        cut
    }

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

    /// Where a new meter starts: full buckets, the rates not moved since (no request bucket
    /// learned from a throttle), so a new one in its place would be the same.
    pub(super) fn at_rest(&self, now: Instant) -> bool {
        let unmoved = |c: &Controller| {
            c.scale == 1.0 && matches!(c.phase, Phase::Full | Phase::SlowStart) && !c.remembers(now)
        };
        unmoved(&self.ctl)
            && self.req_ctl.phase == Phase::Full
            && self.tokens.level >= self.tokens.capacity
            && self.requests.as_ref().is_none_or(|r| r.level >= r.capacity)
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
    pub(super) fn advance(&mut self, now: Instant, queued: bool) {
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
    pub(super) fn cost(&self, tokens: u64) -> f64 {
        let t = tokens as f64 / self.tokens.capacity.max(1.0);
        let r = self
            .requests
            .as_ref()
            .map_or(0.0, |r| 1.0 / r.capacity.max(1.0));
        t.max(r)
    }

    pub(super) fn fits(&self, tokens: u64) -> bool {
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
    pub(super) fn time_to_fit(&self, tokens: u64) -> Duration {
        let start = self.updated;
        let mut m = self.clone();
        let mut wait = m.wait_at_current_rate(tokens);
        if wait == 0.0 {
            return Duration::ZERO;
        }
        for _ in 0..MAX_SIM_STEPS {
            if m.full() || m.updated + saturating_secs(wait) <= m.step_end {
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
        saturating_secs((secs * 1e6).ceil() / 1e6 + 1e-6)
    }
}

/// The longest wait [`Meter::time_to_fit`] answers: a debt that takes longer to refill (only
/// a usage report no upstream could make) is past every waiter's deadline anyway.
pub(super) const LONGEST_WAIT: Duration = Duration::from_secs(365 * 86_400);

/// `secs` as a `Duration`, at most [`LONGEST_WAIT`] (NaN too), so a wake-up time added to an
/// `Instant` never overflows.
fn saturating_secs(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).map_or(LONGEST_WAIT, |d| d.min(LONGEST_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn period() -> Duration {
        Duration::from_secs(60)
    }

    fn meter(discover: bool) -> Meter {
        let quota = ResolvedQuota {
            requests: Some(60),
            tokens: 6_000,
            period: period(),
            burndown: 1.0,
            discover,
            daily: None,
        };
        Meter::new(quota, period(), Duration::from_millis(100))
    }

    #[test]
    fn an_absurd_debt_waits_the_longest_wait_and_never_overflows() {
        let start = Instant::now();
        for discover in [false, true] {
            let mut m = meter(discover);
            m.tokens.level = -1.8e19;
            m.ctl.cut(start, start - Duration::from_secs(1), Some(0.0));
            let wait = m.time_to_fit(1);
            assert_eq!(wait, LONGEST_WAIT, "{discover}");
            // A wake-up time of now + the wait is representable.
            assert!(start.checked_add(wait).is_some());
            assert_eq!(m.time_to_fit(u64::MAX), LONGEST_WAIT);
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

    // Paused: the meter starts at `Instant::now()`, which must not move past `start`.
    #[tokio::test(start_paused = true)]
    async fn the_wake_up_time_follows_the_rising_rate() {
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
}
