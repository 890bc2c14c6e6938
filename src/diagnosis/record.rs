//! Demand, grant and throttle counts of each quota key per quota period (a minute, unless
//! the quota counts over another period) over the last sixty periods.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::time::Instant;

use super::{report::RateStats, ThrottleKind};
use crate::QuotaKey;

/// Periods kept: the last sixty (an hour of minutes) and the one in progress.
const SLOTS: u64 = 61;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The records of every key one configuration has gated.
#[derive(Debug)]
pub(crate) struct Recorder {
    start: Instant,
    keys: Mutex<HashMap<QuotaKey, Arc<KeyRecord>>>,
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// The record of `key`, created on first use with slots of one quota `period`.
    pub(crate) fn key(&self, key: &QuotaKey, period: Duration) -> Arc<KeyRecord> {
        lock(&self.keys)
            .entry(key.clone())
            .or_insert_with(|| Arc::new(KeyRecord::new(self.start, period)))
            .clone()
    }

    /// Forgets `key` (evicted at rest: see [`crate::keys`]).
    pub(crate) fn remove(&self, key: &QuotaKey) {
        lock(&self.keys).remove(key);
    }

    /// Every key recorded so far, in a stable order.
    pub(crate) fn keys(&self) -> Vec<(QuotaKey, Arc<KeyRecord>)> {
        let mut keys: Vec<_> = lock(&self.keys)
            .iter()
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        keys.sort_by_key(|k| k.0.to_string());
        keys
    }
}

/// One minute's counts.
#[derive(Clone, Debug, Default)]
struct Slot {
    minute: u64,
    demand_requests: u64,
    demand_tokens: u64,
    granted_requests: u64,
    granted_tokens: u64,
}

#[derive(Debug, Default)]
struct Window {
    slots: VecDeque<Slot>,
    first_minute: Option<u64>,
    throttles: [u64; 4],
    wasted_output_tokens: u64,
    reserved_output_tokens: u64,
}

impl Window {
    fn slot(&mut self, minute: u64) -> &mut Slot {
        self.first_minute.get_or_insert(minute);
        if self.slots.back().is_none_or(|s| s.minute < minute) {
            self.slots.push_back(Slot {
                minute,
                ..Slot::default()
            });
        }
        while self
            .slots
            .front()
            .is_some_and(|s| s.minute + SLOTS <= minute)
        {
            self.slots.pop_front();
        }
        // Minutes only grow (one clock), so the slot is the last one.
        self.slots.back_mut().expect("a slot was just pushed")
    }
}

/// One key's counts, updated by the gate.
#[derive(Debug)]
pub(crate) struct KeyRecord {
    start: Instant,
    period: Duration,
    window: Mutex<Window>,
}

/// What [`KeyRecord::summary`] reads.
#[derive(Clone, Debug)]
pub(crate) struct Summary {
    pub(crate) demand: RateStats,
    pub(crate) granted: RateStats,
    pub(crate) minutes: u64,
    pub(crate) throttles: [u64; 4],
    pub(crate) wasted_output_tokens: u64,
    pub(crate) reserved_output_tokens: u64,
}

impl KeyRecord {
    fn new(start: Instant, period: Duration) -> Self {
        Self {
            start,
            period: period.max(Duration::from_millis(1)),
            window: Mutex::new(Window::default()),
        }
    }

    /// The number of the period in progress.
    fn minute(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        (elapsed.as_nanos() / self.period.as_nanos()) as u64
    }

    /// An attempt arrived asking for `tokens` quota tokens.
    pub(crate) fn demand(&self, tokens: u64) {
        let m = self.minute();
        let mut w = lock(&self.window);
        let s = w.slot(m);
        s.demand_requests += 1;
        s.demand_tokens = s.demand_tokens.saturating_add(tokens);
    }

    /// An attempt was admitted with `tokens` quota tokens reserved.
    pub(crate) fn granted(&self, tokens: u64) {
        let m = self.minute();
        let mut w = lock(&self.window);
        let s = w.slot(m);
        s.granted_requests += 1;
        s.granted_tokens = s.granted_tokens.saturating_add(tokens);
    }

    /// Upstream throttled an attempt of this key.
    pub(crate) fn throttled(&self, kind: ThrottleKind) {
        lock(&self.window).throttles[kind.index()] += 1;
    }

    /// A response reported its usage: `reserved` output quota tokens were held for it,
    /// `used` of them were spent.
    pub(crate) fn output(&self, reserved: u64, used: u64) {
        let mut w = lock(&self.window);
        w.reserved_output_tokens = w.reserved_output_tokens.saturating_add(reserved);
        w.wasted_output_tokens =
            (w.wasted_output_tokens).saturating_add(reserved.saturating_sub(used));
    }

    /// Peak and p95 per period over the whole periods of the last sixty (the period in
    /// progress only while there is no whole one).
    pub(crate) fn summary(&self) -> Summary {
        let now = self.minute();
        let w = lock(&self.window);
        let first = w.first_minute.unwrap_or(now);
        // Whole minutes since the key was first used, at most an hour of them.
        let (from, to) = if now > first {
            (first.max(now.saturating_sub(SLOTS - 1)), now - 1)
        } else {
            (now, now)
        };
        let minutes = to - from + 1;
        let series = |f: fn(&Slot) -> u64| -> Vec<u64> {
            (from..=to)
                .map(|m| w.slots.iter().find(|s| s.minute == m).map_or(0, f))
                .collect()
        };
        Summary {
            demand: RateStats::of(&series(|s| s.demand_requests), &series(|s| s.demand_tokens)),
            granted: RateStats::of(
                &series(|s| s.granted_requests),
                &series(|s| s.granted_tokens),
            ),
            minutes,
            throttles: w.throttles,
            wasted_output_tokens: w.wasted_output_tokens,
            reserved_output_tokens: w.reserved_output_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn whole_minutes_of_the_last_hour_give_peak_and_p95() {
        let r = KeyRecord::new(Instant::now(), MINUTE);
        // Minute m: m + 1 requests of 100 tokens, half of them admitted.
        for m in 0..80u64 {
            for i in 0..=m {
                r.demand(100);
                if i % 2 == 0 {
                    r.granted(100);
                }
            }
            tokio::time::advance(MINUTE).await;
        }
        let s = r.summary();
        // Minute 80 is in progress and empty: minutes 20..=79 count.
        assert_eq!(s.minutes, 60);
        assert_eq!(s.demand.peak_requests, 80);
        assert_eq!(s.demand.peak_tokens, 8_000);
        // Nearest rank: the 57th of 21..=80.
        assert_eq!(s.demand.p95_requests, 77);
        assert_eq!(s.granted.peak_requests, 40);
        r.throttled(ThrottleKind::Tokens);
        r.output(1_000, 300);
        r.output(100, 200);
        let s = r.summary();
        assert_eq!(s.throttles, [0, 1, 0, 0]);
        assert_eq!(
            (s.reserved_output_tokens, s.wasted_output_tokens),
            (1_100, 700)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_minute_counts_while_it_is_the_only_one() {
        let r = KeyRecord::new(Instant::now(), MINUTE);
        r.demand(5);
        let s = r.summary();
        assert_eq!((s.minutes, s.demand.peak_tokens), (1, 5));
    }
}
