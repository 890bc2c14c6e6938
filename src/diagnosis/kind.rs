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
/// Anything else is [`Unknown`](Self::Unknown). Whether a response is a throttle at all
/// goes by its status and error code first, the message second
/// ([`from_response`](Self::from_response)): a `ValidationException` about a prompt with
/// "too many tokens" is no throttle, Bedrock's 429 `ModelNotReadyException` neither. The
/// gate slows the budget the throttle names (see the `gate` module, "Slowing down") and
/// puts the class in the response's extensions, so a caller can read it:
///
/// ```
/// use bedrock_throttle::ThrottleKind;
/// use http::{HeaderMap, StatusCode};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("x-amzn-errortype", "ValidationException".parse().unwrap());
/// let body = br#"{"message":"Too many tokens, please wait before trying again."}"#;
/// assert_eq!(ThrottleKind::from_response(StatusCode::BAD_REQUEST, &headers, body), None);
/// let headers = HeaderMap::new();
/// assert_eq!(
///     ThrottleKind::from_response(StatusCode::TOO_MANY_REQUESTS, &headers, body),
///     Some(ThrottleKind::Tokens)
/// );
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

    /// Whether an error response is a throttle, and the limit it names: `None` when it is
    /// not one. The error code decides first, read as the AWS SDK reads it
    /// (`aws-sdk-bedrockruntime`'s `json_errors.rs`): the `x-amzn-errortype` header, else
    /// the body's `code`, else its `__type`, without a trailing `:…` or a leading `…#`. A
    /// throttling code (the AWS SDK's list, `ThrottlingException` among them) makes any
    /// error status a throttle; another code makes none, even on a 429; without a code a
    /// 429 is a throttle. Then the body's message names the limit.
    pub fn from_response(
        status: http::StatusCode,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Option<Self> {
        crate::bedrock::throttle::throttle_of(status, headers, body)
    }

    /// The class of a JSON error body by its message alone (`message`, `Message` or
    /// `errorMessage`), for a response already known to be a throttle. Not JSON, or
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
