//! [`ThrottleStats`]: a snapshot of every quota key, from
//! [`ThrottleConfig::stats`](crate::ThrottleConfig::stats).

use std::{fmt, sync::atomic::Ordering::Relaxed};

use crate::{
    table::{self, num},
    Quota, QuotaKey, Tenant, ThrottleConfig,
};

/// A snapshot of the throttle, one entry per quota key used so far, from
/// [`ThrottleConfig::stats`].
///
/// The counters count since the configuration was built, over every layer and AWS SDK
/// client built from it or its clones. They are the same numbers the `metrics` facade
/// reports (see the README's "Observability"), readable without a recorder.
///
/// Its `Display` is a table of the keys, then of their tenants; with the feature `serde`
/// it implements `serde::Serialize` with its field names (a quota's period as
/// `period_seconds`; see the README's "Stats").
///
/// ```
/// use bedrock_throttle::{estimate::TokenEstimate, BedrockThrottleLayer, Quota, ThrottleConfig};
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), bedrock_throttle::BoxError> {
/// let cfg = ThrottleConfig::builder().quota(Quota::new(50, 400_000)).build()?;
/// let svc = ServiceBuilder::new()
///     .layer(BedrockThrottleLayer::new(cfg.clone()))
///     .service(service_fn(|_req: http::Request<Full<Bytes>>| async {
///         Ok::<_, std::convert::Infallible>(
///             http::Response::builder()
///                 .header("x-amzn-bedrock-input-token-count", "1000")
///                 .header("x-amzn-bedrock-output-token-count", "100")
///                 .body(Full::new(Bytes::new()))
///                 .unwrap(),
///         )
///     }));
/// let mut req = http::Request::post("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke")
///     .body(Full::new(Bytes::from_static(b"{}")))?;
/// req.extensions_mut().insert(TokenEstimate::new(900, 1_000));
/// svc.oneshot(req).await?;
///
/// let stats = cfg.stats();
/// let key = &stats.keys[0];
/// assert_eq!(key.key.model(), Some("anthropic.claude-3-5-sonnet-20240620-v1:0"));
/// assert_eq!(key.admitted, 1);
/// assert_eq!(key.tokens_reserved, 1_900); // 900 in + 1,000 out × burndown 1
/// assert_eq!(key.tokens_settled, 1_100); // what the response reported
/// assert_eq!(key.quota.unwrap().tokens(), 400_000);
/// # Ok(()) }
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ThrottleStats {
    /// One entry per quota key, sorted by key (model, then Region).
    pub keys: Vec<KeyStats>,
}

impl ThrottleStats {
    /// The entry of `key`, if it has been used.
    pub fn key(&self, key: &QuotaKey) -> Option<&KeyStats> {
        self.keys.iter().find(|k| &k.key == key)
    }
}

/// The state and counters of one quota key; part of [`ThrottleStats`].
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct KeyStats {
    /// The quota key (model or inference profile, and Region).
    pub key: QuotaKey,
    /// The configured quota of the key; `None` when no quota applies (the key is retried
    /// but not gated).
    pub quota: Option<Quota>,
    /// The rates the gate admits at now (as
    /// [`ThrottleConfig::effective_quota`]): below `quota` after upstream throttles, the
    /// capacity found so far for a [`Quota::discover`]. `None` when not gated.
    pub effective: Option<Quota>,
    /// Quota tokens the gate's token bucket holds now: what it would admit at once (less
    /// its headroom), below zero while usage above a reservation is paid off. With a
    /// shared ledger, this process's bucket. `None` when not gated.
    pub tokens_available: Option<f64>,
    /// Requests the gate's request bucket holds now; `None` without a request limit.
    pub requests_available: Option<f64>,
    /// Attempts waiting in the key's queue now.
    pub queue_depth: u64,
    /// Attempts the gate admitted (each retry is an attempt).
    pub admitted: u64,
    /// Attempts that had to queue for room (admitted later, or failed with
    /// `MaxWaitExceeded`, or dropped while waiting).
    pub waited: u64,
    /// Attempts upstream refused for lack of quota: 429 responses and `throttlingException`
    /// frames inside event streams.
    pub throttled: u64,
    /// `throttled` by the limit each throttle named: "Too many requests", "Too many
    /// tokens", "Too many tokens per day", other.
    pub throttled_requests: u64,
    /// See `throttled_requests`.
    pub throttled_tokens: u64,
    /// See `throttled_requests`.
    pub throttled_daily_tokens: u64,
    /// See `throttled_requests`.
    pub throttled_unknown: u64,
    /// Retries the retry layer scheduled for requests of this key.
    pub retried: u64,
    /// Attempts shed because the key's queue was full (`ThrottleError::Overloaded`); none
    /// of them was sent upstream.
    pub shed: u64,
    /// Attempts that found no room by their deadline and were not sent: `max_wait` passed
    /// ([`ThrottleError::MaxWaitExceeded`](crate::ThrottleError::MaxWaitExceeded)) or their
    /// [`SendDeadline`](crate::SendDeadline) did
    /// ([`ThrottleError::SendDeadlinePassed`](crate::ThrottleError::SendDeadlinePassed)).
    pub timed_out: u64,
    /// Quota tokens reserved at admission (`input + output limit × burndown`), summed.
    pub tokens_reserved: u64,
    /// Quota tokens charged by the reservations settled from reported usage, summed.
    /// Reservations kept whole (no usage reported) are in `tokens_reserved` only.
    pub tokens_settled: u64,
    /// Estimated input tokens of the requests whose usage was reported.
    pub input_tokens_estimated: u64,
    /// Input tokens upstream reported for the same requests (cache reads and writes
    /// included); compare with `input_tokens_estimated`.
    pub input_tokens_actual: u64,
    /// The model's learned calibration ratio, actual / estimated input
    /// ([`Calibration::ratio`](crate::estimate::Calibration::ratio)); `None` for a key
    /// without a model.
    pub calibration_ratio: Option<f64>,
    /// The key's counters per tenant, sorted by name, the default tenant last. Tenants
    /// configured with [`tenant`](crate::ThrottleConfigBuilder::tenant) count by name;
    /// every other tenant and every request without one count together under the default
    /// tenant (`tenant: None`), as they share its policy and cap, so tenant names a caller
    /// makes up never grow this list.
    pub tenants: Vec<TenantStats>,
}

/// One tenant's counters at one quota key; part of [`KeyStats`].
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TenantStats {
    /// The tenant; `None` for the default tenant: requests without a tenant and tenants
    /// without a policy of their own.
    pub tenant: Option<Tenant>,
    /// The tenant's attempts the gate admitted.
    pub admitted: u64,
    /// The tenant's attempts shed because a queue was full (the key's, or its cap's).
    pub shed: u64,
    /// The tenant's attempts that found no room by their deadline: `max_wait`
    /// ([`ThrottleError::MaxWaitExceeded`](crate::ThrottleError::MaxWaitExceeded)) or their
    /// send deadline ([`ThrottleError::SendDeadlinePassed`](crate::ThrottleError::SendDeadlinePassed)).
    pub timed_out: u64,
    /// The tenant's attempts waiting now, under its cap or at the key.
    pub waiting: u64,
    /// Quota tokens reserved at the tenant's admissions, summed.
    pub tokens_reserved: u64,
    /// Quota tokens charged by the tenant's reservations settled from reported usage.
    pub tokens_settled: u64,
}

impl KeyStats {
    /// The entry of `tenant` (`None`: the default tenant), if it has sent to this key.
    pub fn tenant(&self, tenant: Option<&str>) -> Option<&TenantStats> {
        (self.tenants.iter()).find(|t| t.tenant.as_ref().map(Tenant::as_str) == tenant)
    }
}

pub(crate) fn collect(cfg: &ThrottleConfig) -> ThrottleStats {
    let shared = &cfg.shared;
    let mut keys: Vec<KeyStats> = shared
        .telemetry
        .all()
        .into_iter()
        .map(|t| {
            let quota = shared.settings.quota_for(&t.key).map(|q| {
                let base = if q.discover {
                    Quota::discover_from(q.tokens)
                } else {
                    Quota::new(q.requests, q.tokens)
                };
                base.with_period(q.period).with_burndown(q.burndown)
            });
            let available = quota
                .and(shared.ledger.get(&crate::keys::canonical(&t.key)))
                .map(|ledger| ledger.available());
            KeyStats {
                quota,
                effective: cfg.effective_quota(&t.key),
                tokens_available: available.map(|a| a.0),
                requests_available: available.and_then(|a| a.1),
                queue_depth: t.queued.load(Relaxed),
                admitted: t.admitted.load(Relaxed),
                waited: t.waited.load(Relaxed),
                throttled: t.throttled.load(Relaxed),
                throttled_requests: t.throttled_by_kind[0].load(Relaxed),
                throttled_tokens: t.throttled_by_kind[1].load(Relaxed),
                throttled_daily_tokens: t.throttled_by_kind[2].load(Relaxed),
                throttled_unknown: t.throttled_by_kind[3].load(Relaxed),
                retried: t.retried.load(Relaxed),
                shed: t.shed.load(Relaxed),
                timed_out: t.timed_out.load(Relaxed),
                tokens_reserved: t.tokens_reserved.load(Relaxed),
                tokens_settled: t.tokens_settled.load(Relaxed),
                input_tokens_estimated: t.input_estimated.load(Relaxed),
                input_tokens_actual: t.input_actual.load(Relaxed),
                calibration_ratio: t.key.model().map(|m| shared.calibration.ratio(m)),
                tenants: tenants(&t),
                key: t.key.clone(),
            }
        })
        .collect();
    keys.sort_by(|a, b| {
        let order = |k: &QuotaKey| {
            (
                k.model().map(str::to_owned),
                k.region().map(str::to_owned),
                k.is_reserved(),
            )
        };
        order(&a.key).cmp(&order(&b.key))
    });
    ThrottleStats { keys }
}

/// Tokens per minute of a quota.
fn tpm(q: &Quota) -> u64 {
    (q.tokens() as f64 * 60.0 / q.period().as_secs_f64()).round() as u64
}

/// `t` rounded, grouped by thousands; below zero while a key pays off usage.
fn signed(t: f64) -> String {
    let n = num(t.abs().round() as u64);
    if t.round() < 0.0 {
        format!("-{n}")
    } else {
        n
    }
}

/// One table of the keys, then one of their tenants (when any key has a named tenant).
fn write_keys(f: &mut fmt::Formatter<'_>, keys: &[KeyStats]) -> fmt::Result {
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), num);
    let rows: Vec<[String; 14]> = (keys.iter())
        .map(|k| {
            [
                k.key.to_string(),
                opt(k.quota.as_ref().map(tpm)),
                opt(k.effective.as_ref().map(tpm)),
                k.tokens_available.map_or("-".to_owned(), signed),
                num(k.queue_depth),
                num(k.admitted),
                num(k.waited),
                num(k.shed),
                num(k.timed_out),
                num(k.throttled),
                num(k.retried),
                num(k.tokens_reserved),
                num(k.tokens_settled),
                k.calibration_ratio
                    .map_or("-".to_owned(), |r| format!("{r:.2}")),
            ]
        })
        .collect();
    let header = [
        "key",
        "quota TPM",
        "effective TPM",
        "tokens now",
        "waiting",
        "admitted",
        "waited",
        "shed",
        "timed out",
        "throttled",
        "retried",
        "reserved",
        "settled",
        "calibration",
    ];
    table::write(f, header, &rows, 1)?;
    if keys
        .iter()
        .all(|k| k.tenants.iter().all(|t| t.tenant.is_none()))
    {
        return Ok(());
    }
    writeln!(f)?;
    let rows: Vec<[String; 8]> = (keys.iter())
        .flat_map(|k| k.tenants.iter().map(move |t| (k, t)))
        .map(|(k, t)| {
            [
                k.key.to_string(),
                t.tenant
                    .as_ref()
                    .map_or(crate::telemetry::DEFAULT_TENANT_LABEL, Tenant::as_str)
                    .to_owned(),
                num(t.waiting),
                num(t.admitted),
                num(t.shed),
                num(t.timed_out),
                num(t.tokens_reserved),
                num(t.tokens_settled),
            ]
        })
        .collect();
    let header = [
        "key",
        "tenant",
        "waiting",
        "admitted",
        "shed",
        "timed out",
        "reserved",
        "settled",
    ];
    table::write(f, header, &rows, 2)
}

