//! The rate multiplier of one bucket: CUBIC after a throttle, slow start while discovering.

use std::time::Duration;

use tokio::time::Instant;

/// Multiplicative decrease on an upstream throttle (the AWS SDK's β).
const BETA: f64 = 0.7;
/// The lowest multiplier, as a share of the configured quota (or the discovery guess).
pub(super) const FLOOR: f64 = 0.01;
/// The highest multiplier of a discovered quota, as a multiple of its starting guess.
const DISCOVER_CAP: f64 = 10_000.0;
/// A discovered quota that has never been throttled doubles its rate every this many
/// periods while the key is busy (slow start): from the starting guess to ten times it in
/// half a period, so a short burst of load finds its quota before it is over.
const SLOW_START_DOUBLING: f64 = 0.15;
/// A refusal on a configured quota cuts only when another came within this many periods
/// before it (see [`Controller::refused`]).
const STRIKE_PERIODS: f64 = 1.0;
/// A strike on a curve near the rate of its last cut takes it back to this share of it.
const STEP_BACK: f64 = 0.9;
/// A refusal tells the rate it was drawn at only when the key drew at least this share of
/// its current rate over the last period.
const TESTED: f64 = 0.5;
/// A recurring refusal tells the rate is too high only once the key could have drawn this
/// many requests of its size since the last strike or cut.
const TELLING: f64 = 2.0;
/// A cut from the limit on refusals of a lightly used key is undone once this many
/// admissions followed it ...
const UNDO_AFTER: u32 = 10;
/// ... of which at most this share were refused.
const UNDO_REFUSED: f64 = 0.25;

/// Where the rate curve is.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Phase {
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
pub(super) struct Controller {
    pub(super) scale: f64,
    cap: f64,
    pub(super) phase: Phase,
    /// K in seconds; zero turns adaptation off.
    recovery: f64,
    period: f64,
    /// When the last cut happened: throttles of requests admitted before it were caused by
    /// the rate it already corrected, so they do not cut again.
    last_cut: Option<Instant>,
    /// When a refusal last counted (a strike or a cut): refusals of requests admitted
    /// before it are no news.
    last_mark: Option<Instant>,
    /// When the controller began: within its first period the rate drawn still holds the
    /// initial full bucket (see [`Controller::refused`]).
    started: Instant,
    /// A cut from the limit on refusals of a key that drew far less than its rate, to undo
    /// when admissions go on succeeding (see [`Controller::refused`]).
    provisional: Option<Provisional>,
}

/// The curve before a provisional cut, and what happened since.
#[derive(Clone, Debug)]
struct Provisional {
    scale: f64,
    phase: Phase,
    admitted: u32,
    refused: u32,
}

