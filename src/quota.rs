//! Quota values: what a quota is, as configured and as resolved for one key.

use std::time::Duration;

use crate::ConfigError;

/// One quota: requests and tokens per period (a minute unless set), as Bedrock grants per
/// model and Region.
///
/// RPM is optional because Bedrock's newer quota tables list only tokens per minute; leave it
/// out with `None` or [`Quota::tokens_per_minute`]. Should upstream still refuse with "Too
/// many requests", the gate finds a request limit from those throttles.
///
/// A configured quota is a ceiling: when upstream throttles below it (the account's real
/// quota is lower, or another application spends from it) the gate finds the real capacity
/// and keeps to it (see the `gate` module docs, "Slowing down"). When the number is not
/// known at all, [`Quota::discover`] starts from a guess and finds it.
///
/// ```
/// use bedrock_throttle::Quota;
///
/// let claude_3_5 = Quota::new(50, 400_000); // 50 RPM, 400,000 TPM
/// let sonnet_4 = Quota::tokens_per_minute(200_000); // TPM only
/// let custom = Quota::new(None, 1_000_000).with_burndown(5.0);
/// let unknown = Quota::discover(); // found from upstream throttles
/// assert_eq!(claude_3_5.requests(), Some(50));
/// assert!(unknown.discovers() && !sonnet_4.discovers());
/// assert_eq!(sonnet_4.requests(), None);
/// assert_eq!(custom.burndown(), Some(5.0));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quota {
    pub(crate) requests: Option<u32>,
    pub(crate) tokens: u64,
    pub(crate) period: Duration,
    pub(crate) burndown: Option<f64>,
    pub(crate) discover: bool,
    pub(crate) tokens_per_day: Option<u64>,
}

/// The tokens per minute a [`Quota::discover`] starts from: the smallest default Bedrock
/// quota seen on new accounts (a cross-Region Claude 3.7 Sonnet, 20,000 TPM). Slow start
/// doubles it every 0.15 period (9 s of a one-minute quota) while the callers use it all,
/// so it passes 400,000 TPM in about 40 s of load.
pub const DISCOVER_START_TPM: u64 = 20_000;

impl Quota {
    /// `rpm` requests (or `None` for no request limit) and `tpm` tokens per minute.
    pub fn new(rpm: impl Into<Option<u32>>, tpm: u64) -> Self {
        Self {
            requests: rpm.into(),
            tokens: tpm,
            period: Duration::from_secs(60),
            burndown: None,
            discover: false,
            tokens_per_day: None,
        }
    }

    /// No number at all: the gate finds the token rate from upstream throttles, starting at
    /// [`DISCOVER_START_TPM`] tokens per minute, with no request limit until upstream says
    /// "Too many requests".
    ///
    /// Until the first throttle the rate doubles every 0.15 period while the callers use
    /// what it gives (slow start); from then on it follows the same curve as a configured
    /// quota after a throttle, without a ceiling. The bucket holds one period at the
    /// current rate, and a request larger than that is admitted from a full bucket (its
    /// excess is debt), so [`ThrottleError::NeverFits`](crate::ThrottleError) never fires
    /// for a discovered quota. The first request-count throttle ("Too many requests") gives
    /// the key a request limit, starting at the request rate that was throttled and
    /// discovered the same way from there; the token rate is left alone.
    ///
    /// ```
    /// use bedrock_throttle::{Quota, ThrottleConfig};
    ///
    /// let cfg = ThrottleConfig::builder().quota(Quota::discover()).build()?;
    /// # let _ = cfg;
    /// # Ok::<(), bedrock_throttle::ConfigError>(())
    /// ```
    pub fn discover() -> Self {
        Self::discover_from(DISCOVER_START_TPM)
    }

    /// Like [`Quota::discover`], starting from `tpm` tokens per minute (per period when
    /// [`with_period`](Self::with_period) is set).
    pub fn discover_from(tpm: u64) -> Self {
        Self {
            discover: true,
            ..Self::new(None, tpm)
        }
    }

