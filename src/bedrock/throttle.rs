//! Whether an error response is a throttle, and which limit it names.
//!
//! A response is a throttle by its status and error code first ([`classify_code`]): a
//! `ValidationException` saying "too many tokens" (a prompt over the context window) is no
//! throttle, and a `ThrottlingException` is one whatever its words. Only then does the
//! message tell the limit: Bedrock's three messages, whether in a 429's JSON body or in a
//! `throttlingException` frame of an event stream, are "Too many requests, please wait
//! before trying again." (RPM), "Too many tokens, please wait before trying again." (TPM)
//! and "Too many tokens per day, please wait before trying again.".

use http::{HeaderMap, StatusCode};

use super::{
    classify::{classify_code, Outcome},
    errors::{error_code, ErrorBody},
};
use crate::ThrottleKind;

/// The limit an error response names when it is a throttle; `None` when it is not one.
/// The code comes from `x-amzn-errortype`, else the body's `code` or `__type`, as the AWS
/// SDK reads it; the class from the body's message.
pub(crate) fn throttle_of(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<ThrottleKind> {
    let body = ErrorBody::parse(body);
    let outcome = classify_code(status, error_code(headers, &body));
    (outcome == Outcome::Throttled).then(|| {
        body.message
            .as_deref()
            .map_or(ThrottleKind::Unknown, kind_of_message)
    })
}

/// The class of a throttle message; case and surrounding text do not matter.
pub(crate) fn kind_of_message(message: &str) -> ThrottleKind {
    let m = message.to_ascii_lowercase();
    if m.contains("too many tokens per day") || m.contains("tokens per day") {
        ThrottleKind::DailyTokens
    } else if m.contains("too many tokens") {
        ThrottleKind::Tokens
    } else if m.contains("too many requests") {
        ThrottleKind::Requests
    } else {
        ThrottleKind::Unknown
    }
}

/// The class of a JSON error body, by its `message` (`Message`, `errorMessage`) field;
/// `Unknown` when it is not JSON or has no message.
pub(crate) fn kind_of_error_body(body: &[u8]) -> ThrottleKind {
    ErrorBody::parse(body)
        .message
        .as_deref()
        .map_or(ThrottleKind::Unknown, kind_of_message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bedrock_messages_are_told_apart() {
        let k = kind_of_message;
        assert_eq!(
            k("Too many requests, please wait before trying again."),
            ThrottleKind::Requests
        );
        assert_eq!(
            k("Too many tokens, please wait before trying again."),
            ThrottleKind::Tokens
        );
        assert_eq!(
            k("Too many tokens per day, please wait before trying again."),
            ThrottleKind::DailyTokens
        );
        assert_eq!(k("TOO MANY TOKENS"), ThrottleKind::Tokens);
        assert_eq!(k(""), ThrottleKind::Unknown);
        let b = kind_of_error_body;
        assert_eq!(
            b(br#"{"Message":"Too many requests, please wait"}"#),
            ThrottleKind::Requests
        );
        assert_eq!(b(br#"{"code":"x"}"#), ThrottleKind::Unknown);
        assert_eq!(b(b"<html>"), ThrottleKind::Unknown);
    }

    fn headers(error_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-amzn-errortype", error_type.parse().unwrap());
        h
    }

    #[test]
    fn a_throttle_is_told_by_its_code_before_its_message() {
        let tokens = br#"{"message":"Too many tokens, please wait before trying again."}"#;
        let too_many = StatusCode::TOO_MANY_REQUESTS;
        let bad = StatusCode::BAD_REQUEST;
        let none = HeaderMap::new();
        let throttling =
            headers("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/");
        assert_eq!(
            throttle_of(too_many, &throttling, tokens),
            Some(ThrottleKind::Tokens)
        );
        assert_eq!(
            throttle_of(too_many, &none, tokens),
            Some(ThrottleKind::Tokens)
        );
        // The code throttles on any status; the message only names the limit.
        assert_eq!(
            throttle_of(bad, &throttling, b"{}"),
            Some(ThrottleKind::Unknown)
        );
        // A context-length error that speaks of too many tokens is no throttle.
        let validation = headers("ValidationException");
        assert_eq!(throttle_of(bad, &validation, tokens), None);
        assert_eq!(throttle_of(too_many, &validation, tokens), None);
        let long = br#"{"message":"prompt is too long: 210000 tokens > 200000 maximum"}"#;
        assert_eq!(throttle_of(bad, &validation, long), None);
        // Nor is a model that is not ready, though it comes as a 429.
        let not_ready = br#"{"message":"Model is not ready for inference. Too many requests"}"#;
        assert_eq!(
            throttle_of(too_many, &headers("ModelNotReadyException"), not_ready),
            None
        );
        // Without the header, the body's code and then its type speak, as the SDK reads them.
        let coded = br#"{"code":"ThrottlingException","message":"Too many tokens per day, please wait before trying again."}"#;
        assert_eq!(
            throttle_of(bad, &none, coded),
            Some(ThrottleKind::DailyTokens)
        );
        let typed =
            br#"{"__type":"com.amazonaws#ValidationException","message":"Too many tokens"}"#;
        assert_eq!(throttle_of(too_many, &none, typed), None);
        // The header goes before the body.
        assert_eq!(throttle_of(bad, &validation, coded), None);
        assert_eq!(throttle_of(StatusCode::OK, &throttling, tokens), None);
        assert_eq!(throttle_of(bad, &none, tokens), None);
    }
}
