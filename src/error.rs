//! The crate's one error type, and what it means on Bedrock's wire.

use std::{fmt, time::Duration};

use bytes::Bytes;
use http::StatusCode;

use crate::{
    bedrock::errors::{
        error_response, REQUEST_TIMEOUT, SERVICE_UNAVAILABLE, THROTTLING, VALIDATION,
    },
    OutagePolicy, QuotaKey, Tenant,
};

/// A boxed error, as tower's services return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request ended in an error instead of an upstream response.
///
/// Every variant says what happened and what the caller can do. Services of this crate
/// return it inside a [`BoxError`]; recover it with `err.downcast_ref::<ThrottleError>()`.
///
/// ```
/// use bedrock_throttle::{BoxError, ThrottleError};
///
/// fn describe(err: &BoxError) -> &'static str {
///     match err.downcast_ref::<ThrottleError>() {
///         Some(ThrottleError::MaxWaitExceeded { .. }) => "quota busy: try later",
///         Some(ThrottleError::NeverFits { .. }) => "request too large for the quota",
///         Some(_) => "rejected by the throttle",
///         None => "transport error",
///     }
/// }
/// # let _ = describe;
/// ```
///
/// # On the wire
///
/// A server in front of Bedrock answers each error the way Bedrock itself would
/// ([`to_response`](Self::to_response), or the whole stack at once with
/// [`ErrorResponseLayer`](crate::error_response::ErrorResponseLayer)), so AWS SDKs, boto3
/// and code written for Bedrock's errors read it as they read Bedrock's:
///
/// | variant | [`status_code`](Self::status_code) | [`error_type`](Self::error_type) (`x-amzn-errortype`) | [`retry_after`](Self::retry_after) |
/// |---|---|---|---|
/// | `MaxWaitExceeded`, `Overloaded`, `SendDeadlinePassed` | 429 | `ThrottlingException` | its `retry_after` |
/// | `NeverFits`, `BodyTooLarge`, `Body` | 400 | `ValidationException` | none: resending as is cannot help |
/// | `BodyTimeout` | 408 | `RequestTimeoutException` (the SDKs retry it as transient) | none |
/// | `LedgerUnavailable` | 503 | `ServiceUnavailableException` | [`OutagePolicy::retry_after`] |
/// | `Upstream` | 502 | `ServiceUnavailableException` | none: the retry policy already waited |
///
/// Bedrock's status codes and error types are those of its API reference (for example
/// InvokeModel's "Errors"); the SDK reads the type from `x-amzn-errortype` and the message
/// from the JSON body's `message` (`aws-sdk-bedrockruntime`'s `parse_error_metadata`).
#[derive(Debug)]
#[non_exhaustive]
pub enum ThrottleError {
    /// The request body is larger than the configured body limit; nothing was sent upstream.
    /// Send a smaller request or raise `ThrottleConfigBuilder::body_limit`.
    BodyTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// Reading the request body failed; nothing was sent upstream.
    Body(BoxError),
    /// The request body had not arrived in full `timeout` after the layer began to read it;
    /// nothing was sent upstream. The client is sending too slowly (or stopped): send the
    /// whole body promptly, or raise `ThrottleConfigBuilder::body_timeout`.
    BodyTimeout {
        /// The configured body timeout.
        timeout: Duration,
    },
    /// The request's token estimate is larger than the whole token quota of its key, so no
    /// amount of waiting would admit it. Lower `max_tokens` or the prompt, or raise the quota.
    NeverFits {
        /// The quota key the request was charged to.
        key: QuotaKey,
        /// Tokens the request would reserve: input + output limit × burndown.
        tokens: u64,
        /// The key's token quota per period.
        quota_tokens: u64,
    },
    /// The request would pass a daily token quota (see
    /// [`Quota::with_tokens_per_day`](crate::Quota::with_tokens_per_day) and
    /// `ThrottleConfigBuilder::account_tokens_per_day`): the tokens charged in the last 24
    /// hours and the tokens it reserves (input + output limit × burndown) add up to more
    /// than the limit. It was refused at once, not queued, and nothing was sent. Bedrock
    /// answers the same case with a 429 `ThrottlingException` "Too many tokens per day";
    /// the message here starts with those words too, so this crate's retry layer (and any
    /// client that reads the message) does not retry it. Wait for the day to turn
    /// (`resets_in`), send less, or raise the quota.
    DailyQuotaExhausted {
        /// The quota key whose daily quota has no room; `None` for the account-wide
        /// cross-model quota ("Cross-Model Account-Level Tokens Per Day").
        key: Option<QuotaKey>,
        /// The daily quota in tokens.
        limit: u64,
        /// Tokens charged to it in the last 24 hours.
        used: u64,
        /// Tokens the request reserves.
        needed: u64,
        /// How long until enough of the day's tokens have aged out that the request fits;
        /// `None` when it needs more than the whole daily quota.
        resets_in: Option<Duration>,
    },
    /// The request waited `max_wait` for room in its quota and got none; nothing was sent
    /// upstream. The quota is saturated: retry after `retry_after`, or raise `max_wait`.
    MaxWaitExceeded {
        /// The quota key the request waited on.
        key: QuotaKey,
        /// The request's tenant, if it named one.
        tenant: Option<Tenant>,
        /// Where it waited: [`RefusedBy::TenantCap`] or [`RefusedBy::ModelQuota`].
        refused_by: RefusedBy,
        /// How long it waited.
        waited: Duration,
        /// How long the requests queued with it (itself included) take to be admitted at
        /// the key's current rate, and at least how long until it would fit the key's
        /// buckets: when a retry would no longer queue behind them.
        retry_after: Duration,
    },
    /// The key's queue already held `max_queued` waiting requests, so this one was shed
    /// at once (see `ThrottleConfigBuilder::max_queued`); nothing was sent upstream. Send it
    /// again after `retry_after`, or slow down.
    Overloaded {
        /// The quota key whose queue was full.
        key: QuotaKey,
        /// The request's tenant, if it named one.
        tenant: Option<Tenant>,
        /// Which queue was full: [`RefusedBy::TenantQueue`] or [`RefusedBy::ModelQueue`].
        refused_by: RefusedBy,
        /// Requests waiting when this one arrived.
        queued: usize,
        /// How long the waiting requests take to be admitted at the key's current rate, and
        /// at least how long until this request would fit the key's buckets.
        retry_after: Duration,
    },
    /// The request's [`SendDeadline`](crate::SendDeadline) (on the AWS SDK path: the end of
    /// its SigV4 signature's validity) passed while it waited for room; nothing was sent, so
    /// no request left with an expired signature. Sign it again and resend, later or with a
    /// smaller request.
    SendDeadlinePassed {
        /// The quota key the request waited on.
        key: QuotaKey,
        /// The request's tenant, if it named one.
        tenant: Option<Tenant>,
        /// How long it waited.
        waited: Duration,
        /// As for [`MaxWaitExceeded`](Self::MaxWaitExceeded); zero when the deadline had
        /// passed before the request could queue.
        retry_after: Duration,
    },
    /// The shared quota ledger (see `ThrottleConfigBuilder::ledger`) could not be reached
    /// and the outage policy is `OutagePolicy::FailClosed`; nothing was sent upstream.
    /// Retry later: the gate reconnects by itself.
    LedgerUnavailable {
        /// The quota key the request was charged to.
        key: QuotaKey,
        /// Why the ledger could not answer.
        source: BoxError,
    },
    /// Upstream failed (a connection error or the inner service's error) on every attempt
    /// the retry policy allowed. `source` is the last failure.
    Upstream {
        /// Attempts made, the first included.
        attempts: u32,
        /// The last error.
        source: BoxError,
    },
}

