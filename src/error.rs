//! The crate's one error type.

use std::{fmt, time::Duration};

use crate::QuotaKey;

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
    /// The request waited `max_wait` for room in its quota and got none; nothing was sent
    /// upstream. The quota is saturated: retry later, or raise `max_wait`.
    MaxWaitExceeded {
        /// The quota key the request waited on.
        key: QuotaKey,
        /// How long it waited.
        waited: Duration,
    },
    /// The key's queue already held `max_queued` waiting requests, so this one was shed
    /// at once (see `ThrottleConfigBuilder::max_queued`); nothing was sent upstream. Send it
    /// again after `retry_after`, the time the queue ahead takes to drain at the current
    /// rate, or slow down.
    Overloaded {
        /// The quota key whose queue was full.
        key: QuotaKey,
        /// Requests waiting when this one arrived.
        queued: usize,
        /// How long the waiting requests take to be admitted at the key's current rate.
        retry_after: Duration,
    },
    /// The request's [`SendDeadline`](crate::SendDeadline) (on the AWS SDK path: the end of
    /// its SigV4 signature's validity) passed while it waited for room; nothing was sent, so
    /// no request left with an expired signature. Sign it again and resend, later or with a
    /// smaller request.
    SendDeadlinePassed {
        /// The quota key the request waited on.
        key: QuotaKey,
        /// How long it waited.
        waited: Duration,
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
            Self::MaxWaitExceeded { key, waited } => write!(
                f,
                "no room in the quota of {key} after waiting {waited:?}; nothing was sent (retry later or raise max_wait)"
            ),
            Self::Overloaded {
                key,
                queued,
                retry_after,
            } => write!(
                f,
                "the queue of {key} is full ({queued} requests waiting); nothing was sent (retry after {retry_after:?})"
            ),
            Self::SendDeadlinePassed { key, waited } => write!(
                f,
                "the send deadline of a request for {key} (its signature's validity) passed after waiting {waited:?} for room; nothing was sent (sign it again and resend)"
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
