//! The capacity report: which limit binds per model, and what to ask AWS for.

use std::{fmt, time::Duration};

use super::{record::Summary, ThrottleKind};
use crate::{table::num, Quota, QuotaKey, ThrottleConfig};

/// A quota-increase request asks for at least this multiple of the p95 demand per minute
/// (and never less than the peak).
pub const REQUEST_MARGIN: f64 = 1.2;
/// Demand at this share of a quota counts as reaching it.
const NEAR: f64 = 0.8;

/// Peak and 95th percentile per minute over the whole quota periods of the last sixty (an
/// hour of minutes; the period in progress only while it is the only one), for requests and
/// quota tokens (input plus `max_tokens` × burndown, what Bedrock reserves at admission).
/// A quota with another [`period`](Quota::with_period) is counted per period and scaled to
/// a minute.
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateStats {
    /// The busiest minute's requests.
    pub peak_requests: u64,
    /// The 95th percentile of requests per minute (nearest rank).
    pub p95_requests: u64,
    /// The busiest minute's quota tokens.
    pub peak_tokens: u64,
    /// The 95th percentile of quota tokens per minute (nearest rank).
    pub p95_tokens: u64,
}

impl RateStats {
    pub(crate) fn of(requests: &[u64], tokens: &[u64]) -> Self {
        Self {
            peak_requests: requests.iter().copied().max().unwrap_or(0),
            p95_requests: p95(requests),
            peak_tokens: tokens.iter().copied().max().unwrap_or(0),
            p95_tokens: p95(tokens),
        }
    }
}

fn p95(values: &[u64]) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = (0.95 * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Upstream throttles of one key by the limit they named.
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ThrottleCounts {
    /// "Too many requests" (RPM).
    pub requests: u64,
    /// "Too many tokens" (TPM).
    pub tokens: u64,
    /// "Too many tokens per day".
    pub daily_tokens: u64,
    /// Throttles whose message named no known limit.
    pub unknown: u64,
}

impl ThrottleCounts {
    fn from_array(a: [u64; 4]) -> Self {
        Self {
            requests: a[ThrottleKind::Requests.index()],
            tokens: a[ThrottleKind::Tokens.index()],
            daily_tokens: a[ThrottleKind::DailyTokens.index()],
            unknown: a[ThrottleKind::Unknown.index()],
        }
    }

    /// The count of one class.
    pub fn get(&self, kind: ThrottleKind) -> u64 {
        match kind {
            ThrottleKind::Requests => self.requests,
            ThrottleKind::Tokens => self.tokens,
            ThrottleKind::DailyTokens => self.daily_tokens,
            ThrottleKind::Unknown => self.unknown,
        }
    }

    /// All throttles.
    pub fn total(&self) -> u64 {
        self.requests + self.tokens + self.daily_tokens + self.unknown
    }
}

/// The limit that holds a key back.
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum BindingLimit {
    /// Neither: demand stayed below both quotas and upstream did not throttle.
    None,
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
    /// Tokens per day: upstream refused with "Too many tokens per day".
    DailyTokens,
}

impl fmt::Display for BindingLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindingLimit::None => "none",
            BindingLimit::Requests => "RPM",
            BindingLimit::Tokens => "TPM",
            BindingLimit::DailyTokens => "daily",
        })
    }
}

/// One model's (quota key's) row of a [`CapacityReport`]. Rates are per minute, whatever
/// the quota's period ([`Quota::with_period`]), since AWS grants quotas per minute.
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ModelCapacity {
    /// The model id or inference profile.
    pub key: QuotaKey,
    /// The quota configured for it (for [`Quota::discover`], where discovery started).
    pub quota: Quota,
    /// The rates the gate admits at now ([`ThrottleConfig::effective_quota`]): below the
    /// configured ones after upstream throttles, and for a discovered quota what was found.
    pub effective: Option<Quota>,
    /// The limit that holds the key back.
    pub binding: BindingLimit,
    /// How many quota periods (minutes, unless the quota sets another period) the demand
    /// and grant figures cover (at most 60).
    pub minutes: u64,
    /// What callers asked for per minute, counted as they arrived at the gate.
    pub demand: RateStats,
    /// What the gate admitted per minute.
    pub granted: RateStats,
    /// Upstream throttles by class.
    pub throttles: ThrottleCounts,
    /// Output quota tokens reserved (`max_tokens` × burndown) that responses did not use,
    /// summed over every response that reported its usage.
    pub wasted_output_tokens: u64,
    /// Output quota tokens reserved for those responses.
    pub reserved_output_tokens: u64,
    /// The requests per minute to ask for: the current quota when RPM does not bind
    /// (`None` when none is configured and upstream never refused for requests).
    pub recommended_rpm: Option<u64>,
    /// The tokens per minute to ask for: the current quota when TPM does not bind.
    pub recommended_tpm: u64,
    /// Why, in one line.
    pub reasoning: String,
}

