//! The builder of a [`ThrottleConfig`]: its settings, their defaults and checks.

use std::{collections::HashMap, sync::Arc, time::Duration};

use super::{
    RetryBudget, RetrySettings, Settings, Shared, ThrottleConfig, BEDROCK_MAX_BODY_BYTES,
    DEFAULT_MAX_KEYS, DEFAULT_MAX_QUEUED,
};
use crate::{
    bedrock::model_id::quota_model_id,
    estimate::{Calibration, HeuristicEstimator, TokenEstimator},
    keys::KeyTable,
    ledger::{Ledger, OutagePolicy, Registry},
    quota::Quota,
    retry::RetryBudgetState,
    telemetry::Telemetry,
    tenant::{Overload, Tenant, TenantPolicy, TenantSettings},
    ConfigError,
};

/// Builds a [`ThrottleConfig`].
///
/// | setting | default | meaning |
/// |---|---|---|
/// | `quota` | none | quota of every model without its own |
/// | `model_quota` | none | quota of one model id or inference profile |
/// | `burndown` | 5 for Claude 4 and later, else 1 ([`default_burndown`](crate::default_burndown)) | quota tokens per output token |
/// | `reserved_quota` | none | quota of one model's `reserved` service tier capacity |
/// | `max_attempts` | 8 | attempts per request, the first included |
/// | `base_delay` | 1 s | first backoff ceiling |
/// | `max_delay` | 20 s | largest backoff ceiling |
/// | `max_retry_after` | 60 s | longest server `Retry-After` honoured |
/// | `retry_budget` | 500 units, 5 per retry | see [`RetryBudget`] |
/// | `max_wait` | 120 s | longest wait in the gate's queue per attempt |
/// | `body_limit` | 25,000,000 bytes | largest request body |
/// | `body_timeout` | 60 s | longest time for a request body to arrive in full |
/// | `read_ahead_timeout` | 5 s | longest the gate holds a response head back while it reads a 429's body or a stream's first frame |
/// | `throttle_recovery` | 1.5 × the key's quota period | how long the gate takes after an upstream throttle to return to the rate that was throttled |
/// | `headroom` | 100 ms | refill time each bucket keeps unused, for upstream counting a request a little after the gate admitted it |
/// | `estimator` | [`HeuristicEstimator`] | the [`TokenEstimator`] |
/// | `tenant_header` | none | request header naming the [`Tenant`] when the extensions do not |
/// | `tenant`, `default_tenant` | weight 1, no cap | [`TenantPolicy`] of a tenant, of all others |
/// | `tenant_metrics` | off | label per-request metrics with the (configured) `tenant` |
/// | `max_queued` | [`DEFAULT_MAX_QUEUED`] (1,024) | waiting requests per key before [`Overload`] applies |
/// | `max_keys` | [`DEFAULT_MAX_KEYS`] (1,024) | models without a quota of their own that hold state at once |
/// | `overload` | [`Overload::Shed`] | shed at once, or back-pressure through `poll_ready` |
/// | `ledger` | none | a [`Ledger`](crate::Ledger) shared with other processes, e.g. [`RedisLedger`](crate::RedisLedger) |
/// | `outage` | [`OutagePolicy::FailClosed`] | what the gate does while the shared ledger is unreachable |
///
/// With the defaults a throttled request retries for about 70 s of backoff at most, longer
/// than Bedrock's one-minute quota window (the AWS SDK's 3 attempts give up in about 1.5 s).
#[derive(Debug)]
#[must_use]
pub struct ThrottleConfigBuilder {
    default_quota: Option<Quota>,
    model_quotas: Vec<(String, Quota)>,
    long_context_quotas: Vec<(String, Quota)>,
    reserved_quotas: Vec<(String, Quota)>,
    burndowns: HashMap<String, f64>,
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    max_retry_after: Duration,
    budget: Option<RetryBudget>,
    max_wait: Duration,
    body_limit: usize,
    body_timeout: Duration,
    read_ahead_timeout: Duration,
    throttle_recovery: Option<Duration>,
    headroom: Duration,
    estimator: Option<Arc<dyn TokenEstimator>>,
    tenants: TenantSettings,
    tenant_header: Option<String>,
    shared_ledger: Option<Arc<dyn Ledger>>,
    outage: OutagePolicy,
    max_keys: usize,
    account_tokens_per_day: Option<u64>,
}

