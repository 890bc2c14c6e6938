//! Where a request is addressed: the model and operation in its path, the Region in its host.
//!
//! Bedrock's runtime paths are `/model/{modelId}/{operation}`. The `{modelId}` is a model
//! id, an inference profile id or an ARN, usually percent-encoded (`:` as `%3A`, `/` as
//! `%2F`), though an ARN's `/` may also come raw: the model is everything between
//! `/model/` and the last `/`. This is the only parser of such paths in the crate.
//!
//! bedrock-runtime also serves OpenAI's Create chat completion API, whose model is in the
//! body: at `/openai/v1/chat/completions` ("Invoke a model with the OpenAI Chat Completions
//! API", <https://docs.aws.amazon.com/bedrock/latest/userguide/inference-chat-completions.html>)
//! and at `/v1/chat/completions` ("Inference using the Chat Completions API",
//! <https://docs.aws.amazon.com/bedrock/latest/userguide/inference-chat-completions-mantle.html>).
//! The first is recognised on any host, as `/model/…` paths are; the second only on a
//! bedrock-runtime host, because the same path on `bedrock-mantle.{region}.api.aws` (or on
//! any OpenAI-compatible server) is charged to other quotas.

use std::borrow::Cow;

use http::Uri;
use percent_encoding::percent_decode_str;

use crate::estimate::Operation;

/// A Bedrock model call's path, split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ModelPath<'a> {
    /// The `{modelId}` segment as the path has it: percent-encoded, never empty.
    pub(crate) raw_model: &'a str,
    /// The operation; never [`Operation::Other`].
    pub(crate) operation: Operation,
}

impl<'a> ModelPath<'a> {
    /// The model id, percent-decoded (see [`decode_model_id`]).
    pub(crate) fn model(&self) -> Cow<'a, str> {
        decode_model_id(self.raw_model)
    }
}

/// `/model/{modelId}/{operation}` (a query or fragment is ignored) → its parts; `None` for
/// any other path, an empty `{modelId}` or an operation Bedrock does not have.
pub(crate) fn parse_path(path: &str) -> Option<ModelPath<'_>> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let (raw_model, segment) = path.strip_prefix("/model/")?.rsplit_once('/')?;
    let operation = operation(segment);
    (!raw_model.is_empty() && operation != Operation::Other).then_some(ModelPath {
        raw_model,
        operation,
    })
}

/// The path of the OpenAI-compatible Chat Completions route that is recognised on any host.
const OPENAI_CHAT_COMPLETIONS: &str = "/openai/v1/chat/completions";
/// The path bedrock-runtime also serves Chat Completions at; recognised on its hosts only.
const V1_CHAT_COMPLETIONS: &str = "/v1/chat/completions";

/// Whether `path` (a query or fragment is ignored) is bedrock-runtime's OpenAI-compatible
/// Chat Completions route, given whether the request goes to a bedrock-runtime host (see
/// the [module docs](self)).
pub(crate) fn is_chat_completions(path: &str, bedrock_runtime_host: bool) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or("");
    path == OPENAI_CHAT_COMPLETIONS || (bedrock_runtime_host && path == V1_CHAT_COMPLETIONS)
}

/// The model id and operation of a request to `uri`: a `/model/{modelId}/{operation}` call
/// (the id percent-decoded), or a Chat Completions call, whose model is in its body
/// (`None` here); `None` for anything else.
pub(crate) fn model_and_operation(uri: &Uri) -> Option<(Option<Cow<'_, str>>, Operation)> {
    if let Some(p) = parse_path(uri.path()) {
        return Some((Some(p.model()), p.operation));
    }
    is_chat_completions(uri.path(), region(uri).is_some())
        .then_some((None, Operation::ChatCompletions))
}

/// The operation a path's last segment names, exactly as Bedrock spells it.
pub(crate) fn operation(segment: &str) -> Operation {
    match segment {
        "invoke" => Operation::Invoke,
        "invoke-with-response-stream" => Operation::InvokeStream,
        "converse" => Operation::Converse,
        "converse-stream" => Operation::ConverseStream,
        "count-tokens" => Operation::CountTokens,
        _ => Operation::Other,
    }
}

/// A model id with every percent escape decoded; bytes that are not UTF-8 become U+FFFD,
/// so two spellings of one id always decode alike. Borrowed when there is nothing to decode.
pub(crate) fn decode_model_id(raw: &str) -> Cow<'_, str> {
    percent_decode_str(raw).decode_utf8_lossy()
}

/// The Region a request is sent to, from its URI's host; never from a `Host` header, which
/// a server's client chooses (see [`QuotaKey`](crate::QuotaKey)).
pub(crate) fn region(uri: &Uri) -> Option<&str> {
    uri.host().and_then(region_from_host)
}

