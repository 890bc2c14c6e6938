//! The emulator's quota state: continuous-refill token buckets per quota key, and the
//! statistics it keeps per key.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::config::EmulatedQuota;

/// Statistics for one quota key (the model id as given in the request path).
///
/// Token counts are in quota tokens where the name says `billed`, and in plain model tokens
/// otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelStats {
    /// Requests that reached the model's quota check or failed before it (all operations but
    /// CountTokens).
    pub requests: u64,
    /// Requests admitted by the quota check.
    pub admitted: u64,
    /// Admitted requests that have settled (finished, failed mid-way or been abandoned).
    pub settled: u64,
    /// Requests refused with "Too many requests".
    pub throttled_rpm: u64,
    /// Requests refused with "Too many tokens".
    pub throttled_tpm: u64,
    /// Requests refused with "Too many tokens per day".
    pub throttled_tpd: u64,
    /// Injected faults of every kind (the sum of the six counters below).
    pub faults: u64,
    /// Injected `503 ServiceUnavailableException`s.
    pub faults_503: u64,
    /// Injected `500 InternalServerException`s.
    pub faults_500: u64,
    /// Injected throttling exceptions inside event streams.
    pub faults_stream_throttle: u64,
    /// Injected throttling exceptions as the first frame of event streams.
    pub faults_stream_throttle_first: u64,
    /// Injected dropped connections.
    pub faults_dropped: u64,
    /// Injected slow responses.
    pub faults_slow: u64,
    /// Requests refused with `400 ValidationException`.
    pub validation_errors: u64,
    /// CountTokens calls (free: never charged).
    pub count_tokens: u64,
    /// Quota tokens charged at settlement: `input + output × burndown`, summed.
    pub tokens_billed: u64,
    /// Input tokens of settled requests.
    pub input_tokens: u64,
    /// Output tokens of settled requests.
    pub output_tokens: u64,
    /// The largest number of requests in flight at once.
    pub max_in_flight: u64,
    /// When the quota check last admitted a request: the moment the last billed work
    /// passed the quota.
    pub last_admitted: Option<Instant>,
}

/// A snapshot of the emulator's statistics, per quota key.
///
/// Returned by [`EmulatorHandle::stats`](crate::emulator::EmulatorHandle::stats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmulatorStats {
    /// Statistics per quota key, by the model id as given in the request path.
    pub models: BTreeMap<String, ModelStats>,
}

impl EmulatorStats {
    /// The statistics of one model id, or zeroes when the emulator never saw it.
    pub fn model(&self, model_id: &str) -> ModelStats {
        self.models.get(model_id).cloned().unwrap_or_default()
    }

    /// All models added together (`max_in_flight` is the largest of any one model,
    /// `last_admitted` the latest).
    pub fn total(&self) -> ModelStats {
        let mut t = ModelStats::default();
        for m in self.models.values() {
            t.requests += m.requests;
            t.admitted += m.admitted;
            t.settled += m.settled;
            t.throttled_rpm += m.throttled_rpm;
            t.throttled_tpm += m.throttled_tpm;
            t.throttled_tpd += m.throttled_tpd;
            t.faults += m.faults;
            t.faults_503 += m.faults_503;
            t.faults_500 += m.faults_500;
            t.faults_stream_throttle += m.faults_stream_throttle;
            t.faults_stream_throttle_first += m.faults_stream_throttle_first;
            t.faults_dropped += m.faults_dropped;
            t.faults_slow += m.faults_slow;
            t.validation_errors += m.validation_errors;
            t.count_tokens += m.count_tokens;
            t.tokens_billed += m.tokens_billed;
            t.input_tokens += m.input_tokens;
            t.output_tokens += m.output_tokens;
            t.max_in_flight = t.max_in_flight.max(m.max_in_flight);
            t.last_admitted = t.last_admitted.max(m.last_admitted);
        }
        t
    }
}

/// What is left in one quota key's buckets at one instant.
///
/// Returned by [`EmulatorHandle::quota`](crate::emulator::EmulatorHandle::quota).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct QuotaSnapshot {
    /// The quota in force for this key.
    pub quota: EmulatedQuota,
    /// Tokens available now in the per-period bucket (at most `quota.tpm`).
    pub tokens_available: f64,
    /// Requests available now, when an RPM limit is configured.
    pub requests_available: Option<f64>,
    /// Tokens available now in the daily bucket, when a TPD limit is configured.
    pub daily_tokens_available: Option<f64>,
    /// Quota tokens reserved by requests in flight.
    pub tokens_reserved: u64,
    /// Requests in flight.
    pub in_flight: u64,
}

