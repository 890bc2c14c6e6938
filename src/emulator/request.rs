//! Reading requests: the operation and model id from the path, and the input text and output
//! limit from the body, for each body shape Bedrock accepts.

use percent_encoding::percent_decode_str;
use serde_json::Value;

/// Tokens counted for one image block (Anthropic: about width × height / 750, capped near
/// 1,600; the emulator cannot see the size, so it takes the cap).
pub(crate) const IMAGE_TOKENS: u64 = 1_600;

/// A bedrock-runtime operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Invoke,
    InvokeStream,
    Converse,
    ConverseStream,
    CountTokens,
    /// OpenAI-compatible Chat Completions (its own routes, see `openai`).
    ChatCompletions,
}

impl Operation {
    pub(crate) fn is_stream(self) -> bool {
        matches!(self, Operation::InvokeStream | Operation::ConverseStream)
    }

    pub(crate) fn is_converse(self) -> bool {
        matches!(self, Operation::Converse | Operation::ConverseStream)
    }
}

/// Splits `/model/{modelId}/{operation}` and percent-decodes the model id. The model id may
/// hold `/` (an ARN), encoded or not: the operation is the last segment.
pub(crate) fn parse_path(path: &str) -> Option<(String, Operation)> {
    let rest = path.strip_prefix("/model/")?;
    let (raw_id, op) = rest.rsplit_once('/')?;
    let op = match op {
        "invoke" => Operation::Invoke,
        "invoke-with-response-stream" => Operation::InvokeStream,
        "converse" => Operation::Converse,
        "converse-stream" => Operation::ConverseStream,
        "count-tokens" => Operation::CountTokens,
        _ => return None,
    };
    let id = percent_decode_str(raw_id).decode_utf8().ok()?.into_owned();
    if id.is_empty() {
        return None;
    }
    Some((id, op))
}

/// The body shape of an InvokeModel request, which decides the response shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyShape {
    /// Anthropic Messages (and anything with `messages`: Nova, Mistral chat, Jamba).
    Messages,
    /// Amazon Titan Text.
    Titan,
    /// Meta Llama, Mistral text, Anthropic legacy text: a `prompt`.
    Prompt,
    /// Cohere Command R.
    Cohere,
    /// Converse / ConverseStream.
    Converse,
    /// Anything else: every string counted.
    Other,
}

/// What the emulator reads from a request body.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RequestFacts {
    pub(crate) shape: BodyShape,
    /// Characters of input text.
    pub(crate) chars: u64,
    /// Extra input tokens that are not text (images).
    pub(crate) extra_tokens: u64,
    /// Messages of the conversation: the entries of `messages` (Messages, Converse), the
    /// history and the new message (Cohere), 1 for a single text (Titan, `prompt`), none for
    /// an unknown shape.
    pub(crate) messages: u64,
    /// The output limit the request set, if any.
    pub(crate) max_tokens: Option<u64>,
    /// The output limit a body of this shape defaults to when it sets none (Titan, Llama:
    /// 512), before the model maximum.
    pub(crate) shape_default_max: Option<u64>,
}

impl RequestFacts {
    /// Input tokens: `ceil(chars / chars_per_token)` plus the non-text tokens plus
    /// `tokens_per_message` for each message.
    pub(crate) fn input_tokens(&self, chars_per_token: f64, tokens_per_message: u64) -> u64 {
        count_tokens(self.chars, chars_per_token)
            + self.extra_tokens
            + self.messages.saturating_mul(tokens_per_message)
    }
}

/// `ceil(chars / chars_per_token)`.
pub(crate) fn count_tokens(chars: u64, chars_per_token: f64) -> u64 {
    if chars == 0 {
        return 0;
    }
    let ratio = if chars_per_token.is_finite() && chars_per_token > 0.0 {
        chars_per_token
    } else {
        1.0
    };
    (chars as f64 / ratio).ceil() as u64
}

/// How many entries `v` has when it is an array.
fn entries(v: Option<&Value>) -> u64 {
    v.and_then(Value::as_array).map_or(0, |a| a.len() as u64)
}

