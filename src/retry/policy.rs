//! Backoff and the retry budget.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime},
};

use http::HeaderMap;

use crate::config::{RetryBudget, RetrySettings};

// The classification is Bedrock's wire knowledge; the retry future still imports it here.

/// The server's wait hint: `x-amz-retry-after` (ms), `retry-after-ms` (ms), `Retry-After`
/// (seconds or an HTTP date).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let number = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
    if let Some(ms) = text("x-amz-retry-after").and_then(number) {
        return Some(saturating_secs(ms / 1000.0));
    }
    if let Some(ms) = text("retry-after-ms").and_then(number) {
        return Some(saturating_secs(ms / 1000.0));
    }
    let value = text("retry-after")?;
    if let Some(secs) = number(value) {
        return Some(saturating_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A finite, non-negative number of seconds as a `Duration`; one too large for a `Duration`
/// (a header can say `1e300`) is the longest, which `max_retry_after` then clamps.
fn saturating_secs(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

/// The wait before retry number `retry` (1 for the first retry).
pub(crate) fn delay(settings: &RetrySettings, retry: u32, headers: Option<&HeaderMap>) -> Duration {
    if let Some(hint) = headers.and_then(retry_after) {
        return hint.min(settings.max_retry_after);
    }
    let exp = 2f64.powi(retry.saturating_sub(1).min(62) as i32);
    let ceiling = (settings.base_delay.as_secs_f64() * exp).min(settings.max_delay.as_secs_f64());
    Duration::from_secs_f64(ceiling * fastrand::f64())
}

/// The shared retry budget: the AWS SDK's retry quota.
#[derive(Debug)]
pub(crate) struct RetryBudgetState {
    config: RetryBudget,
    level: AtomicU32,
}

impl RetryBudgetState {
    pub(crate) fn new(config: RetryBudget) -> Self {
        Self {
            level: AtomicU32::new(config.capacity),
            config,
        }
    }

    /// Takes the cost of one retry; false when the budget cannot pay.
    pub(crate) fn withdraw(&self) -> bool {
        let cost = self.config.retry_cost;
        self.level
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| l.checked_sub(cost))
            .is_ok()
    }

    /// A first-try success puts one unit back.
    pub(crate) fn deposit(&self) {
        let cap = self.config.capacity;
        let _ = self
            .level
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                (l < cap).then_some(l + 1)
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn every_retry_after_form_is_read() {
        assert_eq!(
            retry_after(&headers(&[("x-amz-retry-after", "1500")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "250.5")])),
            Some(Duration::from_micros(250_500))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        let later = SystemTime::now() + Duration::from_secs(30);
        let d = retry_after(&headers(&[(
            "retry-after",
            &httpdate::fmt_http_date(later),
        )]))
        .unwrap();
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &past)])),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-3")])), None);
    }

    #[test]
    fn huge_and_odd_wait_hints_saturate_and_are_clamped() {
        let s = settings();
        for (name, value) in [
            ("retry-after", "99999999999999999999"),
            ("retry-after", "1e300"),
            ("x-amz-retry-after", "1e30"),
            ("retry-after-ms", "1e300"),
            ("retry-after-ms", "18446744073709551615999"),
        ] {
            let h = headers(&[(name, value)]);
            assert_eq!(retry_after(&h), Some(Duration::MAX), "{name}: {value}");
            assert_eq!(delay(&s, 1, Some(&h)), s.max_retry_after, "{name}: {value}");
        }
        for value in ["NaN", "inf", "-inf", "-0.5", "1e400", ""] {
            let h = headers(&[("retry-after", value)]);
            assert_eq!(retry_after(&h), None, "{value}");
        }
    }

    fn settings() -> RetrySettings {
        RetrySettings {
            max_attempts: 8,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_capped_ceiling() {
        let s = settings();
        for retry in 1..=10u32 {
            let ceiling = Duration::from_secs((1u64 << (retry - 1)).min(20));
            let samples: Vec<Duration> = (0..500).map(|_| delay(&s, retry, None)).collect();
            assert!(samples.iter().all(|d| *d < ceiling), "retry {retry}");
            // Full jitter spreads over the whole range, not just near the ceiling.
            assert!(samples.iter().any(|d| *d < ceiling / 4), "retry {retry}");
            assert!(
                samples.iter().any(|d| *d > ceiling * 3 / 4),
                "retry {retry}"
            );
        }
        assert_eq!(
            delay(&s, 1, Some(&headers(&[("retry-after", "600")]))),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn the_budget_pays_for_retries_until_empty_and_refills_on_success() {
        let b = RetryBudgetState::new(RetryBudget::new(12, 5));
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw());
        for _ in 0..3 {
            b.deposit();
        }
        assert!(b.withdraw());
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(b.level.load(Ordering::Relaxed), 12);
    }
}