impl fmt::Display for ThrottleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BodyTooLarge { limit } => write!(
                f,
                "request body exceeds the {limit}-byte limit; nothing was sent (raise body_limit or send less)"
            ),
            Self::Body(e) => write!(f, "failed to read the request body; nothing was sent: {e}"),
            Self::BodyTimeout { timeout } => write!(
                f,
                "the request body did not arrive in full within {timeout:?}; nothing was sent (send it promptly or raise body_timeout)"
            ),
            Self::NeverFits { key, tokens, quota_tokens } => write!(
                f,
                "request for {key} reserves {tokens} tokens (input + output limit x burndown), more than \
                 the whole quota of {quota_tokens} tokens per period; lower max_tokens or the prompt, or raise the quota"
            ),
            Self::DailyQuotaExhausted {
                key,
                limit,
                used,
                needed,
                resets_in,
            } => {
                match key {
                    Some(k) => write!(f, "Too many tokens per day for {k}: its daily quota")?,
                    None => write!(
                        f,
                        "Too many tokens per day: the account's cross-model daily quota"
                    )?,
                }
                write!(
                    f,
                    " of {limit} tokens has {used} charged in the last 24 hours and this request reserves {needed}; nothing was sent"
                )?;
                match resets_in {
                    Some(d) => write!(f, " (room for it again in {d:?})"),
                    None => f.write_str(" (it needs more than the whole day's quota)"),
                }
            }
            Self::MaxWaitExceeded {
                key,
                tenant,
                refused_by,
                waited,
                retry_after,
            } => {
                match (refused_by, tenant) {
                    (RefusedBy::TenantCap, Some(t)) => {
                        write!(f, "no room under the cap of tenant {t} on {key}")?
                    }
                    (RefusedBy::TenantCap, None) => {
                        write!(f, "no room under the cap of the default tenant on {key}")?
                    }
                    (_, t) => write!(f, "no room in the quota of {key}{}", for_tenant(t))?,
                }
                write!(
                    f,
                    " after waiting {waited:?}; nothing was sent (retry after {retry_after:?} or raise max_wait)"
                )
            }
            Self::Overloaded {
                key,
                tenant,
                refused_by,
                queued,
                retry_after,
            } => {
                match (refused_by, tenant) {
                    (RefusedBy::TenantQueue, Some(t)) => {
                        write!(f, "the queue of tenant {t} under its cap on {key} is full")?
                    }
                    (RefusedBy::TenantQueue, None) => write!(
                        f,
                        "the queue of the default tenant under its cap on {key} is full"
                    )?,
                    (_, t) => write!(f, "the queue of {key} is full{}", for_tenant(t))?,
                }
                write!(
                    f,
                    " ({queued} requests waiting); nothing was sent (retry after {retry_after:?})"
                )
            }
            Self::SendDeadlinePassed {
                key,
                tenant,
                waited,
                ..
            } => write!(
                f,
                "the send deadline of a request for {key}{} (its signature's validity) passed after waiting {waited:?} for room; nothing was sent (sign it again and resend)",
                for_tenant(tenant)
            ),
            Self::LedgerUnavailable { key, source } => write!(
                f,
                "the shared quota ledger for {key} is unavailable and the outage policy fails closed; nothing was sent (retry later): {source}"
            ),
            Self::Upstream { attempts, source } => {
                write!(f, "upstream failed after {attempts} attempt(s): {source}")
            }
        }
    }
}