pub(crate) fn as_u64(v: Option<&Value>) -> Option<u64> {
    let v = v?;
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

/// Reads a Converse / ConverseStream body.
pub(crate) fn converse_facts(body: &Value) -> RequestFacts {
    let mut counter = TextCounter::default();
    for key in ["system", "messages", "toolConfig"] {
        if let Some(v) = body.get(key) {
            counter.walk(v, None);
        }
    }
    RequestFacts {
        shape: BodyShape::Converse,
        chars: counter.chars,
        extra_tokens: counter.images * IMAGE_TOKENS,
        messages: entries(body.get("messages")),
        max_tokens: as_u64(body.pointer("/inferenceConfig/maxTokens")),
        shape_default_max: None,
    }
}

/// Reads an InvokeModel / InvokeModelWithResponseStream body by its shape.
pub(crate) fn invoke_facts(body: &Value) -> RequestFacts {
    let mut counter = TextCounter::default();
    let (shape, max_tokens, shape_default_max, messages);
    if body.get("messages").is_some() {
        shape = BodyShape::Messages;
        messages = entries(body.get("messages"));
        for key in ["system", "messages", "tools"] {
            if let Some(v) = body.get(key) {
                counter.walk(v, None);
            }
        }
        max_tokens = as_u64(body.get("max_tokens"))
            .or_else(|| as_u64(body.pointer("/inferenceConfig/maxTokens")))
            .or_else(|| as_u64(body.pointer("/inferenceConfig/max_new_tokens")));
        shape_default_max = None;
    } else if let Some(text) = body.get("inputText") {
        shape = BodyShape::Titan;
        messages = 1;
        counter.walk(text, None);
        max_tokens = as_u64(body.pointer("/textGenerationConfig/maxTokenCount"));
        shape_default_max = Some(512);
    } else if let Some(prompt) = body.get("prompt") {
        shape = BodyShape::Prompt;
        messages = 1;
        counter.walk(prompt, None);
        let gen = as_u64(body.get("max_gen_len"));
        max_tokens = gen
            .or_else(|| as_u64(body.get("max_tokens_to_sample")))
            .or_else(|| as_u64(body.get("max_tokens")));
        // Llama's max_gen_len defaults to 512; the others have no documented default.
        shape_default_max = (body.get("max_tokens_to_sample").is_none()
            && body.get("max_tokens").is_none())
        .then_some(512);
    } else if body.get("message").is_some() {
        shape = BodyShape::Cohere;
        messages = entries(body.get("chat_history")) + 1;
        for key in ["preamble", "message", "chat_history"] {
            if let Some(v) = body.get(key) {
                counter.walk(v, None);
            }
        }
        max_tokens = as_u64(body.get("max_tokens"));
        shape_default_max = None;
    } else {
        shape = BodyShape::Other;
        messages = 0;
        counter.walk(body, None);
        max_tokens = as_u64(body.get("max_tokens"));
        shape_default_max = None;
    }
    RequestFacts {
        shape,
        chars: counter.chars,
        extra_tokens: counter.images * IMAGE_TOKENS,
        messages,
        max_tokens,
        shape_default_max,
    }
}

/// Counts characters of every string value, skipping keys that carry no text the model
/// reads (block types, roles, binary payloads) and counting image blocks as
/// [`IMAGE_TOKENS`].
#[derive(Debug, Default)]
pub(crate) struct TextCounter {
    pub(crate) chars: u64,
    pub(crate) images: u64,
}

impl TextCounter {
    pub(crate) fn walk(&mut self, v: &Value, key: Option<&str>) {
        match v {
            Value::String(s) => {
                if !matches!(
                    key,
                    Some(
                        "type"
                            | "role"
                            | "media_type"
                            | "format"
                            | "data"
                            | "bytes"
                            | "toolUseId"
                            | "tool_use_id"
                            | "id"
                            | "status"
                    )
                ) {
                    self.chars += s.chars().count() as u64;
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.walk(item, key);
                }
            }
            Value::Object(map) => {
                let is_image = map.get("type").and_then(Value::as_str) == Some("image");
                if is_image {
                    self.images += 1;
                    return;
                }
                for (k, v) in map {
                    if k == "image" && v.is_object() {
                        self.images += 1;
                        continue;
                    }
                    if matches!(k.as_str(), "cache_control" | "cachePoint" | "source") {
                        continue;
                    }
                    self.walk(v, Some(k));
                }
            }
            Value::Number(_) | Value::Bool(_) | Value::Null => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke"),
            Some((
                "anthropic.claude-3-5-sonnet-20240620-v1:0".to_owned(),
                Operation::Invoke
            ))
        );
        assert_eq!(
            parse_path("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x/converse-stream"),
            Some((
                "arn:aws:bedrock:us-east-1:1:inference-profile/us.x".to_owned(),
                Operation::ConverseStream
            ))
        );
        assert_eq!(parse_path("/model//invoke"), None);
        assert_eq!(parse_path("/model/x/other"), None);
        assert_eq!(parse_path("/foo"), None);
    }

    #[test]
    fn shapes() {
        let f = invoke_facts(&json!({
            "anthropic_version": "bedrock-2023-05-31",
            "system": "abcd",
            "max_tokens": 10,
            "messages": [
                {"role": "user", "content": "efgh"},
                {"role": "user", "content": [{"type": "text", "text": "ij"},
                    {"type": "image", "source": {"type": "base64", "data": "AAAA"}}]}
            ]
        }));
        assert_eq!(f.shape, BodyShape::Messages);
        assert_eq!(
            (f.chars, f.extra_tokens, f.max_tokens),
            (10, IMAGE_TOKENS, Some(10))
        );

        let f = invoke_facts(
            &json!({"inputText": "hello", "textGenerationConfig": {"maxTokenCount": 7}}),
        );
        assert_eq!(
            (f.shape, f.chars, f.max_tokens),
            (BodyShape::Titan, 5, Some(7))
        );
        let f = invoke_facts(&json!({"inputText": "hello"}));
        assert_eq!((f.max_tokens, f.shape_default_max), (None, Some(512)));

        let f = invoke_facts(&json!({"prompt": "hello", "max_gen_len": 9}));
        assert_eq!(
            (f.shape, f.chars, f.max_tokens),
            (BodyShape::Prompt, 5, Some(9))
        );

        let f = invoke_facts(&json!({"foo": "abc", "bar": ["de", {"x": "f"}], "n": 3}));
        assert_eq!(
            (f.shape, f.chars, f.max_tokens),
            (BodyShape::Other, 6, None)
        );

        let f = converse_facts(&json!({
            "system": [{"text": "ab"}],
            "messages": [{"role": "user", "content": [{"text": "cde"}]}],
            "inferenceConfig": {"maxTokens": 5}
        }));
        assert_eq!((f.chars, f.max_tokens, f.messages), (5, Some(5), 1));
        assert_eq!(f.input_tokens(2.0, 0), 3);
        assert_eq!(f.input_tokens(2.0, 3), 6);
    }
}
