//! Which limit an upstream throttle names.

use std::fmt;

/// The limit an upstream throttle says it hit, read from its message.
///
/// Bedrock answers a request over its quota with `429 ThrottlingException` and one of three
/// messages; the same messages come in a `throttlingException` frame inside an event
/// stream:
///
/// | message | class |
/// |---|---|
/// | "Too many requests, please wait before trying again." | [`Requests`](Self::Requests) (RPM) |
/// | "Too many tokens, please wait before trying again." | [`Tokens`](Self::Tokens) (TPM) |
/// | "Too many tokens per day, please wait before trying again." | [`DailyTokens`](Self::DailyTokens) |
///
/// Anything else is [`Unknown`](Self::Unknown). The gate slows the budget the throttle
/// names (see the `gate` module, "Slowing down") and puts the class in the response's
/// extensions, so a caller can read it:
///
/// ```
/// use bedrock_throttle::ThrottleKind;
///
/// let body = br#"{"message":"Too many tokens, please wait before trying again."}"#;
/// assert_eq!(ThrottleKind::from_error_body(body), ThrottleKind::Tokens);
/// assert_eq!(
///     ThrottleKind::from_message("Too many tokens per day, please wait before trying again."),
///     ThrottleKind::DailyTokens
/// );
/// assert_eq!(ThrottleKind::from_message("Rate exceeded"), ThrottleKind::Unknown);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ThrottleKind {
    /// Requests per minute: "Too many requests".
    Requests,
    /// Tokens per minute: "Too many tokens".
    Tokens,
    /// Tokens per day: "Too many tokens per day".
    DailyTokens,
    /// A throttle whose message names no limit the crate knows.
    Unknown,
}

impl ThrottleKind {
    /// Every class, in a fixed order (for tables).
    pub const ALL: [ThrottleKind; 4] = [
        ThrottleKind::Requests,
        ThrottleKind::Tokens,
        ThrottleKind::DailyTokens,
        ThrottleKind::Unknown,
    ];

    /// The class of a throttle message (case and surrounding text do not matter).
    pub fn from_message(message: &str) -> Self {
        crate::bedrock::throttle::kind_of_message(message)
    }

    /// The class of a JSON error body: its `message` (or `Message`) field. Not JSON, or
    /// without a message: [`Unknown`](Self::Unknown).
    pub fn from_error_body(body: &[u8]) -> Self {
        crate::bedrock::throttle::kind_of_error_body(body)
    }

    /// A short name: `rpm`, `tpm`, `daily`, `unknown`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ThrottleKind::Requests => "rpm",
            ThrottleKind::Tokens => "tpm",
            ThrottleKind::DailyTokens => "daily",
            ThrottleKind::Unknown => "unknown",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            ThrottleKind::Requests => 0,
            ThrottleKind::Tokens => 1,
            ThrottleKind::DailyTokens => 2,
            ThrottleKind::Unknown => 3,
        }
    }
}

impl fmt::Display for ThrottleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