/// `" for tenant t"`, or nothing for a request without a tenant.
fn for_tenant(tenant: &Option<Tenant>) -> String {
    tenant
        .as_ref()
        .map_or_else(String::new, |t| format!(" for tenant {t}"))
}

/// Which limit refused a request that was shed or timed out: the request's tenant's cap
/// (see [`TenantPolicy::with_cap`](crate::TenantPolicy::with_cap)) or its model's quota,
/// and for a shed, which queue was full.
///
/// A model not yet proven (see `ThrottleConfigBuilder::max_keys`) first waits in its
/// Region's stage for such models; that stage counts as the model's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusedBy {
    /// The tenant's cap had no room by the deadline.
    TenantCap,
    /// The queue of requests waiting for the tenant's cap was full: it holds
    /// `max_queued × cap` of them (rounded up), as many as the cap admits while the
    /// model's full queue drains.
    TenantQueue,
    /// The model's queue was full and the tenant held its weighted share of it (see
    /// `ThrottleConfigBuilder::max_queued`).
    ModelQueue,
    /// The model's quota had no room by the deadline.
    ModelQuota,
}

impl fmt::Display for RefusedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TenantCap => "tenant cap",
            Self::TenantQueue => "tenant queue",
            Self::ModelQueue => "model queue",
            Self::ModelQuota => "model quota",
        })
    }
}

