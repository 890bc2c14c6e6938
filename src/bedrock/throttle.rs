//! Which limit a throttle names, read from its message.
//!
//! Bedrock's three messages, whether in a 429's JSON body or in a `throttlingException`
//! frame of an event stream: "Too many requests, please wait before trying again." (RPM),
//! "Too many tokens, please wait before trying again." (TPM) and "Too many tokens per day,
//! please wait before trying again.".

use crate::ThrottleKind;

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

/// The class of a JSON error body, by its `message` (or `Message`) field; `Unknown` when
/// it is not JSON or has no message.
pub(crate) fn kind_of_error_body(body: &[u8]) -> ThrottleKind {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return ThrottleKind::Unknown;
    };
    json.get("message")
        .or_else(|| json.get("Message"))
        .and_then(|m| m.as_str())
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
}