/// Per model: the binding limit, the quota, the observed demand and what a
/// quota-increase request should ask for. From
/// [`ThrottleConfig::capacity_report`]; see the [module docs](super) for an example.
///
/// Its `Display` is a table followed by one line of reasoning per model. With the feature
/// `serde` it implements `serde::Serialize` with its field names (a quota's period as
/// `period_seconds`).
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CapacityReport {
    /// One row per quota key the gate has seen, ordered by key.
    pub rows: Vec<ModelCapacity>,
}

impl CapacityReport {
    /// The row of one quota key.
    pub fn row(&self, key: &QuotaKey) -> Option<&ModelCapacity> {
        self.rows.iter().find(|r| &r.key == key)
    }
}

impl ThrottleConfig {
    /// Which limit binds for every model this configuration has gated, and what to ask AWS
    /// for (see [`diagnosis`](crate::diagnosis)).
    ///
    /// A request asks for `max(p95 demand × 1.2, peak demand)` per minute, rounded up to
    /// two significant digits, of the limit that binds or that demand reaches 80 % of; the
    /// other limit stays as it is. Demand counts quota tokens the Bedrock way (input plus
    /// `max_tokens` × burndown), as Bedrock reserves them at admission; the wasted output
    /// reservation shows how much of that a smaller `max_tokens` would save instead.
    pub fn capacity_report(&self) -> CapacityReport {
        let shared = &self.shared;
        let rows = shared
            .diagnosis
            .keys()
            .into_iter()
            .filter_map(|(key, record)| {
                let q = shared.settings.quota_for(&key)?;
                let mut quota = if q.discover {
                    Quota::discover_from(q.tokens)
                } else {
                    Quota::new(q.requests, q.tokens)
                };
                quota = quota.with_period(q.period).with_burndown(q.burndown);
                let effective = self.effective_quota(&key);
                Some(row(key, quota, effective, record.summary()))
            })
            .collect();
        CapacityReport { rows }
    }
}

/// `x` per `period` as per minute.
fn per_minute(x: f64, period: Duration) -> f64 {
    x * 60.0 / period.as_secs_f64()
}

/// Rounds up to two significant digits.
fn round_up(x: f64) -> u64 {
    if x <= 0.0 {
        return 0;
    }
    let x = x.ceil();
    let digits = x.log10().floor() as i32;
    let unit = 10f64.powi((digits - 1).max(0));
    ((x / unit).ceil() * unit) as u64
}

fn ask(peak: u64, p95: u64) -> u64 {
    round_up((p95 as f64 * REQUEST_MARGIN).max(peak as f64))
}