impl ThrottleError {
    /// The HTTP status Bedrock would answer this error with; see "On the wire" in the
    /// [type docs](Self).
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::MaxWaitExceeded { .. }
            | Self::Overloaded { .. }
            | Self::SendDeadlinePassed { .. }
            | Self::DailyQuotaExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NeverFits { .. } | Self::BodyTooLarge { .. } | Self::Body(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::LedgerUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The error type Bedrock would name in `x-amzn-errortype`, such as
    /// `"ThrottlingException"`; see "On the wire" in the [type docs](Self).
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::MaxWaitExceeded { .. }
            | Self::Overloaded { .. }
            | Self::SendDeadlinePassed { .. }
            | Self::DailyQuotaExhausted { .. } => THROTTLING,
            Self::NeverFits { .. } | Self::BodyTooLarge { .. } | Self::Body(_) => VALIDATION,
            Self::BodyTimeout { .. } => REQUEST_TIMEOUT,
            Self::LedgerUnavailable { .. } | Self::Upstream { .. } => SERVICE_UNAVAILABLE,
        }
    }

    /// How long to wait before sending the request again, when waiting helps: the drain
    /// time of the queue for a throttle, [`OutagePolicy::retry_after`] for a lost ledger;
    /// `None` when the same request would fail again however long one waits, or when the
    /// retry policy has already waited.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::MaxWaitExceeded { retry_after, .. }
            | Self::Overloaded { retry_after, .. }
            | Self::SendDeadlinePassed { retry_after, .. } => Some(*retry_after),
            Self::LedgerUnavailable { .. } => Some(OutagePolicy::retry_after()),
            // Hours away at best: a hint that long would only park a client's retries.
            Self::DailyQuotaExhausted { .. }
            | Self::NeverFits { .. }
            | Self::BodyTooLarge { .. }
            | Self::Body(_)
            | Self::BodyTimeout { .. }
            | Self::Upstream { .. } => None,
        }
    }

    /// This error as Bedrock would send it: [`status_code`](Self::status_code),
    /// `x-amzn-errortype:` [`error_type`](Self::error_type), `Content-Type:
    /// application/json`, a body `{"message": "..."}` and, when there is a
    /// [`retry_after`](Self::retry_after), `Retry-After` (whole seconds, rounded up) and
    /// `x-amz-retry-after` (milliseconds, which the AWS SDKs honour).
    ///
    /// The message is the error's [`Display`](fmt::Display), except that the source of a
    /// `Body`, `LedgerUnavailable` or `Upstream` error (a connection error, say) is not
    /// sent to the client. `B` is any body made from [`Bytes`]: `Full<Bytes>`, axum's
    /// `Body`, the SDK's `SdkBody`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use bedrock_throttle::{QuotaKey, RefusedBy, ThrottleError};
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    ///
    /// let err = ThrottleError::Overloaded {
    ///     key: QuotaKey::new(Some("anthropic.claude-3-haiku-20240307-v1:0"), Some("us-east-1")),
    ///     tenant: None,
    ///     refused_by: RefusedBy::ModelQueue,
    ///     queued: 64,
    ///     retry_after: Duration::from_millis(2_500),
    /// };
    /// let response: http::Response<Full<Bytes>> = err.to_response();
    /// assert_eq!(response.status(), 429);
    /// assert_eq!(response.headers()["x-amzn-errortype"], "ThrottlingException");
    /// assert_eq!(response.headers()["retry-after"], "3");
    /// assert_eq!(response.headers()["x-amz-retry-after"], "2500");
    /// ```
    pub fn to_response<B: From<Bytes>>(&self) -> http::Response<B> {
        error_response(
            self.status_code(),
            self.error_type(),
            &self.client_message(),
            self.retry_after(),
        )
    }

    /// The message for a client: the `Display` without a source the client has no
    /// business reading.
    fn client_message(&self) -> String {
        match self {
            Self::Body(_) => "failed to read the request body; nothing was sent".into(),
            Self::LedgerUnavailable { key, .. } => format!(
                "the shared quota ledger for {key} is unavailable; nothing was sent (retry later)"
            ),
            Self::Upstream { attempts, .. } => {
                format!("upstream failed after {attempts} attempt(s)")
            }
            other => other.to_string(),
        }
    }
}

impl std::error::Error for ThrottleError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Body(e)
            | Self::Upstream { source: e, .. }
            | Self::LedgerUnavailable { source: e, .. } => Some(&**e),
            _ => None,
        }
    }
}