    /// `tpm` tokens per minute and no request limit.
    pub fn tokens_per_minute(tpm: u64) -> Self {
        Self::new(None, tpm)
    }

    /// Counts the requests and tokens of this quota per `period` instead of per minute.
    /// Useful for emulators and tests that run a "minute" faster; against Bedrock keep the
    /// minute.
    pub fn with_period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// Quota tokens one output token consumes. Unset, it follows the model: 5 for Claude 4
    /// and later (AWS's published burndown table), 1 otherwise (see [`default_burndown`]).
    pub fn with_burndown(mut self, rate: f64) -> Self {
        self.burndown = Some(rate);
        self
    }

    /// Limits the tokens of this quota's key to `tokens` a day as well: Bedrock's
    /// "Model invocation max tokens per day for ${model}" (listed on accounts as "On-demand
    /// model inference tokens per day for …"), by default the tokens per minute × 24 × 60,
    /// less on new accounts. A day is the last 24 hours (AWS does not say how it counts the
    /// day; the last 24 hours are the safe side of every reading). A request that would
    /// pass the day's limit is refused at once with
    /// [`ThrottleError::DailyQuotaExhausted`](crate::ThrottleError), never queued. The
    /// day's tokens are reserved as the minute's are (input + output limit × burndown) and
    /// settled to the usage reported. See also `ThrottleConfigBuilder::account_tokens_per_day`.
    ///
    /// ```
    /// use bedrock_throttle::Quota;
    ///
    /// let q = Quota::tokens_per_minute(200_000).with_tokens_per_day(288_000_000);
    /// assert_eq!(q.tokens_per_day(), Some(288_000_000));
    /// ```
    pub fn with_tokens_per_day(mut self, tokens: u64) -> Self {
        self.tokens_per_day = Some(tokens);
        self
    }

    /// The daily token limit, if set ([`with_tokens_per_day`](Self::with_tokens_per_day)).
    pub fn tokens_per_day(&self) -> Option<u64> {
        self.tokens_per_day
    }

    /// Requests per period, if limited.
    pub fn requests(&self) -> Option<u32> {
        self.requests
    }

    /// Tokens per period.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The period the numbers count over.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The burndown set on this quota, if any.
    pub fn burndown(&self) -> Option<f64> {
        self.burndown
    }

    /// Whether the token rate is discovered ([`Quota::discover`]); then
    /// [`tokens`](Self::tokens) is only where discovery starts.
    pub fn discovers(&self) -> bool {
        self.discover
    }

    pub(crate) fn validate(&self, what: &str) -> Result<(), ConfigError> {
        if self.tokens == 0 {
            return Err(ConfigError::new(format!(
                "{what}: the token quota is 0, so nothing could ever be admitted; give the tokens per minute your account has"
            )));
        }
        if self.requests == Some(0) {
            return Err(ConfigError::new(format!(
                "{what}: the request quota is 0; use None for no request limit"
            )));
        }
        if self.tokens_per_day == Some(0) {
            return Err(ConfigError::new(format!(
                "{what}: the daily token quota is 0, so nothing could ever be admitted; leave it unset for no daily limit"
            )));
        }
        if self.period.is_zero() {
            return Err(ConfigError::new(format!(
                "{what}: the quota period is zero"
            )));
        }
        if let Some(b) = self.burndown {
            if !(b.is_finite() && b > 0.0) {
                return Err(ConfigError::new(format!(
                    "{what}: burndown {b} must be a positive finite number (1 for most models, 5 for newer Claude)"
                )));
            }
        }
        Ok(())
    }
}