/// Why the quota check refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Requests,
    Tokens,
    DailyTokens,
}

/// A continuously refilling token bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    capacity: f64,
    level: f64,
    period: Duration,
    updated: Instant,
}

impl Bucket {
    /// A full bucket whose refill starts at `refill_from` (see `Ledger::new`).
    fn new(capacity: u64, period: Duration, refill_from: Instant) -> Self {
        Bucket {
            capacity: capacity as f64,
            level: capacity as f64,
            period,
            updated: refill_from,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        // Never back: before `refill_from` nothing refills.
        self.updated = self.updated.max(now);
        if self.period.is_zero() {
            self.level = self.capacity;
            return;
        }
        let add = self.capacity * elapsed.as_secs_f64() / self.period.as_secs_f64();
        self.level = (self.level + add).min(self.capacity);
    }

    fn fits(&self, amount: f64) -> bool {
        // A small epsilon absorbs float error from continuous refill.
        self.level + 1e-6 >= amount
    }

    fn take(&mut self, amount: f64) {
        self.level -= amount;
    }

    fn give_back(&mut self, amount: f64) {
        self.level = (self.level + amount).min(self.capacity);
    }
}

#[derive(Debug)]
struct KeyState {
    quota: EmulatedQuota,
    requests: Option<Bucket>,
    tokens: Bucket,
    daily: Option<Bucket>,
    reserved: u64,
    in_flight: u64,
    stats: ModelStats,
}

impl KeyState {
    /// Full buckets that refill from `now + clock_offset` on.
    fn new(quota: EmulatedQuota, now: Instant, clock_offset: Duration) -> Self {
        let day = quota.period.saturating_mul(1440);
        let now = now + clock_offset;
        KeyState {
            quota,
            requests: quota.rpm.map(|r| Bucket::new(r, quota.period, now)),
            tokens: Bucket::new(quota.tpm, quota.period, now),
            daily: quota.tpd.map(|d| Bucket::new(d, day, now)),
            reserved: 0,
            in_flight: 0,
            stats: ModelStats::default(),
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(b) = &mut self.requests {
            b.refill(now);
        }
        self.tokens.refill(now);
        if let Some(b) = &mut self.daily {
            b.refill(now);
        }
    }
}

/// The quota state of every key, shared by all connections.
#[derive(Debug)]
pub(crate) struct Ledger {
    default_quota: EmulatedQuota,
    model_quotas: HashMap<String, EmulatedQuota>,
    keys: Mutex<HashMap<String, KeyState>>,
    /// How far upstream's clock runs behind its clients' (see
    /// `EmulatorBuilder::clock_offset`).
    clock_offset: Duration,
}

impl Ledger {
    pub(crate) fn new(
        default_quota: EmulatedQuota,
        model_quotas: HashMap<String, EmulatedQuota>,
        clock_offset: Duration,
    ) -> Self {
        Ledger {
            default_quota,
            model_quotas,
            keys: Mutex::new(HashMap::new()),
            clock_offset,
        }
    }

    /// A key's state, created (full) on first use.
    fn state<'a>(
        &self,
        keys: &'a mut HashMap<String, KeyState>,
        key: &str,
        now: Instant,
    ) -> &'a mut KeyState {
        keys.entry(key.to_owned())
            .or_insert_with(|| KeyState::new(self.quota_for(key), now, self.clock_offset))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, KeyState>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn quota_for(&self, key: &str) -> EmulatedQuota {
        let base = key.strip_suffix(super::LONG_CONTEXT_SUFFIX);
        self.model_quotas
            .get(key)
            .or_else(|| self.model_quotas.get(base?))
            .copied()
            .unwrap_or(self.default_quota)
    }

    /// Runs `f` on the statistics of `key`.
    pub(crate) fn with_stats<R>(&self, key: &str, f: impl FnOnce(&mut ModelStats) -> R) -> R {
        let now = Instant::now();
        let mut keys = self.lock();
        let state = self.state(&mut keys, key, now);
        f(&mut state.stats)
    }