impl Controller {
    pub(super) fn new(discover: bool, recovery: Duration, period: Duration) -> Self {
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
            last_mark: None,
            started: Instant::now(),
            provisional: None,
        }
    }

    /// Whether a past throttle still counts at `now`: a strike that a refusal within
    /// `STRIKE_PERIODS` would turn into a cut, or a cut still within its recovery. A
    /// controller that remembers nothing is one made anew.
    pub(super) fn remembers(&self, now: Instant) -> bool {
        let within = |t: Option<Instant>, secs: f64| {
            t.is_some_and(|t| now.saturating_duration_since(t).as_secs_f64() < secs)
        };
        within(self.last_mark, STRIKE_PERIODS * self.period) || within(self.last_cut, self.recovery)
    }

    /// Whether the rate is being discovered (no configured quota caps it).
    pub(super) fn discovers(&self) -> bool {
        self.cap > 1.0
    }

    /// Whether throttles move the rate at all (`throttle_recovery` is not zero).
    pub(super) fn adapts(&self) -> bool {
        self.recovery != 0.0
    }

    pub(super) fn recovery_duration(&self) -> Duration {
        Duration::from_secs_f64(self.recovery)
    }

    /// Moves the curve on by one step of `dt` seconds.
    pub(super) fn step(&mut self, dt: f64, busy: bool) {
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
    pub(super) fn cut(
        &mut self,
        now: Instant,
        admitted_at: Instant,
        measured: Option<f64>,
    ) -> bool {
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
        self.last_mark = Some(now);
        self.provisional = None;
        true
    }

    /// Upstream refused before running a request admitted at `admitted_at` (a 429, or a
    /// throttle as an event stream's first frame), `measured` the multiplier the key drew at
    /// over the last period. On a configured quota a refusal cuts only on evidence, since a
    /// refusal the gate's own accounting did not expect is more often a skew between its
    /// bucket and upstream's (a period that began earlier upstream, another client's draw,
    /// a refusal for capacity) than a wrong quota:
    ///
    /// - the first refusal after a quiet spell (none counted within a period) is a strike:
    ///   the caller empties the bucket, which brings the gate's account in line with
    ///   upstream's, and the rate stays (a curve back near the rate of its last cut, which
    ///   the refusal has found again, steps back to 0.9 × that rate);
    /// - a refusal of a request admitted after that, within the period, is evidence the
    ///   rate is too high: when the key drew at least half its rate (`TESTED`), the rate is
    ///   cut from the rate drawn, as [`cut`](Self::cut) with a measurement. A refusal
    ///   sooner than two of its requests at the current rate (`TELLING`) tells nothing
    ///   yet (upstream's bucket may still be short from before the last strike or cut): it
    ///   only empties the bucket, and the mark stays, so cuts do not compound within
    ///   seconds (0.7³ of a quota told twice too high at start-up). Within the key's first
    ///   period the rate drawn still holds the initial full bucket, so the cut goes by
    ///   what the refusals show instead, never further than the cut from the rate drawn:
    ///   both found upstream's bucket short of one request while the gate's was empty at
    ///   the first, so the gate's rate exceeds upstream's by about one request (`size`, in
    ///   periods of the quota) per time between them;
    /// - a key that drew far less than its rate learns nothing about it from a refusal
    ///   (upstream refused for something else, typically capacity): the rate is cut from
    ///   the limit at most once per recovery, so such refusals never compound, and the
    ///   cut is undone when admissions go on succeeding (see [`admitted`](Self::admitted)).
    ///
    /// Refusals of requests admitted before the last strike or cut are no news. A
    /// discovered rate has only throttles to go by: each cuts as [`cut`](Self::cut) does
    /// (the caller then passes `measured` only when it means something). True when the
    /// rate was cut.
    pub(super) fn refused(
        &mut self,
        now: Instant,
        admitted_at: Instant,
        measured: Option<f64>,
        size: f64,
    ) -> bool {
        if self.discovers() {
            return self.cut(now, admitted_at, measured);
        }
        if self.recovery == 0.0 || self.last_mark.is_some_and(|m| admitted_at <= m) {
            return false;
        }
        let within = |t: Option<Instant>, secs: f64| {
            t.is_some_and(|t| now.saturating_duration_since(t).as_secs_f64() < secs)
        };
        if !within(self.last_mark, STRIKE_PERIODS * self.period) {
            // A curve near or above the rate of its last cut has found that rate again:
            // a step back just below it, not a cut.
            if let Phase::Cubic { last_max, clock } = &mut self.phase {
                let back = self.recovery * rising_to(STEP_BACK);
                if *clock > back {
                    *clock = back;
                    self.scale = (STEP_BACK * *last_max).clamp(FLOOR, self.cap);
                }
            }
            self.last_mark = Some(now);
            return false;
        }
        let measured = measured.unwrap_or(0.0);
        if measured >= TESTED * self.scale {
            let since = self
                .last_mark
                .map_or(0.0, |m| now.saturating_duration_since(m).as_secs_f64());
            if since * self.scale < TELLING * size * self.period {
                // Too soon to tell: upstream's bucket may still be short from before the
                // last mark. The bucket is emptied; the mark stays where it was, so the
                // refusals that follow are measured from it.
                return false;
            }
            let evident = self.scale - size * self.period / since;
            let cut = self.cut(now, admitted_at, Some(measured));
            if let Phase::Cubic { last_max, clock } = &mut self.phase {
                let starting =
                    now.saturating_duration_since(self.started).as_secs_f64() < self.period;
                if cut && starting && evident > self.scale {
                    // The first period's draw holds the initial full bucket, which says
                    // nothing of the rate upstream sustains: the cut goes by what the two
                    // refusals show, the curve from there back to the rate drawn at the same
                    // time as after a full cut.
                    self.scale = evident.min(*last_max);
                    *clock = self.recovery * rising_to(self.scale / *last_max);
                }
            }
            cut
        } else if !within(self.last_cut, self.recovery) {
            let undo = Provisional {
                scale: self.scale,
                phase: self.phase.clone(),
                admitted: 0,
                refused: 0,
            };
            let cut = self.cut(now, admitted_at, None);
            if cut {
                self.provisional = Some(undo);
            }
            cut
        } else {
            if let Some(p) = &mut self.provisional {
                p.refused += 1;
            }
            self.last_mark = Some(now);
            false
        }
    }

    /// The gate admitted a request. Undoes a provisional cut (see
    /// [`refused`](Self::refused)) once admissions go on succeeding: at least `UNDO_AFTER`
    /// since it, at most a quarter of them refused. Upstream refusing a few requests of a
    /// lightly used key (for capacity, whatever the quota) then costs the rate seconds,
    /// not a recovery; a quota far below the configured one refuses most of them, and the
    /// cut stays.
    pub(super) fn admitted(&mut self) {
        let Some(p) = &mut self.provisional else {
            return;
        };
        p.admitted += 1;
        if p.admitted >= UNDO_AFTER && f64::from(p.refused) <= UNDO_REFUSED * f64::from(p.admitted)
        {
            if let Some(p) = self.provisional.take() {
                self.scale = p.scale;
                self.phase = p.phase;
            }
        }
    }
}