/// An impossible configuration, reported by `ThrottleConfigBuilder::build`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid throttle configuration: {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};

    use super::*;

    fn key() -> QuotaKey {
        QuotaKey::new(Some("m"), Some("us-east-1"))
    }

    #[test]
    fn every_variant_has_its_status_type_and_hint() {
        let secs = Duration::from_secs;
        let cases: Vec<(ThrottleError, u16, &str, Option<Duration>)> = vec![
            (
                ThrottleError::MaxWaitExceeded {
                    key: key(),
                    tenant: None,
                    refused_by: RefusedBy::ModelQuota,
                    waited: secs(9),
                    retry_after: secs(4),
                },
                429,
                "ThrottlingException",
                Some(secs(4)),
            ),
            (
                ThrottleError::Overloaded {
                    key: key(),
                    tenant: None,
                    refused_by: RefusedBy::ModelQueue,
                    queued: 3,
                    retry_after: secs(2),
                },
                429,
                "ThrottlingException",
                Some(secs(2)),
            ),
            (
                ThrottleError::SendDeadlinePassed {
                    key: key(),
                    tenant: None,
                    waited: secs(1),
                    retry_after: Duration::ZERO,
                },
                429,
                "ThrottlingException",
                Some(Duration::ZERO),
            ),
            (
                ThrottleError::DailyQuotaExhausted {
                    key: None,
                    limit: 10,
                    used: 9,
                    needed: 2,
                    resets_in: Some(secs(3_600)),
                },
                429,
                "ThrottlingException",
                None,
            ),
            (
                ThrottleError::NeverFits {
                    key: key(),
                    tokens: 2,
                    quota_tokens: 1,
                },
                400,
                "ValidationException",
                None,
            ),
            (
                ThrottleError::BodyTooLarge { limit: 1 },
                400,
                "ValidationException",
                None,
            ),
            (
                ThrottleError::Body("cut".into()),
                400,
                "ValidationException",
                None,
            ),
            (
                ThrottleError::BodyTimeout { timeout: secs(1) },
                408,
                "RequestTimeoutException",
                None,
            ),
            (
                ThrottleError::LedgerUnavailable {
                    key: key(),
                    source: "down".into(),
                },
                503,
                "ServiceUnavailableException",
                Some(OutagePolicy::retry_after()),
            ),
            (
                ThrottleError::Upstream {
                    attempts: 2,
                    source: "refused".into(),
                },
                502,
                "ServiceUnavailableException",
                None,
            ),
        ];
        for (error, status, error_type, retry_after) in cases {
            assert_eq!(error.status_code(), status, "{error}");
            assert_eq!(error.error_type(), error_type, "{error}");
            assert_eq!(error.retry_after(), retry_after, "{error}");
            let response: http::Response<Full<Bytes>> = error.to_response();
            assert_eq!(response.status(), status, "{error}");
            assert_eq!(response.headers()["x-amzn-errortype"], error_type);
            assert_eq!(
                response.headers().contains_key("retry-after"),
                retry_after.is_some(),
                "{error}"
            );
        }
    }

    #[test]
    fn a_daily_refusal_reads_as_bedrocks_daily_throttle() {
        for key in [Some(key()), None] {
            let error = ThrottleError::DailyQuotaExhausted {
                key,
                limit: 1_000,
                used: 900,
                needed: 200,
                resets_in: None,
            };
            let message = error.to_string();
            assert_eq!(
                crate::bedrock::throttle::kind_of_message(&message),
                crate::ThrottleKind::DailyTokens,
                "{message}"
            );
            assert!(
                message.contains("1000") && message.contains("900"),
                "{message}"
            );
        }
    }

    #[tokio::test]
    async fn a_response_names_no_source_but_the_display_does() {
        let error = ThrottleError::LedgerUnavailable {
            key: key(),
            source: "redis at 10.1.2.3 refused".into(),
        };
        assert!(error.to_string().contains("10.1.2.3"));
        let response: http::Response<Full<Bytes>> = error.to_response();
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(response.headers()["x-amz-retry-after"], "250");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let message = json["message"].as_str().unwrap();
        assert!(message.contains("m in us-east-1"), "{message}");
        assert!(!message.contains("10.1.2.3"), "{message}");
    }
}
