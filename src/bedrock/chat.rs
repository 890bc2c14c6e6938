//! OpenAI-compatible Chat Completions on bedrock-runtime: the model a request's body names.
//!
//! A Chat Completions request (see [`path`](super::path) for its routes) names its model in
//! the body's `model` member, as OpenAI's Create chat completion API has it, and bedrock-runtime
//! charges it to that model's quota, shared with InvokeModel and Converse
//! (<https://docs.aws.amazon.com/bedrock/latest/userguide/inference-chat-completions.html>).

use crate::estimate::scan;

/// The `model` member of a Chat Completions body: a non-empty string, unescaped; `None` for
/// a body that is not a JSON object or has no such member.
pub(crate) fn model(body: &[u8]) -> Option<String> {
    let doc = scan::validate(body).ok()?;
    let root = doc.root();
    if !root.is_object() {
        return None;
    }
    let model = root.get("model")?.as_str()?;
    (!model.is_empty()).then(|| model.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_member_of_an_object() {
        assert_eq!(
            model(br#"{"messages":[{"role":"user","content":"hi"}],"model":"openai.gpt-oss-20b-1:0"}"#)
                .as_deref(),
            Some("openai.gpt-oss-20b-1:0")
        );
        // Escapes are read as JSON reads them; the last of a repeated member wins.
        assert_eq!(
            model(br#"{"model":"x","model":"openai.gpt\u002doss-120b-1:0"}"#).as_deref(),
            Some("openai.gpt-oss-120b-1:0")
        );
        for body in [
            &b""[..],
            b"{",
            b"[]",
            br#"{"model":""}"#,
            br#"{"model":7}"#,
            br#"{"messages":[]}"#,
            br#"{"m":{"model":"nested"}}"#,
        ] {
            assert_eq!(model(body), None, "{}", String::from_utf8_lossy(body));
        }
    }
}
