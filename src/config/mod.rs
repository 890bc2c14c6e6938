//! The throttle configuration and the state every layer built from it shares; its builder
//! is in `builder`.

mod builder;

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use crate::{
    estimate::{
        default_output_limit, limits::UNKNOWN_MODEL_OUTPUT_LIMIT, Calibration, TokenEstimator,
    },
    keys::{canonical, KeyTable},
    ledger::Registry,
    quota::{default_burndown, Quota, ResolvedQuota},
    retry::RetryBudgetState,
    telemetry::Telemetry,
    tenant::TenantSettings,
    ContextWindow, QuotaKey,
};

pub use self::builder::ThrottleConfigBuilder;

/// Bedrock's largest request body, the default body limit.
pub const BEDROCK_MAX_BODY_BYTES: usize = 25_000_000;

/// The default of [`ThrottleConfigBuilder::max_queued`]: requests that may wait per key.
pub const DEFAULT_MAX_QUEUED: usize = 1_024;

/// The default of [`ThrottleConfigBuilder::max_keys`]: models without a quota of their own
/// that hold state at once.
pub const DEFAULT_MAX_KEYS: usize = 1_024;

/// Backoff retry settings, read by the retry layer.
#[derive(Clone, Debug)]
pub(crate) struct RetrySettings {
    pub(crate) max_attempts: u32,
    pub(crate) base_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) max_retry_after: Duration,
}

/// A retry budget, as the AWS SDK's retry quota: a bucket of `capacity` units; each retry
/// takes `retry_cost`, each request that succeeds at its first attempt puts one back. When
/// the bucket cannot pay for a retry, the caller gets the failure instead, so a storm of
/// failures does not multiply the load upstream.
///
/// ```
/// use bedrock_throttle::{Quota, RetryBudget, ThrottleConfig};
///
/// let cfg = ThrottleConfig::builder()
///     .quota(Quota::tokens_per_minute(400_000))
///     .retry_budget(RetryBudget::new(100, 5))
///     .build()
///     .unwrap();
/// # let _ = cfg;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBudget {
    pub(crate) capacity: u32,
    pub(crate) retry_cost: u32,
}

impl RetryBudget {
    /// A budget of `capacity` units, `retry_cost` per retry.
    pub fn new(capacity: u32, retry_cost: u32) -> Self {
        Self {
            capacity,
            retry_cost,
        }
    }
}

impl Default for RetryBudget {
    /// The AWS SDK's values: 500 units, 5 per retry.
    fn default() -> Self {
        Self::new(500, 5)
    }
}

/// Everything the configuration fixes, immutable once built.
#[derive(Debug)]
pub(crate) struct Settings {
    default_quota: Option<Quota>,
    model_quotas: HashMap<String, Quota>,
    /// Quotas of models' 1M-token context variant.
    long_context_quotas: HashMap<String, Quota>,
    reserved_quotas: HashMap<String, Quota>,
    burndowns: HashMap<String, f64>,
    pub(crate) retry: RetrySettings,
    pub(crate) max_wait: Duration,
    pub(crate) body_limit: usize,
    pub(crate) body_timeout: Duration,
    pub(crate) read_ahead_timeout: Duration,
    pub(crate) throttle_recovery: Option<Duration>,
    pub(crate) headroom: Duration,
    pub(crate) tenants: TenantSettings,
}

/// Where the quota of a model id comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QuotaName<'a> {
    /// A model quota names it exactly.
    Own,
    /// A model quota names the part of its ARN after the last `/`.
    Tail(&'a str),
    /// The default quota.
    Default,
}