    /// Reserves one request and `tokens` quota tokens, or says which limit refused.
    pub(crate) fn reserve(
        self: &Arc<Self>,
        key: &str,
        tokens: u64,
    ) -> Result<Reservation, Refusal> {
        let now = Instant::now();
        let mut keys = self.lock();
        let state = self.state(&mut keys, key, now);
        state.refill(now);
        let amount = tokens as f64;
        let refusal = if state.requests.as_ref().is_some_and(|b| !b.fits(1.0)) {
            Some(Refusal::Requests)
        } else if !state.tokens.fits(amount) {
            Some(Refusal::Tokens)
        } else if state.daily.as_ref().is_some_and(|b| !b.fits(amount)) {
            Some(Refusal::DailyTokens)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            match refusal {
                Refusal::Requests => state.stats.throttled_rpm += 1,
                Refusal::Tokens => state.stats.throttled_tpm += 1,
                Refusal::DailyTokens => state.stats.throttled_tpd += 1,
            }
            return Err(refusal);
        }
        if let Some(b) = &mut state.requests {
            b.take(1.0);
        }
        state.tokens.take(amount);
        if let Some(b) = &mut state.daily {
            b.take(amount);
        }
        state.reserved += tokens;
        state.in_flight += 1;
        state.stats.admitted += 1;
        state.stats.last_admitted = Some(Instant::now());
        state.stats.max_in_flight = state.stats.max_in_flight.max(state.in_flight);
        Ok(Reservation {
            ledger: Arc::clone(self),
            key: key.to_owned(),
            reserved: tokens,
            input_tokens: 0,
            settled: false,
        })
    }

    fn settle(&self, key: &str, reserved: u64, input: u64, output: u64, burndown: u64) {
        let now = Instant::now();
        let mut keys = self.lock();
        let Some(state) = keys.get_mut(key) else {
            return;
        };
        state.refill(now);
        let charge = input.saturating_add(output.saturating_mul(burndown));
        // The charge never exceeds the reservation by construction (output ≤ limit), but a
        // larger charge is taken from the buckets all the same.
        let refund = reserved as f64 - charge as f64;
        if refund >= 0.0 {
            state.tokens.give_back(refund);
            if let Some(b) = &mut state.daily {
                b.give_back(refund);
            }
        } else {
            state.tokens.take(-refund);
            if let Some(b) = &mut state.daily {
                b.take(-refund);
            }
        }
        state.reserved = state.reserved.saturating_sub(reserved);
        state.in_flight = state.in_flight.saturating_sub(1);
        let s = &mut state.stats;
        s.settled += 1;
        s.tokens_billed += charge;
        s.input_tokens += input;
        s.output_tokens += output;
    }

    pub(crate) fn snapshot(&self, key: &str) -> QuotaSnapshot {
        let now = Instant::now();
        let mut keys = self.lock();
        let state = self.state(&mut keys, key, now);
        state.refill(now);
        QuotaSnapshot {
            quota: state.quota,
            tokens_available: state.tokens.level,
            requests_available: state.requests.map(|b| b.level),
            daily_tokens_available: state.daily.map(|b| b.level),
            tokens_reserved: state.reserved,
            in_flight: state.in_flight,
        }
    }

    pub(crate) fn stats(&self) -> EmulatorStats {
        let keys = self.lock();
        EmulatorStats {
            models: keys
                .iter()
                .map(|(k, v)| (k.clone(), v.stats.clone()))
                .collect(),
        }
    }
}

/// One admitted request's reservation. Settle it with [`Reservation::settle`]; dropping it
/// unsettled (the client went away) charges the input tokens only.
#[derive(Debug)]
pub(crate) struct Reservation {
    ledger: Arc<Ledger>,
    key: String,
    reserved: u64,
    input_tokens: u64,
    settled: bool,
}

impl Reservation {
    /// Remembers the input tokens, charged if the reservation is dropped unsettled.
    pub(crate) fn with_input(mut self, input_tokens: u64) -> Self {
        self.input_tokens = input_tokens;
        self
    }

    /// Charges `input + output × burndown` and returns the rest of the reservation.
    pub(crate) fn settle(mut self, input: u64, output: u64, burndown: u64) {
        self.settled = true;
        self.ledger
            .settle(&self.key, self.reserved, input, output, burndown);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.ledger
                .settle(&self.key, self.reserved, self.input_tokens, 0, 1);
        }
    }
}