/// Bedrock's output burndown for a model id: 5 quota tokens per output token for Claude 4
/// and later (every family, `claude-opus-4…`, `claude-sonnet-4-5…`, `claude-haiku-4-5…`, and
/// any later major version), 1 for every other model, Claude 3.7 Sonnet included.
///
/// Source: AWS, "How tokens are counted in Amazon Bedrock"
/// (<https://docs.aws.amazon.com/bedrock/latest/userguide/quotas-token-burndown.html>):
/// "The burndown rate for the following models is 5x for output tokens (1 output token
/// consumes 5 tokens from your quotas)", listing Anthropic Claude Opus 4, Claude Sonnet 4 and
/// the Claude 4 models after them; the quotas page links it as "Token burndown rate for
/// Anthropic Claude 4 models". An AWS employee's article on the Claude 4 launch
/// (<https://community.aws/content/2xVZmCM5E7XXw0yqTEGgXYxRowk/bedrock-claude-4-burndown-rates>)
/// says the same. No AWS source lists Claude 3.7 Sonnet or any earlier model, so they count 1
/// (their output counted as 5 would reserve five times what Bedrock takes).
///
/// Cross-Region prefixes and ARNs are understood. Override with [`Quota::with_burndown`] or
/// `ThrottleConfigBuilder::burndown` when AWS changes the list.
///
/// ```
/// use bedrock_throttle::default_burndown;
///
/// assert_eq!(default_burndown("us.anthropic.claude-sonnet-4-20250514-v1:0"), 5.0);
/// assert_eq!(default_burndown("global.anthropic.claude-opus-4-5-20251101-v1:0"), 5.0);
/// assert_eq!(default_burndown("anthropic.claude-3-7-sonnet-20250219-v1:0"), 1.0);
/// assert_eq!(default_burndown("anthropic.claude-3-5-sonnet-20240620-v1:0"), 1.0);
/// assert_eq!(default_burndown("meta.llama3-70b-instruct-v1:0"), 1.0);
/// ```
pub fn default_burndown(model: &str) -> f64 {
    let Some((_, name)) = model.split_once("claude-") else {
        return 1.0;
    };
    let mut parts = name.split(['-', '.', ':']);
    // `claude-<family>-<major>…` (Claude 4 on) or `claude-<major>-…` (Claude 3.x and before).
    let major = match parts.next() {
        Some(family) if family.chars().all(|c| c.is_ascii_alphabetic()) => parts.next(),
        first => first,
    };
    let claude_4_or_later = major
        .and_then(|m| m.parse::<u32>().ok())
        .is_some_and(|m| (4..100).contains(&m));
    if claude_4_or_later {
        5.0
    } else {
        1.0
    }
}

/// A quota resolved for one key, with its burndown.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ResolvedQuota {
    pub(crate) requests: Option<u32>,
    pub(crate) tokens: u64,
    pub(crate) period: Duration,
    pub(crate) burndown: f64,
    /// `tokens` is a starting guess, not a ceiling.
    pub(crate) discover: bool,
    /// Tokens per day of the key, if limited (see [`Quota::with_tokens_per_day`]).
    pub(crate) daily: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burndown_defaults_follow_bedrock() {
        for m in [
            "anthropic.claude-opus-4-20250514-v1:0",
            "anthropic.claude-opus-4-1-20250805-v1:0",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "global.anthropic.claude-haiku-4-5-20251001-v1:0",
            "us.anthropic.claude-opus-4-6-v1",
            "anthropic.claude-sonnet-5-20260301-v1:0",
            "arn:aws:bedrock:us-east-1:1:inference-profile/us.anthropic.claude-sonnet-4-20250514-v1:0",
        ] {
            assert_eq!(default_burndown(m), 5.0, "{m}");
        }
        for m in [
            // No AWS source lists Claude 3.7 Sonnet.
            "eu.anthropic.claude-3-7-sonnet-20250219-v1:0",
            "anthropic.claude-3-7-sonnet-20250219-v1:0",
            "anthropic.claude-3-5-sonnet-20241022-v2:0",
            "anthropic.claude-3-haiku-20240307-v1:0",
            "anthropic.claude-v2:1",
            "anthropic.claude-instant-v1",
            "amazon.titan-text-express-v1",
            "",
        ] {
            assert_eq!(default_burndown(m), 1.0, "{m}");
        }
    }
}