impl Settings {
    /// Where the quota of `model` comes from (see [`quota_for`](Self::quota_for)).
    pub(crate) fn quota_name<'a>(&self, model: &'a str) -> QuotaName<'a> {
        let configured =
            |m: &str| self.model_quotas.contains_key(m) || self.long_context_quotas.contains_key(m);
        if configured(model) {
            return QuotaName::Own;
        }
        match model.rsplit_once('/') {
            Some((_, tail)) if configured(tail) => QuotaName::Tail(tail),
            _ => QuotaName::Default,
        }
    }

    /// The quota for `key`: the model's own, else the ARN's resource name's, else the default.
    /// A 1M-context key looks for a [long-context quota](ThrottleConfigBuilder::long_context_quota)
    /// first and otherwise gets the standard one's numbers, as a bucket of its own. A
    /// reserved-tier key gets only its model's `reserved_quota` (found the same way).
    pub(crate) fn quota_for(&self, key: &QuotaKey) -> Option<ResolvedQuota> {
        let model = key.model();
        fn find<'q>(quotas: &'q HashMap<String, Quota>, model: Option<&str>) -> Option<&'q Quota> {
            let m = model?;
            quotas.get(m).or_else(|| {
                let (_, tail) = m.rsplit_once('/')?;
                quotas.get(tail)
            })
        }
        let quota = if key.is_reserved() {
            find(&self.reserved_quotas, model)?
        } else {
            let long = match key.context() {
                ContextWindow::OneMillion => find(&self.long_context_quotas, model),
                _ => None,
            };
            long.or_else(|| find(&self.model_quotas, model))
                .or(self.default_quota.as_ref())?
        };
        Some(ResolvedQuota {
            requests: quota.requests,
            tokens: quota.tokens,
            period: quota.period,
            burndown: self.burndown_for(model, quota),
            discover: quota.discover,
            daily: quota.tokens_per_day,
        })
    }

    fn burndown_for(&self, model: Option<&str>, quota: &Quota) -> f64 {
        if let Some(b) = quota.burndown {
            return b;
        }
        match model {
            Some(m) => self
                .burndowns
                .get(m)
                .copied()
                .unwrap_or_else(|| default_burndown(m)),
            None => 1.0,
        }
    }
}

/// The state every layer and client built from one configuration shares.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) ledger: Registry,
    pub(crate) retry_budget: Option<RetryBudgetState>,
    pub(crate) estimator: Arc<dyn TokenEstimator>,
    pub(crate) calibration: Calibration,
    /// Places for waiting requests under [`Overload::Backpressure`].
    pub(crate) waiting_places: Option<Arc<tokio::sync::Semaphore>>,
    pub(crate) telemetry: Telemetry,
    pub(crate) diagnosis: crate::diagnosis::Recorder,
    /// Which models without a quota of their own hold state (see [`crate::keys`]).
    pub(crate) keys: KeyTable,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("settings", &self.settings)
            .field("estimator", &self.estimator)
            .field("calibration", &self.calibration)
            .finish_non_exhaustive()
    }
}

/// The throttle's configuration, and a handle on the one budget it governs.
///
/// Build it with [`ThrottleConfig::builder`]. Everything made from one `ThrottleConfig`, or
/// from its clones, spends from the same quotas: two `BedrockThrottleLayer`s built from it
/// admit together no more than one would. Cloning never creates capacity; for an
/// independent budget, build a second configuration.
///
/// ```
/// use std::time::Duration;
/// use bedrock_throttle::{Quota, ThrottleConfig};
///
/// let cfg = ThrottleConfig::builder()
///     .quota(Quota::tokens_per_minute(200_000))
///     .model_quota("anthropic.claude-3-5-sonnet-20240620-v1:0", Quota::new(50, 400_000))
///     .max_attempts(6)
///     .base_delay(Duration::from_millis(500))
///     .max_delay(Duration::from_secs(20))
///     .max_wait(Duration::from_secs(90))
///     .build()?;
/// # Ok::<(), bedrock_throttle::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ThrottleConfig {
    pub(crate) shared: Arc<Shared>,
}

impl ThrottleConfig {
    /// A builder with the defaults listed on [`ThrottleConfigBuilder`].
    pub fn builder() -> ThrottleConfigBuilder {
        ThrottleConfigBuilder::default()
    }