/// `bedrock-runtime.us-east-1.amazonaws.com` (or `-fips`, or `.amazonaws.com.cn`) → `us-east-1`.
fn region_from_host(host: &str) -> Option<&str> {
    let rest = host
        .strip_prefix("bedrock-runtime.")
        .or_else(|| host.strip_prefix("bedrock-runtime-fips."))?;
    let (region, domain) = rest.split_once('.')?;
    (domain.starts_with("amazonaws.com") && !region.is_empty()).then_some(region)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        estimate::{limits::base_model_id, RequestInfo},
        QuotaKey,
    };

    fn parts(path: &str) -> Option<(String, Operation)> {
        parse_path(path).map(|p| (p.model().into_owned(), p.operation))
    }

    #[test]
    fn the_model_is_everything_between_model_and_the_last_slash() {
        let arn = "arn:aws:bedrock:us-east-1:1:inference-profile/us.x:0";
        assert_eq!(
            parts("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x%3A0/converse-stream"),
            Some((arn.into(), Operation::ConverseStream))
        );
        // An ARN's `/` may come unencoded.
        assert_eq!(
            parts(&format!("/model/{arn}/invoke")),
            Some((arn.into(), Operation::Invoke))
        );
        assert_eq!(
            parts("/model/m/invoke?x=1#f"),
            Some(("m".into(), Operation::Invoke))
        );
    }

    #[test]
    fn anything_else_is_not_a_model_call() {
        for path in [
            "",
            "/",
            "/other",
            "/model",
            "/model/",
            "/model/m",
            "/model//invoke",
            "/model/m/delete",
            "/model/m/invoke/",
            "/model/m/Invoke",
            "/model/m/invok%65",
            "//model/m/invoke",
            "/v1/model/m/invoke",
            "/model/?x/invoke",
        ] {
            assert_eq!(parse_path(path), None, "{path:?}");
        }
    }

    #[test]
    fn decoding_is_complete_lossy_and_borrows_when_it_can() {
        assert!(matches!(
            decode_model_id("amazon.nova-pro-v1:0"),
            Cow::Borrowed(_)
        ));
        assert_eq!(decode_model_id("a%3ab%2Fc%2Ed%20e"), "a:b/c.d e");
        // Not an escape: kept as it is.
        assert_eq!(decode_model_id("100%zz%"), "100%zz%");
        assert_eq!(decode_model_id("x%FFy"), "x\u{FFFD}y");
        // One decoding only: `%25` is a `%`.
        assert_eq!(decode_model_id("x%253A0"), "x%3A0");
        // An id that decodes to something still is one.
        assert_eq!(
            parts("/model/%20/invoke"),
            Some((" ".into(), Operation::Invoke))
        );
    }

    #[test]
    fn chat_completions_on_bedrock_runtime() {
        let op = |uri: &str| {
            let uri: Uri = uri.parse().unwrap();
            model_and_operation(&uri).map(|(m, op)| (m.map(Cow::into_owned), op))
        };
        let chat = Some((None, Operation::ChatCompletions));
        assert_eq!(op("/openai/v1/chat/completions"), chat);
        assert_eq!(
            op("http://127.0.0.1:9/openai/v1/chat/completions?x=1"),
            chat
        );
        assert_eq!(
            op("https://bedrock-runtime.us-west-2.amazonaws.com/openai/v1/chat/completions"),
            chat
        );
        assert_eq!(
            op("https://bedrock-runtime.us-west-2.amazonaws.com/v1/chat/completions"),
            chat
        );
        // Elsewhere `/v1/chat/completions` is some other service's, mantle's included.
        for uri in [
            "/v1/chat/completions",
            "http://127.0.0.1:9/v1/chat/completions",
            "https://bedrock-mantle.us-east-1.api.aws/v1/chat/completions",
            "https://bedrock-runtime.us-west-2.amazonaws.com/openai/v1/chat/completions/",
            "https://bedrock-runtime.us-west-2.amazonaws.com/openai/v1/responses",
            "/openai/v1/chat/completion",
        ] {
            assert_eq!(op(uri), None, "{uri}");
        }
        assert_eq!(
            op("/model/m%3A0/converse"),
            Some((Some("m:0".into()), Operation::Converse))
        );
    }

    #[test]
    fn regions_come_from_bedrock_runtime_hosts_only() {
        assert_eq!(
            region_from_host("bedrock-runtime.eu-west-3.amazonaws.com"),
            Some("eu-west-3")
        );
        assert_eq!(
            region_from_host("bedrock-runtime-fips.us-gov-west-1.amazonaws.com"),
            Some("us-gov-west-1")
        );
        assert_eq!(
            region_from_host("bedrock-runtime.cn-north-1.amazonaws.com.cn"),
            Some("cn-north-1")
        );
        for host in [
            "bedrock-runtime.example.org",
            "bedrock-runtime..amazonaws.com",
            "bedrock.us-east-1.amazonaws.com",
            "bedrock-runtime.us-east-1",
            "127.0.0.1",
        ] {
            assert_eq!(region_from_host(host), None, "{host}");
        }
    }

    /// The quota key, the estimator's `RequestInfo` and the output-limit table read one path
    /// the same way.
    #[test]
    fn key_request_info_and_base_model_id_agree() {
        for path in [
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke",
            "/model/us.amazon.nova-pro-v1%3a0/converse-stream?x=1",
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fapac.amazon.nova-lite-v1%3A0/count-tokens",
            "/model/arn:aws:bedrock:us-west-2::foundation-model/meta.llama3-8b-instruct-v1:0/invoke-with-response-stream",
            "/model/anthropic%2Eclaude-3-haiku-20240307-v1%3A0/converse",
            "/model/%20eu.mistral.mistral-large-2407-v1%3A0%20/invoke",
            "/model/x%FF/invoke",
            "/model/m/delete",
            "/model//invoke",
            "/model/m/invoke/",
            "/other",
        ] {
            let request = http::Request::post(path).body(()).unwrap();
            let (key, key_op) = QuotaKey::from_request(&request);
            let info = RequestInfo::from_path(path, b"");
            assert_eq!(key_op, info.operation, "{path}");
            assert_eq!(key.model().is_some(), info.model.is_some(), "{path}");
            if let (Some(decoded), Some(raw)) = (key.model(), info.model) {
                assert_eq!(base_model_id(decoded), base_model_id(raw), "{path}");
            }
        }
    }
}