impl Default for ThrottleConfigBuilder {
    fn default() -> Self {
        Self {
            default_quota: None,
            model_quotas: Vec::new(),
            long_context_quotas: Vec::new(),
            reserved_quotas: Vec::new(),
            burndowns: HashMap::new(),
            max_attempts: 8,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(60),
            budget: Some(RetryBudget::default()),
            max_wait: Duration::from_secs(120),
            body_limit: BEDROCK_MAX_BODY_BYTES,
            body_timeout: Duration::from_secs(60),
            read_ahead_timeout: Duration::from_secs(5),
            throttle_recovery: None,
            headroom: Duration::from_millis(100),
            estimator: None,
            tenants: TenantSettings {
                max_queued: Some(DEFAULT_MAX_QUEUED),
                ..TenantSettings::default()
            },
            tenant_header: None,
            shared_ledger: None,
            outage: OutagePolicy::FailClosed,
            max_keys: DEFAULT_MAX_KEYS,
            account_tokens_per_day: None,
        }
    }
}

impl ThrottleConfigBuilder {
    /// The quota of every model that has no [`model_quota`](Self::model_quota). Without it,
    /// requests for other models (and non-Bedrock requests) are estimated and retried but
    /// not gated.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.default_quota = Some(quota);
        self
    }

    /// Limits every key of this configuration together to `tokens` a day: Bedrock's
    /// account-wide "Cross-Model Account-Level Tokens Per Day" ("Cross-Model Max Tokens Per
    /// Day" in AWS's quota tables: "maximum tokens per day across all supported Amazon
    /// Bedrock models"). Every metered request books its reservation here as well as in its
    /// key's buckets, and is refused at once with
    /// [`ThrottleError::DailyQuotaExhausted`](crate::ThrottleError) (`key: None`) when the
    /// last 24 hours leave no room for it. Keys with a daily quota of their own
    /// ([`Quota::with_tokens_per_day`]) are held to both.
    ///
    /// Processes that share a quota through a [`ledger`](Self::ledger) each count their own
    /// day: give each its share of the daily quota.
    ///
    /// ```
    /// use bedrock_throttle::{Quota, ThrottleConfig};
    ///
    /// let cfg = ThrottleConfig::builder()
    ///     .quota(Quota::tokens_per_minute(200_000))
    ///     .account_tokens_per_day(1_000_000_000)
    ///     .build()?;
    /// # let _ = cfg;
    /// # Ok::<(), bedrock_throttle::ConfigError>(())
    /// ```
    pub fn account_tokens_per_day(mut self, tokens: u64) -> Self {
        self.account_tokens_per_day = Some(tokens);
        self
    }

    /// The quota of one model id or inference profile, as it appears in the request path
    /// (decoded): `anthropic.claude-3-5-sonnet-20240620-v1:0`,
    /// `us.anthropic.claude-sonnet-4-20250514-v1:0`, or an ARN. For an ARN the part after
    /// the last `/` also matches.
    pub fn model_quota(mut self, model: impl Into<String>, quota: Quota) -> Self {
        self.model_quotas.push((model.into(), quota));
        self
    }

    /// The quota of one model id's 1M-token context variant (Service Quotas' `… 1M Context
    /// Length`): requests over 200,000 estimated input tokens, or with Anthropic's
    /// `context-1m` beta flag, spend from it ([`QuotaKey::context`](crate::QuotaKey::context)).
    /// Without one such requests get a bucket of their own with the model's standard quota.
    /// The id is matched as in [`model_quota`](Self::model_quota).
    ///
    /// ```
    /// use bedrock_throttle::{Quota, ThrottleConfig};
    ///
    /// let sonnet = "us.anthropic.claude-sonnet-4-20250514-v1:0";
    /// let cfg = ThrottleConfig::builder()
    ///     .model_quota(sonnet, Quota::tokens_per_minute(200_000))
    ///     .long_context_quota(sonnet, Quota::tokens_per_minute(100_000))
    ///     .build()?;
    /// # Ok::<(), bedrock_throttle::ConfigError>(())
    /// ```
    pub fn long_context_quota(mut self, model: impl Into<String>, quota: Quota) -> Self {
        self.long_context_quotas.push((model.into(), quota));
        self
    }

    /// The quota of one model's `reserved` [service tier](crate::service_tier) capacity
    /// (named as in [`model_quota`](Self::model_quota)): requests that ask for that tier
    /// spend it instead of the on-demand quota. Without one they are not gated.
    pub fn reserved_quota(mut self, model: impl Into<String>, quota: Quota) -> Self {
        self.reserved_quotas.push((model.into(), quota));
        self
    }

    /// The output burndown of one model, for quotas that do not set their own.
    pub fn burndown(mut self, model: impl Into<String>, rate: f64) -> Self {
        self.burndowns.insert(model.into(), rate);
        self
    }

    /// Attempts per request, the first included; 1 turns retry off.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The backoff ceiling of the first retry; retry `n` waits `U(0, min(max_delay,
    /// base_delay × 2^(n-1)))`.
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// The largest backoff ceiling.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// The longest `Retry-After` (or `x-amz-retry-after`, `retry-after-ms`) honoured;
    /// longer hints wait this long.
    pub fn max_retry_after(mut self, delay: Duration) -> Self {
        self.max_retry_after = delay;
        self
    }

    /// The retry budget shared by all requests of this configuration.
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No retry budget: every failure is retried up to `max_attempts`.
    pub fn no_retry_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// The longest a request waits in the gate's queue for room in its quota (per attempt)
    /// before it fails with [`ThrottleError::MaxWaitExceeded`](crate::ThrottleError).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// The largest request body read, in bytes; larger ones fail with
    /// [`ThrottleError::BodyTooLarge`](crate::ThrottleError) and are not sent.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// How long the whole request body may take to arrive once the layer begins to read it;
    /// a body still incomplete then fails with
    /// [`ThrottleError::BodyTimeout`](crate::ThrottleError) and is not sent, so a client that
    /// stops sending holds no place in a queue. 60 s unless set.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// How long the gate may hold a response head back from the caller while it reads the
    /// start of the body: a 429's body (to tell which limit it names) and a 2xx event
    /// stream's first frame (to retry an exception there). Past it the head goes on with
    /// what was read in front of the rest: a 429 counts as a throttle of unknown kind, a
    /// stream passes as it is (its usage is still read as it flows). Bedrock sends both at
    /// once (a throttle in the first frame comes before the model runs), so only a broken
    /// upstream or proxy meets this; 5 s unless set.
    pub fn read_ahead_timeout(mut self, timeout: Duration) -> Self {
        self.read_ahead_timeout = timeout;
        self
    }

    /// After an upstream throttle the gate of that key cuts its rates to 70 % and climbs
    /// back on a cubic curve, reaching the throttled rate after this long and probing above
    /// it afterwards (see the `gate` module, "Slowing down"); unset, one and a half periods
    /// of the key's quota. Zero turns the slowdown off (the buckets are still emptied on a throttle); a
    /// [`Quota::discover`] needs it, so zero with one fails to build.
    pub fn throttle_recovery(mut self, recovery: Duration) -> Self {
        self.throttle_recovery = Some(recovery);
        self
    }

    /// Refill time each bucket keeps in reserve: a request is admitted when its bucket holds
    /// its cost plus `headroom` worth of refill. Upstream counts a request when it arrives,
    /// a little after the gate admitted it, and its buckets started when its first request
    /// arrived, a little after the gate's; without headroom the gate, running exactly at the
    /// quota, would now and then be a few milliseconds ahead of upstream. A constant level
    /// held back costs no throughput once the quota is saturated.
    pub fn headroom(mut self, headroom: Duration) -> Self {
        self.headroom = headroom;
        self
    }

    /// The token estimator; the default, [`HeuristicEstimator`], understands every Bedrock
    /// request shape. Its input estimates are calibrated per model from the usage responses
    /// report (see [`Calibration`]).
    pub fn estimator(mut self, estimator: impl TokenEstimator) -> Self {
        self.estimator = Some(Arc::new(estimator));
        self
    }

    /// The request header that names a request's [`Tenant`] when its extensions carry none
    /// (see [`tenant`](crate::tenant)).
    pub fn tenant_header(mut self, name: impl Into<String>) -> Self {
        self.tenant_header = Some(name.into());
        self
    }

    /// The weight and cap of one tenant (see [`tenant`](crate::tenant)).
    pub fn tenant(mut self, tenant: impl Into<Tenant>, policy: TenantPolicy) -> Self {
        self.tenants.policies.insert(tenant.into(), policy);
        self
    }

    /// The policy of every tenant without its own, and of requests without a tenant;
    /// weight 1 and no cap unless set.
    pub fn default_tenant(mut self, policy: TenantPolicy) -> Self {
        self.tenants.default_policy = policy;
        self
    }

    /// Labels the metrics of what each request does at a key (admitted, waited, shed,
    /// timed out, tokens reserved and settled, wait seconds, queue depth) with its `tenant`: the name
    /// of a tenant configured with [`tenant`](Self::tenant), else `(default)`, shared by
    /// every other tenant and by requests without one. So the label has at most one value
    /// more than the tenants configured, whatever names callers send. Off unless set: the
    /// series are then per key only. The other metrics stay per key.
    pub fn tenant_metrics(mut self, on: bool) -> Self {
        self.tenants.metrics_label = on;
        self
    }

    /// Bounds the requests waiting in a key's queue: once `max` wait, what happens to the
    /// next is the [`overload`](Self::overload) policy. [`DEFAULT_MAX_QUEUED`] (1,024)
    /// unless set; `max_wait` also bounds how long each waits.
    ///
    /// The places are shared by weight when tenants compete for them: once `max` wait, a
    /// request whose tenant holds fewer than its weighted share of `max` (`max × weight /
    /// total weight` of the tenants waiting, itself included, rounded up) still queues, up
    /// to `2 × max` waiters; one whose tenant holds its share is shed
    /// ([`RefusedBy::ModelQueue`](crate::RefusedBy::ModelQueue)). So a tenant flooding a
    /// key cannot take every place, and under overload admissions still split by weight.
    /// A capped tenant's requests first wait for its cap in a queue of their own, of
    /// `max × cap` places (rounded up; [`RefusedBy::TenantQueue`](crate::RefusedBy::TenantQueue)
    /// when full): as many as the cap admits while the key's full queue drains.
    ///
    /// Size it to what the key drains within [`max_wait`](Self::max_wait), about
    /// `max_wait × admissions per second / 2` (competing tenants can fill twice `max`): a
    /// request queued behind more waits `max_wait` and is refused all the same, where a
    /// shed one is told at once (the README's "In a server").
    ///
    /// A waiting request holds its body, so this bounds memory too: at most about
    /// `2 × max × (body size + 1 KiB)` per key, plus `max × cap` per capped tenant (a
    /// single tenant never holds more than `max`; under [`Overload::Backpressure`] `max`
    /// counts the waiters of the whole configuration). With the default `body_limit` of 25 MB the worst case is
    /// large; a gateway facing clients it does not trust should lower `max_queued` or
    /// `body_limit` to what it can hold (the README's "Memory" works an example).
    pub fn max_queued(mut self, max: usize) -> Self {
        self.tenants.max_queued = Some(max);
        self
    }

    /// Bounds the models without a quota of their own (model ids that reach the gate from
    /// request paths, so from whoever sends requests) that hold state at once: a ledger,
    /// counters, ~16 metric series and a diagnosis record each, about 4 KiB.
    /// [`DEFAULT_MAX_KEYS`] (1,024) unless set.
    ///
    /// Past the bound a new model evicts keys idle for 10 minutes and at rest (nothing
    /// waiting or in flight, buckets full, rates back at the quota: exactly the state a new
    /// key starts in, so no debt is forgotten and no room invented); if none is, it spends
    /// from its Region's overflow key, whose metrics carry `model="(other)"`. Until upstream
    /// has answered a model with a 2xx, its requests also pass one stage shared by every
    /// such model of the Region, with the default quota, so invented ids (which Bedrock
    /// refuses) together never spend more than one quota. See the README's "How it decides".
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max;
        self
    }

    /// What happens when [`max_queued`](Self::max_queued) requests wait: shed the request
    /// with [`ThrottleError::Overloaded`](crate::ThrottleError::Overloaded) (the default),
    /// or report not ready from `poll_ready`.
    pub fn overload(mut self, overload: Overload) -> Self {
        self.tenants.overload = overload;
        self
    }

    /// Spends from `ledger`, shared with every process that uses the same one, as well as
    /// from this configuration's own buckets (a per-process ceiling at the full quota). See
    /// [`Ledger`](crate::Ledger) and [`RedisLedger`](crate::RedisLedger) (feature `redis`).
    /// A shared ledger cannot be combined with [`Quota::discover`].
    pub fn ledger(mut self, ledger: impl Ledger) -> Self {
        self.shared_ledger = Some(Arc::new(ledger));
        self
    }

    /// What the gate does while its shared [`ledger`](Self::ledger) cannot be reached
    /// (default: [`OutagePolicy::FailClosed`]).
    pub fn outage(mut self, policy: OutagePolicy) -> Self {
        self.outage = policy;
        self
    }

    /// Checks the configuration and creates the budget it governs.
    pub fn build(self) -> Result<ThrottleConfig, ConfigError> {
        if self.default_quota.is_none()
            && self.model_quotas.is_empty()
            && self.long_context_quotas.is_empty()
            && self.reserved_quotas.is_empty()
        {
            return Err(ConfigError::new(
                "no quota configured: set .quota(Quota) for every model or .model_quota(id, Quota) for some",
            ));
        }
        if let Some(q) = &self.default_quota {
            q.validate("the default quota")?;
        }
        if self.account_tokens_per_day == Some(0) {
            return Err(ConfigError::new(
                "the account's daily token quota is 0, so nothing could ever be admitted",
            ));
        }
        if self.throttle_recovery == Some(Duration::ZERO)
            && self
                .default_quota
                .iter()
                .chain(self.model_quotas.iter().map(|(_, q)| q))
                .chain(self.long_context_quotas.iter().map(|(_, q)| q))
                .any(Quota::discovers)
        {
            return Err(ConfigError::new(
                "throttle_recovery is zero, which turns slowing down off, but a discovered quota (Quota::discover) finds its rate only by slowing down on throttles",
            ));
        }
        if let OutagePolicy::FailOpen { share } = self.outage {
            if !(share > 0.0 && share <= 1.0) {
                return Err(ConfigError::new(format!(
                    "the fail-open share is {share}; it must be in (0, 1]"
                )));
            }
        }
        if self.shared_ledger.is_some()
            && self
                .default_quota
                .iter()
                .chain(self.model_quotas.iter().map(|(_, q)| q))
                .chain(self.long_context_quotas.iter().map(|(_, q)| q))
                .any(Quota::discovers)
        {
            return Err(ConfigError::new(
                "a shared ledger needs configured quotas: a discovered quota (Quota::discover) is found per process",
            ));
        }
        if self.max_keys == 0 {
            return Err(ConfigError::new(
                "max_keys is 0, so no model without a quota of its own could hold state; use at least 1",
            ));
        }
        let mut model_quotas = HashMap::new();
        let mut long_context_quotas = HashMap::new();
        let all = (self.model_quotas.into_iter().map(|q| (q, false)))
            .chain(self.long_context_quotas.into_iter().map(|q| (q, true)));
        for ((model, quota), long) in all {
            if model.is_empty() {
                return Err(ConfigError::new("a model quota has an empty model id"));
            }
            let what = if long { "1M-context quota" } else { "quota" };
            quota.validate(&format!("the {what} of {model}"))?;
            // Keyed as requests are: a foundation model's or system profile's ARN as its id.
            let into = if long {
                &mut long_context_quotas
            } else {
                &mut model_quotas
            };
            into.insert(quota_model_id(&model).to_owned(), quota);
        }
        let mut reserved_quotas = HashMap::new();
        for (model, quota) in self.reserved_quotas {
            if model.is_empty() {
                return Err(ConfigError::new("a reserved quota has an empty model id"));
            }
            if quota.discovers() {
                return Err(ConfigError::new(format!(
                    "the reserved quota of {model} is discovered (Quota::discover); reserved capacity is bought, so give its number"
                )));
            }
            quota.validate(&format!("the reserved quota of {model}"))?;
            reserved_quotas.insert(quota_model_id(&model).to_owned(), quota);
        }
        let burndowns = (self.burndowns.into_iter())
            .map(|(m, b)| (quota_model_id(&m).to_owned(), b))
            .collect::<HashMap<_, _>>();
        for (model, rate) in &burndowns {
            if !(rate.is_finite() && *rate > 0.0) {
                return Err(ConfigError::new(format!(
                    "the burndown of {model} is {rate}; it must be a positive finite number"
                )));
            }
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::new(
                "max_attempts is 0; it counts the first attempt, so use 1 for no retries",
            ));
        }
        if self.max_delay < self.base_delay {
            return Err(ConfigError::new(format!(
                "max_delay ({:?}) is shorter than base_delay ({:?})",
                self.max_delay, self.base_delay
            )));
        }
        if self.max_wait.is_zero() {
            return Err(ConfigError::new(
                "max_wait is zero, so every request that has to queue would fail; give it at least one quota period",
            ));
        }
        if self.body_limit == 0 {
            return Err(ConfigError::new("body_limit is 0 bytes"));
        }
        if self.body_timeout.is_zero() {
            return Err(ConfigError::new(
                "body_timeout is zero, so every request body still in flight would fail",
            ));
        }
        if let Some(b) = self.budget {
            if b.retry_cost > b.capacity {
                return Err(ConfigError::new(format!(
                    "the retry budget's cost per retry ({}) exceeds its capacity ({}), so no retry could ever run; use no_retry_budget() to disable it",
                    b.retry_cost, b.capacity
                )));
            }
        }
        let mut tenants = self.tenants;
        if let Some(name) = self.tenant_header {
            tenants.header = Some(http::HeaderName::try_from(name.as_str()).map_err(|_| {
                ConfigError::new(format!(
                    "the tenant header {name:?} is not a valid header name"
                ))
            })?);
        }
        tenants.validate()?;
        let waiting_places = match (tenants.overload, tenants.max_queued) {
            (Overload::Backpressure, Some(max)) => Some(Arc::new(tokio::sync::Semaphore::new(
                max.min(tokio::sync::Semaphore::MAX_PERMITS),
            ))),
            _ => None,
        };
        let settings = Settings {
            tenants,
            default_quota: self.default_quota,
            model_quotas,
            long_context_quotas,
            reserved_quotas,
            burndowns,
            retry: RetrySettings {
                max_attempts: self.max_attempts,
                base_delay: self.base_delay,
                max_delay: self.max_delay,
                max_retry_after: self.max_retry_after,
            },
            max_wait: self.max_wait,
            body_limit: self.body_limit,
            body_timeout: self.body_timeout,
            read_ahead_timeout: self.read_ahead_timeout,
            throttle_recovery: self.throttle_recovery,
            headroom: self.headroom,
        };
        let tenant_label = settings.tenants.metrics_label;
        Ok(ThrottleConfig {
            shared: Arc::new(Shared {
                retry_budget: self.budget.map(RetryBudgetState::new),
                ledger: Registry::new(settings.throttle_recovery, settings.headroom)
                    .with_shared(self.shared_ledger, self.outage)
                    .with_account_daily(self.account_tokens_per_day),
                settings,
                estimator: self
                    .estimator
                    .unwrap_or_else(|| Arc::new(HeuristicEstimator::default())),
                calibration: Calibration::new(),
                waiting_places,
                telemetry: Telemetry::new(tenant_label),
                diagnosis: crate::diagnosis::Recorder::new(),
                keys: KeyTable::new(self.max_keys),
            }),
        })
    }
}