    /// The rates the gate admits `key` at now, as a quota per the configured period
    /// (rounded): the configured numbers until upstream throttles, less after, and for a
    /// [`Quota::discover`] the capacity found so far. `None` until the key's first request.
    ///
    /// ```
    /// use bedrock_throttle::{Quota, QuotaKey, ThrottleConfig};
    ///
    /// let cfg = ThrottleConfig::builder().quota(Quota::new(50, 400_000)).build()?;
    /// assert_eq!(cfg.effective_quota(&QuotaKey::new(Some("m"), None)), None);
    /// # Ok::<(), bedrock_throttle::ConfigError>(())
    /// ```
    pub fn effective_quota(&self, key: &QuotaKey) -> Option<Quota> {
        let key = canonical(key);
        let configured = self.shared.settings.quota_for(&key)?;
        let ledger = self.shared.ledger.get(&key)?;
        let (tokens, requests) = ledger.rates();
        Some(Quota {
            requests: requests.map(|r| r.round().max(1.0) as u32),
            tokens: tokens.round().max(1.0) as u64,
            period: configured.period,
            burndown: Some(configured.burndown),
            discover: configured.discover,
            tokens_per_day: configured.daily,
        })
    }

    /// A snapshot of every quota key used so far: its configured and current quota, queue,
    /// counters and calibration. See [`ThrottleStats`](crate::ThrottleStats).
    pub fn stats(&self) -> crate::ThrottleStats {
        crate::stats::collect(self)
    }
}