/// A table with one row per key (the quota and effective rate in tokens per minute, the
/// tokens the bucket holds now, the counters, the calibration ratio), then a table of the
/// keys' tenants when any tenant is configured. Numbers are grouped by thousands.
impl fmt::Display for ThrottleStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_keys(f, &self.keys)
    }
}

/// The key's row of [`ThrottleStats`]' table, and its tenants'.
impl fmt::Display for KeyStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_keys(f, std::slice::from_ref(self))
    }
}

fn tenants(key: &crate::telemetry::KeyTelemetry) -> Vec<TenantStats> {
    let mut tenants: Vec<TenantStats> = (key.tenants().iter())
        .map(|t| TenantStats {
            tenant: t.tenant.clone(),
            admitted: t.admitted.load(Relaxed),
            shed: t.shed.load(Relaxed),
            timed_out: t.timed_out.load(Relaxed),
            waiting: t.queued.load(Relaxed),
            tokens_reserved: t.tokens_reserved.load(Relaxed),
            tokens_settled: t.tokens_settled.load(Relaxed),
        })
        .collect();
    // Named tenants by name, the default one last.
    tenants.sort_by(|a, b| (a.tenant.is_none(), &a.tenant).cmp(&(b.tenant.is_none(), &b.tenant)));
    tenants
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    use crate::{estimate::TokenEstimate, BedrockThrottleLayer, Quota, QuotaKey, ThrottleConfig};

    const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

    #[tokio::test(start_paused = true)]
    async fn the_buckets_show_what_was_settled_and_what_refilled_since() {
        // 60 requests and 6,000 tokens a minute: one request and 100 tokens a second.
        let cfg = ThrottleConfig::builder()
            .model_quota(MODEL, Quota::new(60, 6_000))
            .build()
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(BedrockThrottleLayer::new(cfg.clone()))
            .service(service_fn(|_req: http::Request<Full<Bytes>>| async {
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header("x-amzn-bedrock-input-token-count", "1000")
                        .header("x-amzn-bedrock-output-token-count", "100")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
            }));
        let mut req =
            http::Request::post("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke")
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap();
        req.extensions_mut().insert(TokenEstimate::new(900, 1_000));
        svc.oneshot(req).await.unwrap();

        let key = QuotaKey::new(Some(MODEL), None);
        let stats = cfg.stats();
        let k = stats.key(&key).unwrap();
        // 1,900 reserved, 1,100 settled: 4,900 left, and 59 requests.
        assert_eq!(k.tokens_available, Some(4_900.0));
        assert_eq!(k.requests_available, Some(59.0));

        tokio::time::advance(Duration::from_secs(1)).await;
        let stats = cfg.stats();
        let k = stats.key(&key).unwrap();
        let tokens = k.tokens_available.unwrap();
        assert!((tokens - 5_000.0).abs() < 1e-6, "{tokens}");
        let requests = k.requests_available.unwrap();
        assert!((requests - 60.0).abs() < 1e-9, "{requests}");
    }
}