/// Where, in recoveries since its cut, the rising half of the curve is at `ratio` (at most
/// 1) of the rate of that cut: the inverse of `1 + (1 − β) × (t − 1)³`.
fn rising_to(ratio: f64) -> f64 {
    1.0 - ((1.0 - ratio) / (1.0 - BETA)).cbrt()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_stray_refusal_strikes_and_only_a_recurring_one_cuts() {
        let s = Duration::from_secs;
        // Requests of 2 % of the quota each: two take 2.4 s at the full rate.
        let size = 0.02;
        let mut c = Controller::new(false, s(90), period());
        // Past the key's first period.
        let t0 = Instant::now() + s(61);
        // The first refusal after a quiet spell: a strike, the rate stays.
        assert!(!c.refused(t0, t0 - s(1), Some(1.0), size));
        assert_eq!(c.scale, 1.0);
        // Refusals of requests admitted before the strike are no news.
        assert!(!c.refused(t0 + s(1), t0 - s(1), Some(1.0), size));
        assert_eq!(c.scale, 1.0);
        // One admitted after it, 5 s later, while the key drew its rate: a cut, from the
        // rate drawn.
        assert!(c.refused(t0 + s(5), t0 + s(2), Some(0.9), size));
        assert!((c.scale - 0.63).abs() < 1e-9, "{}", c.scale);
        // A refusal 3 s after the cut is too soon to tell (two requests take 3.8 s at
        // 0.63): the rate stays, and so does the mark ...
        assert!(!c.refused(t0 + s(8), t0 + s(6), Some(0.9), size));
        assert!((c.scale - 0.63).abs() < 1e-9, "{}", c.scale);
        // ... so one 4 s after the cut tells, and cuts again from the rate drawn.
        assert!(c.refused(
            t0 + s(9),
            t0 + Duration::from_millis(8_500),
            Some(0.6),
            size
        ));
        assert!((c.scale - 0.42).abs() < 1e-9, "{}", c.scale);

        // Back near the rate of that cut, a strike steps back to 0.9 × it, no lower.
        (0..200).for_each(|_| c.step(0.6, true));
        assert!(c.scale > 0.6, "{}", c.scale);
        assert!(!c.refused(t0 + s(200), t0 + s(199), Some(0.6), size));
        assert!((c.scale - 0.9 * 0.6).abs() < 1e-9, "{}", c.scale);

        // Refusals a period apart are each a strike: none cuts.
        let mut c = Controller::new(false, s(90), period());
        for i in 0..5 {
            let at = t0 + s(61 * i);
            assert!(!c.refused(at, at - s(1), Some(1.0), size));
        }
        assert_eq!(c.scale, 1.0);
    }

    #[test]
    fn in_the_first_period_a_recurring_refusal_cuts_by_what_it_shows() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Told twice the real quota: refused at once, then 6.5 s after the strike by a
        // request of 5 % of the quota, 0.05 × 60 / 6.5 too fast; the cut from the rate
        // drawn (0.7 × 0.6) would go further.
        let mut c = Controller::new(false, s(90), period());
        assert!(!c.refused(t0, t0 - s(1), Some(1.0), 0.05));
        let at = t0 + Duration::from_millis(6_500);
        assert!(c.refused(at, t0 + s(3), Some(0.6), 0.05));
        assert!((c.scale - (1.0 - 3.0 / 6.5)).abs() < 1e-9, "{}", c.scale);
        // From there on the curve of that full cut: back at the rate drawn within the
        // recovery, then probing above it.
        (0..150).for_each(|_| c.step(0.6, true));
        assert!((0.6..0.61).contains(&c.scale), "{}", c.scale);

        // After the first period the draw is a sustained rate: the cut is from it.
        let mut c = Controller::new(false, s(90), period());
        let t1 = t0 + s(61);
        assert!(!c.refused(t1, t1 - s(1), Some(1.0), 0.05));
        assert!(c.refused(t1 + s(40), t1 + s(39), Some(1.0), 0.05));
        assert!((c.scale - 0.7).abs() < 1e-9, "{}", c.scale);
    }

    #[test]
    fn refusals_of_a_rate_far_from_used_cut_at_most_once_per_recovery() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = Controller::new(false, s(90), period());
        // A key drawing 1 % of its rate, refused every few seconds (for capacity, say).
        assert!(!c.refused(t0, t0 - s(1), Some(0.01), 0.02));
        // Recurring: cut from the limit, not from the 1 % drawn ...
        assert!(c.refused(t0 + s(3), t0 + s(2), Some(0.01), 0.02));
        assert!((c.scale - 0.7).abs() < 1e-9, "{}", c.scale);
        // ... and never again within the recovery, however many.
        for i in 2..30 {
            let at = t0 + s(3 * i);
            c.step(3.0, false);
            assert!(!c.refused(at, at - s(1), Some(0.01), 0.02), "{i}");
        }
        assert!(c.scale > 0.7);
        // After it, a recurring refusal may cut once more.
        let at = t0 + s(95);
        assert!(c.refused(at, at - s(1), Some(0.01), 0.02));
    }

    #[test]
    fn a_cut_for_a_lightly_used_key_is_undone_when_admissions_go_on_succeeding() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = Controller::new(false, s(90), period());
        // Capacity refusals of a key drawing 1 % of its rate: a strike, then a cut ...
        assert!(!c.refused(t0, t0 - s(1), Some(0.01), 0.02));
        assert!(c.refused(t0 + s(1), t0 + Duration::from_millis(500), Some(0.01), 0.02));
        assert!((c.scale - 0.7).abs() < 1e-9, "{}", c.scale);
        // ... then ten admissions, two of them refused: the cut is undone.
        for i in 0..10 {
            assert!((c.scale - 0.7).abs() < 1e-9, "{i}: {}", c.scale);
            c.admitted();
            if i % 5 == 4 {
                let at = t0 + s(2 + i);
                assert!(!c.refused(at, at - Duration::from_millis(10), Some(0.01), 0.02));
            }
        }
        assert_eq!((c.scale, c.phase.clone()), (1.0, Phase::Full));

        // A quota far below the configured one refuses most admissions: the cut stays.
        let mut c = Controller::new(false, s(90), period());
        assert!(!c.refused(t0, t0 - s(1), Some(0.1), 0.02));
        assert!(c.refused(t0 + s(1), t0 + Duration::from_millis(500), Some(0.1), 0.02));
        for i in 0..40 {
            c.admitted();
            if i % 4 != 0 {
                let at = t0 + s(2) + Duration::from_millis(100 * i);
                c.refused(at, at - Duration::from_millis(10), Some(0.1), 0.02);
            }
        }
        assert!((c.scale - 0.7).abs() < 1e-9, "{}", c.scale);
    }

    #[test]
    fn a_discovered_rate_cuts_on_every_fresh_refusal() {
        let t0 = Instant::now();
        let mut d = Controller::new(true, period(), period());
        assert!(d.refused(t0, t0 - Duration::from_secs(1), Some(1.0), 0.02));
        assert!((d.scale - 0.7).abs() < 1e-9);
    }
}