/// The output limit the gate assumes for a request nobody estimated: the model's default,
/// or the table's value for an unknown model.
pub(crate) fn fallback_output_limit(model: Option<&str>) -> u64 {
    model.map_or(UNKNOWN_MODEL_OUTPUT_LIMIT, default_output_limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(b: ThrottleConfigBuilder) -> String {
        b.build().unwrap_err().to_string()
    }

    #[test]
    fn impossible_configurations_are_refused_with_a_reason() {
        let q = Quota::tokens_per_minute(1000);
        assert!(err(ThrottleConfig::builder()).contains("no quota configured"));
        assert!(
            err(ThrottleConfig::builder().quota(Quota::new(10, 0))).contains("token quota is 0")
        );
        assert!(
            err(ThrottleConfig::builder().quota(Quota::new(0, 10))).contains("request quota is 0")
        );
        assert!(
            err(ThrottleConfig::builder().model_quota("m", Quota::new(None, 0)))
                .contains("the quota of m")
        );
        assert!(
            err(ThrottleConfig::builder().quota(q.with_period(Duration::ZERO)))
                .contains("period is zero")
        );
        assert!(
            err(ThrottleConfig::builder().quota(q.with_burndown(f64::NAN))).contains("burndown")
        );
        assert!(
            err(ThrottleConfig::builder().quota(q).burndown("m", -1.0)).contains("burndown of m")
        );
        assert!(err(ThrottleConfig::builder().quota(q).max_attempts(0)).contains("max_attempts"));
        assert!(err(ThrottleConfig::builder()
            .quota(q)
            .base_delay(Duration::from_secs(5))
            .max_delay(Duration::from_secs(1)))
        .contains("shorter than base_delay"));
        assert!(
            err(ThrottleConfig::builder().quota(q).max_wait(Duration::ZERO)).contains("max_wait")
        );
        assert!(err(ThrottleConfig::builder().quota(q).body_limit(0)).contains("body_limit"));
        assert!(err(ThrottleConfig::builder()
            .quota(q)
            .retry_budget(RetryBudget::new(1, 5)))
        .contains("retry budget"));
        assert!(err(ThrottleConfig::builder().model_quota("", q)).contains("empty model id"));
        assert!(err(ThrottleConfig::builder().quota(q).max_keys(0)).contains("max_keys"));
        assert!(err(ThrottleConfig::builder()
            .quota(Quota::discover())
            .throttle_recovery(Duration::ZERO))
        .contains("discovered quota"));
    }

    #[test]
    fn quota_resolution_prefers_the_model_then_the_arn_tail_then_the_default() {
        let cfg = ThrottleConfig::builder()
            .quota(Quota::tokens_per_minute(1_000))
            .model_quota(
                "us.anthropic.claude-sonnet-4-20250514-v1:0",
                Quota::new(20, 2_000),
            )
            .model_quota(
                "meta.llama3-70b-instruct-v1:0",
                Quota::new(None, 3_000).with_burndown(2.0),
            )
            .burndown("amazon.nova-pro-v1:0", 3.0)
            .build()
            .unwrap();
        let s = &cfg.shared.settings;
        let q = |m: &str| s.quota_for(&QuotaKey::new(Some(m), None)).unwrap();
        assert_eq!(
            q("us.anthropic.claude-sonnet-4-20250514-v1:0").tokens,
            2_000
        );
        assert_eq!(
            q("us.anthropic.claude-sonnet-4-20250514-v1:0").burndown,
            5.0
        );
        assert_eq!(
            q("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-20250514-v1:0")
                .requests,
            Some(20)
        );
        assert_eq!(q("meta.llama3-70b-instruct-v1:0").burndown, 2.0);
        assert_eq!(q("amazon.nova-pro-v1:0").burndown, 3.0);
        assert_eq!(q("amazon.nova-pro-v1:0").tokens, 1_000);
        assert_eq!(s.quota_for(&QuotaKey::default()).unwrap().burndown, 1.0);
        // A 1M-context key without a long-context quota gets the standard numbers.
        let long = |m: &str| {
            let key = QuotaKey::new(Some(m), None).with_context(ContextWindow::OneMillion);
            s.quota_for(&key).unwrap()
        };
        assert_eq!(
            long("us.anthropic.claude-sonnet-4-20250514-v1:0").tokens,
            2_000
        );
        let with_long = ThrottleConfig::builder()
            .model_quota("m", Quota::new(20, 2_000))
            .long_context_quota("m", Quota::tokens_per_minute(500))
            .build()
            .unwrap();
        let s2 = &with_long.shared.settings;
        let key = QuotaKey::new(Some("m"), None);
        assert_eq!(s2.quota_for(&key).unwrap().tokens, 2_000);
        let key = key.with_context(ContextWindow::OneMillion);
        assert_eq!(
            s2.quota_for(&key).map(|q| (q.requests, q.tokens)),
            Some((None, 500))
        );
        assert!(
            err(ThrottleConfig::builder().long_context_quota("m", Quota::tokens_per_minute(0)))
                .contains("1M-context quota of m")
        );

        use QuotaName::*;
        assert_eq!(s.quota_name("meta.llama3-70b-instruct-v1:0"), Own);
        assert_eq!(
            s.quota_name("arn:aws:bedrock:us-east-1:1:application-inference-profile/meta.llama3-70b-instruct-v1:0"),
            Tail("meta.llama3-70b-instruct-v1:0")
        );
        assert_eq!(s.quota_name("x/invented"), Default);

        // A quota configured under a foundation model's or profile's ARN is keyed as its id,
        // as requests are.
        let arn = ThrottleConfig::builder()
            .model_quota(
                "arn:aws:bedrock:us-west-2::foundation-model/amazon.nova-pro-v1:0",
                Quota::tokens_per_minute(7),
            )
            .build()
            .unwrap();
        assert_eq!(arn.shared.settings.quota_name("amazon.nova-pro-v1:0"), Own);

        let no_default = ThrottleConfig::builder()
            .model_quota("m", Quota::tokens_per_minute(5))
            .build()
            .unwrap();
        assert_eq!(
            no_default
                .shared
                .settings
                .quota_for(&QuotaKey::new(Some("other"), None)),
            None
        );
    }
}