fn row(key: QuotaKey, quota: Quota, effective: Option<Quota>, mut s: Summary) -> ModelCapacity {
    // Counted per quota period; reported per minute, as AWS grants quotas.
    let scale = |x: u64| per_minute(x as f64, quota.period()).round() as u64;
    for r in [&mut s.demand, &mut s.granted] {
        *r = RateStats {
            peak_requests: scale(r.peak_requests),
            p95_requests: scale(r.p95_requests),
            peak_tokens: scale(r.peak_tokens),
            p95_tokens: scale(r.p95_tokens),
        };
    }
    let throttles = ThrottleCounts::from_array(s.throttles);
    // The token quota: as configured, or as found when discovered.
    let discover = quota.discovers();
    let pm = |x: f64| per_minute(x, quota.period()).round() as u64;
    // A discovered rate is known only once upstream refused for it; before, it is a probe.
    let tpm = if !discover {
        Some(pm(quota.tokens() as f64))
    } else if throttles.tokens + throttles.unknown > 0 {
        effective.map(|e| pm(e.tokens() as f64))
    } else {
        None
    };
    let rpm = match quota.requests() {
        Some(r) => Some(pm(f64::from(r))),
        None if throttles.requests > 0 => effective
            .and_then(|e| e.requests())
            .map(|r| pm(f64::from(r))),
        None => None,
    };
    let t_ratio = tpm.map(|t| s.demand.peak_tokens as f64 / t.max(1) as f64);
    let r_ratio = rpm.map(|r| s.demand.peak_requests as f64 / r.max(1) as f64);

    let binding = if throttles.daily_tokens > 0 {
        BindingLimit::DailyTokens
    } else if throttles.requests > throttles.tokens {
        BindingLimit::Requests
    } else if throttles.tokens > 0 {
        BindingLimit::Tokens
    } else {
        match (r_ratio, t_ratio) {
            (Some(r), t) if r > t.unwrap_or(0.0) && r >= NEAR => BindingLimit::Requests,
            (_, Some(t)) if t >= NEAR => BindingLimit::Tokens,
            _ => BindingLimit::None,
        }
    };

    // The request asks for the demand; a configured quota is kept as the least, a
    // discovered rate (which swings around what upstream allows) is not.
    let floor = |x: Option<u64>| if discover { 0 } else { x.unwrap_or(0) };
    let ask_tokens = ask(s.demand.peak_tokens, s.demand.p95_tokens);
    let tokens_short = binding == BindingLimit::Tokens || t_ratio.is_some_and(|t| t >= NEAR);
    let recommended_tpm = match tpm {
        Some(_) if tokens_short => ask_tokens.max(floor(tpm)),
        Some(t) => t,
        None => ask_tokens,
    };
    let requests_short = binding == BindingLimit::Requests || r_ratio.is_some_and(|r| r >= NEAR);
    let recommended_rpm = match rpm {
        Some(r) if requests_short => {
            Some(
                ask(s.demand.peak_requests, s.demand.p95_requests)
                    .max(if quota.requests().is_some() { r } else { 0 }),
            )
        }
        None if throttles.requests > 0 => Some(ask(s.demand.peak_requests, s.demand.p95_requests)),
        other => other,
    };
    let tpm_text = tpm.map_or("a TPM quota not found yet".to_owned(), |t| {
        format!("{} TPM", num(t))
    });

    let mut reasoning = match binding {
        BindingLimit::DailyTokens => format!(
            "the daily token quota ran out{}: ask for more tokens per day; raising the per-minute rates would not help",
            throttled(throttles.daily_tokens, "Too many tokens per day")
        ),
        BindingLimit::Tokens => format!(
            "TPM binds: demand peaked at {} TPM (p95 {}) against {}{}; ask for {} TPM",
            num(s.demand.peak_tokens),
            num(s.demand.p95_tokens),
            tpm_text,
            throttled(throttles.tokens, "Too many tokens"),
            num(recommended_tpm),
        ),
        BindingLimit::Requests => format!(
            "RPM binds: demand peaked at {} RPM (p95 {}) against {}{}; ask for {} RPM",
            num(s.demand.peak_requests),
            num(s.demand.p95_requests),
            rpm.map_or("no known RPM".to_owned(), |r| format!("{} RPM", num(r))),
            throttled(throttles.requests, "Too many requests"),
            recommended_rpm.map_or("-".to_owned(), num),
        ),
        BindingLimit::None => format!(
            "nothing binds: demand peaked at {} RPM and {} TPM ({}); no increase needed",
            num(s.demand.peak_requests),
            num(s.demand.peak_tokens),
            t_ratio.map_or("no token throttle yet, so the TPM quota is not known: the ask is the demand".to_owned(), |t| {
                format!("{:.0} % of the TPM quota", 100.0 * t)
            }),
        ),
    };
    match binding {
        BindingLimit::Tokens if !requests_short => reasoning.push_str(", RPM as it is"),
        BindingLimit::Requests if tpm.is_none() => {
            reasoning.push_str(", TPM not found yet (its ask is the demand)")
        }
        BindingLimit::Requests if !tokens_short => reasoning.push_str(", TPM as it is"),
        BindingLimit::Tokens | BindingLimit::Requests => {
            reasoning.push_str(", and demand reaches the other quota too: raise both")
        }
        _ => {}
    }
    let below = !discover
        && match binding {
            BindingLimit::Tokens => t_ratio.is_some_and(|t| t < 1.0) && throttles.tokens > 0,
            BindingLimit::Requests => {
                quota.requests().is_some()
                    && r_ratio.is_some_and(|r| r < 1.0)
                    && throttles.requests > 0
            }
            _ => false,
        };
    if below {
        reasoning.push_str(
            "; upstream refused below the configured quota, so the account's applied quota is lower: check it",
        );
    }
    if s.reserved_output_tokens > 0 && matches!(binding, BindingLimit::Tokens) {
        let wasted = s.wasted_output_tokens as f64 / s.reserved_output_tokens as f64;
        if wasted >= 0.5 {
            reasoning.push_str(&format!(
                " ({:.0} % of the reserved output went unused: a smaller max_tokens would ask for less)",
                100.0 * wasted
            ));
        }
    }

    ModelCapacity {
        key,
        quota,
        effective,
        binding,
        minutes: s.minutes,
        demand: s.demand,
        granted: s.granted,
        throttles,
        wasted_output_tokens: s.wasted_output_tokens,
        reserved_output_tokens: s.reserved_output_tokens,
        recommended_rpm,
        recommended_tpm,
        reasoning,
    }
}

fn throttled(n: u64, what: &str) -> String {
    if n == 0 {
        String::new()
    } else {
        let s = if n == 1 { "" } else { "s" };
        format!(", {n} \"{what}\" throttle{s}")
    }
}

impl fmt::Display for CapacityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<u64>| v.map_or("-".to_owned(), num);
        let header = [
            "model",
            "binds",
            "quota RPM",
            "quota TPM",
            "peak RPM",
            "peak TPM",
            "p95 TPM",
            "peak granted TPM",
            "throttles rpm/tpm/day/?",
            "wasted output",
            "ask RPM",
            "ask TPM",
        ];
        let rows: Vec<[String; 12]> = self
            .rows
            .iter()
            .map(|r| {
                let rpm = r
                    .quota
                    .requests()
                    .map(|q| per_minute(f64::from(q), r.quota.period()).round() as u64);
                let tpm = per_minute(r.quota.tokens() as f64, r.quota.period()).round() as u64;
                let t = &r.throttles;
                [
                    r.key.to_string(),
                    r.binding.to_string(),
                    opt(rpm),
                    if r.quota.discovers() {
                        format!(
                            "discover ({})",
                            num(r.effective.map_or(tpm, |e| e.tokens()))
                        )
                    } else {
                        num(tpm)
                    },
                    num(r.demand.peak_requests),
                    num(r.demand.peak_tokens),
                    num(r.demand.p95_tokens),
                    num(r.granted.peak_tokens),
                    format!(
                        "{}/{}/{}/{}",
                        t.requests, t.tokens, t.daily_tokens, t.unknown
                    ),
                    num(r.wasted_output_tokens),
                    opt(r.recommended_rpm),
                    num(r.recommended_tpm),
                ]
            })
            .collect();
        crate::table::write(f, header, &rows, 2)?;
        for r in &self.rows {
            writeln!(f, "{}: {}", r.key, r.reasoning)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_up_to_two_significant_digits() {
        assert_eq!(round_up(1_234_567.0), 1_300_000);
        assert_eq!(round_up(1_000_000.0), 1_000_000);
        assert_eq!(round_up(47.2), 48);
        assert_eq!(round_up(0.0), 0);
        assert_eq!(ask(100, 90), 110);
        assert_eq!(p95(&[1, 2, 3]), 3);
        assert_eq!(p95(&(1..=100).collect::<Vec<_>>()), 95);
        assert_eq!(num(1_234_567), "1,234,567");
        assert_eq!(num(12), "12");
    }

    fn summary(peak_r: u64, peak_t: u64, throttles: [u64; 4]) -> Summary {
        let rates = RateStats {
            peak_requests: peak_r,
            p95_requests: peak_r,
            peak_tokens: peak_t,
            p95_tokens: peak_t,
        };
        Summary {
            demand: rates,
            granted: rates,
            minutes: 10,
            throttles,
            wasted_output_tokens: 0,
            reserved_output_tokens: 0,
        }
    }

    #[test]
    fn the_binding_limit_gets_the_increase_and_the_other_stays() {
        let k = QuotaKey::new(Some("m"), None);
        let q = Quota::new(50, 400_000);
        let r = row(k.clone(), q, None, summary(20, 1_000_000, [0; 4]));
        assert_eq!(r.binding, BindingLimit::Tokens);
        assert_eq!(r.recommended_tpm, 1_200_000);
        assert_eq!(r.recommended_rpm, Some(50));
        let r = row(k.clone(), q, None, summary(100, 100_000, [3, 0, 0, 0]));
        assert_eq!(r.binding, BindingLimit::Requests);
        assert_eq!((r.recommended_rpm, r.recommended_tpm), (Some(120), 400_000));
        let r = row(k.clone(), q, None, summary(10, 100_000, [0; 4]));
        assert_eq!(r.binding, BindingLimit::None);
        assert_eq!((r.recommended_rpm, r.recommended_tpm), (Some(50), 400_000));
        let r = row(k.clone(), q, None, summary(10, 100_000, [0, 5, 2, 0]));
        assert_eq!(r.binding, BindingLimit::DailyTokens);
        // No RPM configured, but upstream refused for requests: it has one.
        let r = row(
            k.clone(),
            Quota::tokens_per_minute(400_000),
            None,
            summary(70, 100_000, [4, 0, 0, 0]),
        );
        assert_eq!(r.binding, BindingLimit::Requests);
        assert_eq!(r.recommended_rpm, Some(84));
        let report = CapacityReport { rows: vec![r] };
        // A discovered quota never throttled for tokens: its rate is a probe, not a quota.
        let probe = Quota::discover_from(50_000_000);
        let r = row(k, probe, Some(probe), summary(10, 90_000, [0; 4]));
        assert_eq!(r.binding, BindingLimit::None);
        assert_eq!(r.recommended_tpm, 110_000);
        assert!(r.reasoning.contains("not known"), "{}", r.reasoning);
        let text = report.to_string();
        assert!(text.contains("RPM binds"), "{text}");
        assert!(text.lines().next().unwrap().starts_with("model"), "{text}");
    }
}
