//! Bedrock request body shapes: where the text, images and output limit of each are.
//!
//! The estimator picks the shape from the operation (Converse, ConverseStream), then from the
//! model id prefix ([`Shape::from_model`]), then by sniffing the body's top-level keys. It
//! then walks the validated body of that shape in place, reading only these fields and
//! counting their text where it lies, without parsing the body into a tree.
//!
//! What is counted:
//! - text: system prompts, message contents (strings or blocks), legacy prompts, tool
//!   definitions (each serialized to JSON), tool calls (`tool_use` / `toolUse`: name plus the
//!   input serialized to JSON), tool results (strings or nested blocks), reasoning text.
//! - images: base64 data is priced from its real dimensions by [`ImageCost`]; images given by
//!   S3 location or URL cost [`ImageCost::unknown_tokens`].
//! - documents: a text document counts its text. A binary document (PDF, DOCX, …; base64)
//!   costs its decoded size divided by [`DOCUMENT_BYTES_PER_TOKEN`]: Anthropic reports
//!   1,500–3,000 text tokens plus an image per PDF page, and a text-heavy PDF page is
//!   typically 10–30 KB, so 8 bytes a token is about right for ordinary PDFs and errs high for
//!   image-heavy ones. Videos are priced the same way. Documents or videos by S3 location
//!   cost [`UNKNOWN_DOCUMENT_TOKENS`].
//! - fixed overheads, as real chat formats have: [`MESSAGE_OVERHEAD`] per message (and per
//!   system prompt), [`BLOCK_OVERHEAD`] per non-text content block, [`TOOL_OVERHEAD`] per
//!   tool definition, and [`TOOLS_PROMPT_OVERHEAD`] once when any tool is defined (Anthropic
//!   adds a tool-use system prompt of about 300 tokens). Raw prompt shapes (legacy Claude,
//!   Titan, Llama, Mistral `prompt`) add nothing: their prompt already holds the template.

use std::borrow::Cow;

#[cfg(test)]
use serde_json::Map;
use serde_json::Value;

use crate::estimate::scan::{self, Val};

use crate::estimate::image::ImageCost;
use crate::estimate::limits::base_model_id;
use crate::estimate::Operation;

/// Tokens added per message (role markers and separators), and per system prompt.
pub const MESSAGE_OVERHEAD: u64 = 4;
/// Tokens added per non-text content block (image, document, tool call, tool result).
pub const BLOCK_OVERHEAD: u64 = 3;
/// Tokens added per tool definition, on top of its serialized JSON.
pub const TOOL_OVERHEAD: u64 = 8;
/// Tokens added once when a request defines tools (the provider's tool-use system prompt).
pub const TOOLS_PROMPT_OVERHEAD: u64 = 300;
/// Decoded bytes per token for binary documents and videos.
pub const DOCUMENT_BYTES_PER_TOKEN: u64 = 8;
/// Tokens for a document or video whose size cannot be known (S3 location).
pub const UNKNOWN_DOCUMENT_TOKENS: u64 = 3_000;
/// Largest output limit taken from a body; larger values are clamped (Bedrock would refuse
/// them anyway).
pub const MAX_OUTPUT_LIMIT: u64 = 1_000_000;

/// A known request body layout (see the table in `bedrock.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Shape {
    /// Anthropic Messages: `system`, `messages`, `tools`, `max_tokens`.
    AnthropicMessages,
    /// Anthropic legacy text completions: `prompt`, `max_tokens_to_sample`.
    AnthropicText,
    /// Amazon Titan Text: `inputText`, `textGenerationConfig.maxTokenCount`.
    TitanText,
    /// Amazon Titan embeddings: `inputText` (and `inputImage`); no output tokens.
    TitanEmbed,
    /// Amazon Nova: `system[].text`, `messages[].content[]`, `inferenceConfig`.
    Nova,
    /// Meta Llama: `prompt` (and `images`), `max_gen_len`.
    Llama,
    /// Mistral: `prompt` or `messages`, `max_tokens`.
    Mistral,
    /// Cohere Command R: `message`, `chat_history`, `preamble`, `documents`, `max_tokens`.
    CohereCommand,
    /// Cohere embeddings: `texts[]` (and `images[]`); no output tokens.
    CohereEmbed,
    /// AI21 Jamba: `messages`, `max_tokens`.
    Jamba,
    /// Converse and ConverseStream: `system`, `messages`, `toolConfig`, `inferenceConfig.maxTokens`.
    Converse,
}

impl Shape {
    /// The shape implied by a model id (any form [`base_model_id`] accepts), if known.
    ///
    /// ```
    /// use bedrock_throttle::estimate::shapes::Shape;
    /// assert_eq!(
    ///     Shape::from_model("us.anthropic.claude-3-5-haiku-20241022-v1:0"),
    ///     Some(Shape::AnthropicMessages)
    /// );
    /// assert_eq!(Shape::from_model("cohere.embed-english-v3"), Some(Shape::CohereEmbed));
    /// assert_eq!(Shape::from_model("someone.else"), None);
    /// ```
    pub fn from_model(model: &str) -> Option<Shape> {
        let base = base_model_id(model);
        let base = base.as_ref();
        let shape = if base.starts_with("anthropic.") {
            if base.starts_with("anthropic.claude-v2")
                || base.starts_with("anthropic.claude-instant")
            {
                // Claude 2 and Instant accept both; decide by the body.
                return None;
            }
            Shape::AnthropicMessages
        } else if base.starts_with("amazon.titan-text") || base.starts_with("amazon.titan-tg1") {
            Shape::TitanText
        } else if base.starts_with("amazon.titan-embed") || base.starts_with("amazon.titan-e1t") {
            Shape::TitanEmbed
        } else if base.starts_with("amazon.nova") {
            Shape::Nova
        } else if base.starts_with("meta.llama") {
            Shape::Llama
        } else if base.starts_with("mistral.") {
            Shape::Mistral
        } else if base.starts_with("cohere.command") {
            Shape::CohereCommand
        } else if base.starts_with("cohere.embed") {
            Shape::CohereEmbed
        } else if base.starts_with("ai21.jamba") {
            Shape::Jamba
        } else {
            return None;
        };
        Some(shape)
    }

    /// Guesses the shape from the top-level keys of a parsed body: the reference for
    /// [`Shape::sniff_raw`].
    #[cfg(test)]
    fn sniff(body: &Map<String, Value>) -> Option<Shape> {
        let has = |k: &str| body.contains_key(k);
        let shape = if has("anthropic_version") {
            if has("prompt") {
                Shape::AnthropicText
            } else {
                Shape::AnthropicMessages
            }
        } else if has("max_tokens_to_sample") {
            Shape::AnthropicText
        } else if has("inputText") {
            if has("textGenerationConfig") {
                Shape::TitanText
            } else if has("dimensions") || has("normalize") || has("inputImage") {
                Shape::TitanEmbed
            } else {
                // Errs towards reserving output.
                Shape::TitanText
            }
        } else if has("texts") || (has("images") && has("input_type")) {
            Shape::CohereEmbed
        } else if has("message") || has("chat_history") || has("preamble") {
            Shape::CohereCommand
        } else if has("schemaVersion") || has("inferenceConfig") || has("toolConfig") {
            Shape::Nova
        } else if has("max_gen_len") {
            Shape::Llama
        } else if has("prompt") {
            Shape::Mistral
        } else if has("messages") {
            let blocks = body
                .get("messages")
                .and_then(Value::as_array)
                .and_then(|m| m.first())
                .and_then(|m| m.get("content"))
                .and_then(Value::as_array)
                .and_then(|c| c.first());
            match blocks {
                Some(b) if b.get("type").is_some() => Shape::AnthropicMessages,
                Some(_) => Shape::Nova,
                None => Shape::Jamba,
            }
        } else {
            return None;
        };
        Some(shape)
    }

    /// The shape of a request with a parsed body: the reference for [`Shape::detect_raw`].
    #[cfg(test)]
    pub(crate) fn detect(model: Option<&str>, operation: Operation, body: &Value) -> Option<Shape> {
        match operation {
            Operation::Converse | Operation::ConverseStream => return Some(Shape::Converse),
            Operation::CountTokens => return None,
            _ => {}
        }
        let object = body.as_object()?;
        model
            .and_then(Shape::from_model)
            .or_else(|| Shape::sniff(object))
    }

    /// True for embedding shapes, whose output is not tokens.
    pub fn is_embedding(self) -> bool {
        matches!(self, Shape::TitanEmbed | Shape::CohereEmbed)
    }
}

/// The output limit field of a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputField {
    /// The field is absent (or null): use the model's default.
    Absent,
    /// A usable value (clamped to [`MAX_OUTPUT_LIMIT`]).
    Value(u64),
    /// Present but unusable (negative, not a number, a non-numeric string): the model's
    /// default applies.
    Invalid,
}

/// What the walk of a body found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Measured {
    /// Input tokens: text, images, documents and overheads.
    pub(crate) input_tokens: u64,
    /// The output limit field.
    pub(crate) output: OutputField,
    /// Number of images seen.
    pub(crate) images: u32,
    /// A text-bearing field had the wrong type and was skipped, so `input_tokens` may be
    /// low.
    pub(crate) partial: bool,
}

/// Walks a parsed `body` as `shape` and adds up its input tokens, counting text with
/// `count`: the reference walk over a `serde_json::Value` that [`measure_raw`] is tested
/// against.
#[cfg(test)]
pub(crate) fn measure(
    shape: Shape,
    body: &Value,
    count: &dyn Fn(&str) -> u64,
    images: &ImageCost,
) -> Measured {
    let mut w = Walker {
        count,
        image_cost: images,
        tokens: 0,
        images: 0,
        partial: false,
    };
    let empty = Map::new();
    let b = body.as_object().unwrap_or(&empty);
    let output = match shape {
        Shape::AnthropicMessages => {
            w.system(b.get("system"));
            w.messages(b.get("messages"), "content");
            w.tools(b.get("tools"));
            output_field(b.get("max_tokens"), "max_tokens")
        }
        Shape::AnthropicText => {
            w.text(b.get("prompt"), "prompt");
            output_field(b.get("max_tokens_to_sample"), "max_tokens_to_sample")
        }
        Shape::TitanText => {
            w.text(b.get("inputText"), "inputText");
            output_field(
                b.get("textGenerationConfig")
                    .and_then(|c| c.get("maxTokenCount")),
                "textGenerationConfig.maxTokenCount",
            )
        }
        Shape::TitanEmbed => {
            w.text(b.get("inputText"), "inputText");
            if let Some(img) = b.get("inputImage") {
                w.image_data(img.as_str());
            }
            OutputField::Value(0)
        }
        Shape::Nova | Shape::Converse => {
            w.system(b.get("system"));
            w.messages(b.get("messages"), "content");
            if let Some(tools) = b.get("toolConfig").and_then(|t| t.get("tools")) {
                w.tools(Some(tools));
            }
            let config = b.get("inferenceConfig");
            let max_tokens = config.and_then(|c| c.get("maxTokens"));
            let max_new = config.and_then(|c| c.get("max_new_tokens"));
            match (max_tokens, max_new) {
                (Some(v), _) if !v.is_null() => output_field(Some(v), "inferenceConfig.maxTokens"),
                (_, v) => output_field(v, "inferenceConfig.max_new_tokens"),
            }
        }
        Shape::Llama => {
            w.text(b.get("prompt"), "prompt");
            if let Some(images) = b.get("images").and_then(Value::as_array) {
                for img in images {
                    w.image_data(img.as_str());
                }
            }
            output_field(b.get("max_gen_len"), "max_gen_len")
        }
        Shape::Mistral | Shape::Jamba => {
            if b.contains_key("prompt") {
                w.text(b.get("prompt"), "prompt");
            }
            if b.contains_key("messages") || !b.contains_key("prompt") {
                w.messages(b.get("messages"), "content");
            }
            w.tools(b.get("tools"));
            if let Some(docs) = b.get("documents") {
                w.json(docs);
            }
            output_field(b.get("max_tokens"), "max_tokens")
        }
        Shape::CohereCommand => {
            w.text(b.get("message"), "message");
            if let Some(p) = b.get("preamble") {
                w.tokens += MESSAGE_OVERHEAD;
                w.text(Some(p), "preamble");
            }
            if b.get("chat_history").is_some_and(|h| !h.is_null()) {
                w.messages(b.get("chat_history"), "message");
            }
            w.tokens += MESSAGE_OVERHEAD;
            if let Some(docs) = b.get("documents") {
                w.json(docs);
            }
            w.tools(b.get("tools"));
            output_field(b.get("max_tokens"), "max_tokens")
        }
        Shape::CohereEmbed => {
            match b.get("texts") {
                Some(Value::Array(texts)) => {
                    for t in texts {
                        w.text(Some(t), "texts[]");
                    }
                }
                None | Some(Value::Null) => {}
                Some(_) => w.wrong_type("texts"),
            }
            if let Some(images) = b.get("images").and_then(Value::as_array) {
                for img in images {
                    w.image_data(img.as_str());
                }
            }
            OutputField::Value(0)
        }
    };
    Measured {
        input_tokens: w.tokens,
        output,
        images: w.images,
        partial: w.partial,
    }
}

/// Reads an output limit field leniently: integers, finite non-negative floats (rounded up)
/// and numeric strings are accepted; anything else is [`OutputField::Invalid`].
pub fn output_field(value: Option<&Value>, name: &str) -> OutputField {
    let n = match value {
        None | Some(Value::Null) => return OutputField::Absent,
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Some(u)
            } else {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f.ceil().min(MAX_OUTPUT_LIMIT as f64) as u64)
            }
        }
        Some(Value::String(s)) => {
            tracing::debug!(
                field = name,
                len = s.len(),
                "output limit given as a string"
            );
            s.trim().parse::<u64>().ok()
        }
        Some(_) => None,
    };
    match n {
        Some(n) if n > MAX_OUTPUT_LIMIT => {
            tracing::debug!(field = name, value = n, "output limit clamped");
            OutputField::Value(MAX_OUTPUT_LIMIT)
        }
        Some(n) => OutputField::Value(n),
        None => {
            // The value is request content: say only what kind it is.
            let kind = value.map_or("absent", json_kind);
            tracing::debug!(field = name, kind, "unusable output limit ignored");
            OutputField::Invalid
        }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
struct Walker<'a> {
    count: &'a dyn Fn(&str) -> u64,
    image_cost: &'a ImageCost,
    tokens: u64,
    images: u32,
    partial: bool,
}

#[cfg(test)]
impl Walker<'_> {
    fn add(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_add(n);
    }

    fn wrong_type(&mut self, field: &str) {
        tracing::debug!(field, "request field has an unexpected type; skipped");
        self.partial = true;
    }

    fn count_str(&mut self, s: &str) {
        let n = (self.count)(s);
        self.add(n);
    }

    /// A field that should be a string.
    fn text(&mut self, v: Option<&Value>, field: &str) {
        match v {
            Some(Value::String(s)) => self.count_str(s),
            None | Some(Value::Null) => {}
            Some(_) => self.wrong_type(field),
        }
    }

    /// Any JSON value, counted as its serialization (strings as themselves).
    fn json(&mut self, v: &Value) {
        match v {
            Value::Null => {}
            Value::String(s) => self.count_str(s),
            other => {
                let s = other.to_string();
                self.count_str(&s);
            }
        }
    }

    fn system(&mut self, v: Option<&Value>) {
        match v {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                self.add(MESSAGE_OVERHEAD);
                self.count_str(s);
            }
            Some(Value::Array(blocks)) => {
                self.add(MESSAGE_OVERHEAD);
                for b in blocks {
                    self.block(b);
                }
            }
            Some(_) => self.wrong_type("system"),
        }
    }

    fn messages(&mut self, v: Option<&Value>, content_key: &str) {
        match v {
            None | Some(Value::Null) => {}
            Some(Value::Array(messages)) => {
                for m in messages {
                    self.add(MESSAGE_OVERHEAD);
                    match m {
                        Value::Object(m) => {
                            self.content(m.get(content_key));
                            // OpenAI-style tool calls (Mistral, Jamba).
                            if let Some(calls) = m.get("tool_calls") {
                                self.json(calls);
                            }
                        }
                        _ => self.wrong_type("messages[]"),
                    }
                }
            }
            Some(_) => self.wrong_type("messages"),
        }
    }

    fn content(&mut self, v: Option<&Value>) {
        match v {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => self.count_str(s),
            Some(Value::Array(blocks)) => {
                for b in blocks {
                    self.block(b);
                }
            }
            Some(b @ Value::Object(_)) => self.block(b),
            Some(_) => self.wrong_type("content"),
        }
    }

    /// One content block, Anthropic (`type`) or Converse/Nova (keyed) style.
    fn block(&mut self, b: &Value) {
        let Value::Object(o) = b else {
            if let Value::String(s) = b {
                self.count_str(s);
            } else if !b.is_null() {
                self.wrong_type("content block");
            }
            return;
        };
        if let Some(kind) = o.get("type").and_then(Value::as_str) {
            match kind {
                "text" | "input_text" => self.text(o.get("text"), "text"),
                "image" => {
                    self.add(BLOCK_OVERHEAD);
                    let source = o.get("source");
                    let data = match source.and_then(|s| s.get("type")).and_then(Value::as_str) {
                        Some("base64") => {
                            source.and_then(|s| s.get("data")).and_then(Value::as_str)
                        }
                        _ => None,
                    };
                    self.image_data(data);
                }
                "image_url" => {
                    // OpenAI style: `{"image_url": {"url": "data:image/png;base64,..."}}`.
                    self.add(BLOCK_OVERHEAD);
                    let url = o.get("image_url").and_then(|u| u.get("url").or(Some(u)));
                    let data = url
                        .and_then(Value::as_str)
                        .filter(|u| u.starts_with("data:"));
                    self.image_data(data);
                }
                "document" => {
                    self.add(BLOCK_OVERHEAD);
                    self.anthropic_document(o);
                }
                "tool_use" | "server_tool_use" => {
                    self.add(BLOCK_OVERHEAD);
                    self.text(o.get("name"), "tool_use.name");
                    if let Some(input) = o.get("input") {
                        self.json(input);
                    }
                }
                "tool_result" | "web_search_tool_result" => {
                    self.add(BLOCK_OVERHEAD);
                    self.content(o.get("content"));
                }
                "thinking" => self.text(o.get("thinking"), "thinking"),
                "redacted_thinking" => {
                    if let Some(d) = o.get("data").and_then(Value::as_str) {
                        self.add(crate::estimate::text::count_bytes(d.len()));
                    }
                }
                _ => self.json(b),
            }
            return;
        }
        if let Some(t) = o.get("text") {
            self.text(Some(t), "text");
        } else if let Some(img) = o.get("image") {
            self.add(BLOCK_OVERHEAD);
            let data = img
                .get("source")
                .and_then(|s| s.get("bytes"))
                .and_then(Value::as_str);
            self.image_data(data);
        } else if let Some(doc) = o.get("document").or_else(|| o.get("video")) {
            self.add(BLOCK_OVERHEAD);
            self.keyed_document(doc);
        } else if let Some(tool) = o.get("toolUse") {
            self.add(BLOCK_OVERHEAD);
            self.text(tool.get("name"), "toolUse.name");
            if let Some(input) = tool.get("input") {
                self.json(input);
            }
        } else if let Some(result) = o.get("toolResult") {
            self.add(BLOCK_OVERHEAD);
            self.content(result.get("content"));
        } else if let Some(j) = o.get("json") {
            self.json(j);
        } else if let Some(r) = o.get("reasoningContent") {
            let text = r.get("reasoningText").and_then(|t| t.get("text"));
            self.text(text, "reasoningContent.reasoningText.text");
        } else if let Some(g) = o.get("guardContent") {
            self.text(
                g.get("text").and_then(|t| t.get("text")),
                "guardContent.text",
            );
        } else if !(o.contains_key("cachePoint") || o.contains_key("cache_control")) {
            self.json(b);
        }
    }

    fn image_data(&mut self, base64: Option<&str>) {
        self.images = self.images.saturating_add(1);
        let dims = base64.and_then(crate::estimate::image::dimensions_base64);
        let tokens = self.image_cost.tokens(dims);
        self.add(tokens);
    }

    fn binary_document(&mut self, base64_len: usize) {
        let decoded = (base64_len as u64) / 4 * 3;
        self.add(decoded.div_ceil(DOCUMENT_BYTES_PER_TOKEN));
    }

    fn anthropic_document(&mut self, o: &Map<String, Value>) {
        if let Some(t) = o.get("title") {
            self.json(t);
        }
        if let Some(c) = o.get("context") {
            self.json(c);
        }
        let Some(source) = o.get("source") else {
            return;
        };
        match source.get("type").and_then(Value::as_str) {
            Some("text") => self.text(source.get("data"), "document.source.data"),
            Some("base64") => match source.get("data") {
                Some(Value::String(d)) => self.binary_document(d.len()),
                _ => self.wrong_type("document.source.data"),
            },
            Some("content") => self.content(source.get("content")),
            _ => self.add(UNKNOWN_DOCUMENT_TOKENS),
        }
    }

    fn keyed_document(&mut self, doc: &Value) {
        if let Some(name) = doc.get("name") {
            self.json(name);
        }
        let source = doc.get("source");
        if let Some(bytes) = source.and_then(|s| s.get("bytes")) {
            match bytes {
                Value::String(d) => self.binary_document(d.len()),
                _ => self.wrong_type("document.source.bytes"),
            }
        } else if let Some(text) = source.and_then(|s| s.get("text")) {
            self.text(Some(text), "document.source.text");
        } else if let Some(content) = source.and_then(|s| s.get("content")) {
            self.content(Some(content));
        } else {
            self.add(UNKNOWN_DOCUMENT_TOKENS);
        }
    }

    fn tools(&mut self, v: Option<&Value>) {
        match v {
            None | Some(Value::Null) => {}
            Some(Value::Array(tools)) => {
                if !tools.is_empty() {
                    self.add(TOOLS_PROMPT_OVERHEAD);
                }
                for t in tools {
                    self.add(TOOL_OVERHEAD);
                    // Converse / Nova wrap the definition in `toolSpec`.
                    self.json(t.get("toolSpec").unwrap_or(t));
                }
            }
            Some(_) => self.wrong_type("tools"),
        }
    }
}

/// How the raw walk counts text: a plain string, or a JSON string by its raw text.
pub(crate) trait TextCount {
    /// Tokens in `text`.
    fn count(&self, text: &str) -> u64;

    /// Tokens in the value of the JSON string whose raw text (between the quotes, escapes
    /// as written) is `raw`.
    fn count_raw(&self, raw: &str) -> u64 {
        self.count(&scan::unescape(raw))
    }
}

/// Any counter function: escaped strings are unescaped into a temporary `String`.
pub(crate) struct CountFn<'a>(pub(crate) &'a dyn Fn(&str) -> u64);

impl TextCount for CountFn<'_> {
    fn count(&self, text: &str) -> u64 {
        (self.0)(text)
    }
}

/// [`count_tokens`](crate::estimate::text::count_tokens), fed escaped strings piece by piece.
pub(crate) struct Heuristic;

impl TextCount for Heuristic {
    fn count(&self, text: &str) -> u64 {
        crate::estimate::text::count_tokens(text)
    }

    fn count_raw(&self, raw: &str) -> u64 {
        crate::estimate::text::count_json_string(raw)
    }
}

impl Shape {
    /// The shape of a request: Converse operations first, then the model id, then the
    /// body's keys. `None` for CountTokens, `Other` bodies that do not sniff, and non-objects.
    pub(crate) fn detect_raw(
        model: Option<&str>,
        operation: Operation,
        body: Val<'_>,
    ) -> Option<Shape> {
        match operation {
            Operation::Converse | Operation::ConverseStream => return Some(Shape::Converse),
            Operation::CountTokens => return None,
            _ => {}
        }
        if !body.is_object() {
            return None;
        }
        model
            .and_then(Shape::from_model)
            .or_else(|| Shape::sniff_raw(body))
    }

    /// Guesses the shape from the top-level keys of an object.
    fn sniff_raw(body: Val<'_>) -> Option<Shape> {
        const KEYS: [&str; 19] = [
            "anthropic_version",
            "prompt",
            "max_tokens_to_sample",
            "inputText",
            "textGenerationConfig",
            "dimensions",
            "normalize",
            "inputImage",
            "texts",
            "images",
            "input_type",
            "message",
            "chat_history",
            "preamble",
            "schemaVersion",
            "inferenceConfig",
            "toolConfig",
            "max_gen_len",
            "messages",
        ];
        let found = body.fields(KEYS);
        let has = |k: &str| {
            KEYS.iter()
                .position(|key| *key == k)
                .is_some_and(|i| found[i].is_some())
        };
        let shape = if has("anthropic_version") {
            if has("prompt") {
                Shape::AnthropicText
            } else {
                Shape::AnthropicMessages
            }
        } else if has("max_tokens_to_sample") {
            Shape::AnthropicText
        } else if has("inputText") {
            if has("textGenerationConfig") {
                Shape::TitanText
            } else if has("dimensions") || has("normalize") || has("inputImage") {
                Shape::TitanEmbed
            } else {
                Shape::TitanText
            }
        } else if has("texts") || (has("images") && has("input_type")) {
            Shape::CohereEmbed
        } else if has("message") || has("chat_history") || has("preamble") {
            Shape::CohereCommand
        } else if has("schemaVersion") || has("inferenceConfig") || has("toolConfig") {
            Shape::Nova
        } else if has("max_gen_len") {
            Shape::Llama
        } else if has("prompt") {
            Shape::Mistral
        } else if let Some(messages) = found[18] {
            let block = messages
                .elements()
                .next()
                .and_then(|m| m.get("content"))
                .filter(|c| c.is_array())
                .and_then(|c| c.elements().next());
            match block {
                Some(b) if b.get("type").is_some() => Shape::AnthropicMessages,
                Some(_) => Shape::Nova,
                None => Shape::Jamba,
            }
        } else {
            return None;
        };
        Some(shape)
    }
}

/// Walks a validated `body` as `shape` and adds up its input tokens, without parsing it:
/// only the fields it needs are read from the raw text, and strings are counted where they
/// are.
pub(crate) fn measure_raw(
    shape: Shape,
    body: Val<'_>,
    count: &impl TextCount,
    images: &ImageCost,
) -> Measured {
    let mut w = RawWalker {
        count,
        image_cost: images,
        tokens: 0,
        images: 0,
        partial: false,
    };
    let b = body;
    let output = match shape {
        Shape::AnthropicMessages => {
            let [system, messages, tools, max_tokens] =
                b.fields(["system", "messages", "tools", "max_tokens"]);
            w.system(system);
            w.messages(messages, "content");
            w.tools(tools);
            raw_output_field(max_tokens, "max_tokens")
        }
        Shape::AnthropicText => {
            let [prompt, max] = b.fields(["prompt", "max_tokens_to_sample"]);
            w.text(prompt, "prompt");
            raw_output_field(max, "max_tokens_to_sample")
        }
        Shape::TitanText => {
            let [input, config] = b.fields(["inputText", "textGenerationConfig"]);
            w.text(input, "inputText");
            raw_output_field(
                config.and_then(|c| c.get("maxTokenCount")),
                "textGenerationConfig.maxTokenCount",
            )
        }
        Shape::TitanEmbed => {
            let [input, image] = b.fields(["inputText", "inputImage"]);
            w.text(input, "inputText");
            if let Some(img) = image {
                w.image_data(img.as_str());
            }
            OutputField::Value(0)
        }
        Shape::Nova | Shape::Converse => {
            let [system, messages, tool_config, config] =
                b.fields(["system", "messages", "toolConfig", "inferenceConfig"]);
            w.system(system);
            w.messages(messages, "content");
            if let Some(tools) = tool_config.and_then(|t| t.get("tools")) {
                w.tools(Some(tools));
            }
            let [max_tokens, max_new] = match config {
                Some(c) => c.fields(["maxTokens", "max_new_tokens"]),
                None => [None, None],
            };
            match (max_tokens, max_new) {
                (Some(v), _) if !v.is_null() => {
                    raw_output_field(Some(v), "inferenceConfig.maxTokens")
                }
                (_, v) => raw_output_field(v, "inferenceConfig.max_new_tokens"),
            }
        }
        Shape::Llama => {
            let [prompt, images, max] = b.fields(["prompt", "images", "max_gen_len"]);
            w.text(prompt, "prompt");
            if let Some(images) = images {
                for img in images.elements() {
                    w.image_data(img.as_str());
                }
            }
            raw_output_field(max, "max_gen_len")
        }
        Shape::Mistral | Shape::Jamba => {
            let [prompt, messages, tools, documents, max_tokens] =
                b.fields(["prompt", "messages", "tools", "documents", "max_tokens"]);
            if prompt.is_some() {
                w.text(prompt, "prompt");
            }
            if messages.is_some() || prompt.is_none() {
                w.messages(messages, "content");
            }
            w.tools(tools);
            if let Some(docs) = documents {
                w.json(docs);
            }
            raw_output_field(max_tokens, "max_tokens")
        }
        Shape::CohereCommand => {
            let [message, preamble, history, documents, tools, max_tokens] = b.fields([
                "message",
                "preamble",
                "chat_history",
                "documents",
                "tools",
                "max_tokens",
            ]);
            w.text(message, "message");
            if let Some(p) = preamble {
                w.tokens += MESSAGE_OVERHEAD;
                w.text(Some(p), "preamble");
            }
            if history.is_some_and(|h| !h.is_null()) {
                w.messages(history, "message");
            }
            w.tokens += MESSAGE_OVERHEAD;
            if let Some(docs) = documents {
                w.json(docs);
            }
            w.tools(tools);
            raw_output_field(max_tokens, "max_tokens")
        }
        Shape::CohereEmbed => {
            let [texts, images] = b.fields(["texts", "images"]);
            match texts {
                Some(texts) if texts.is_array() => {
                    for t in texts.elements() {
                        w.text(Some(t), "texts[]");
                    }
                }
                None => {}
                Some(t) if t.is_null() => {}
                Some(_) => w.wrong_type("texts"),
            }
            if let Some(images) = images {
                for img in images.elements() {
                    w.image_data(img.as_str());
                }
            }
            OutputField::Value(0)
        }
    };
    Measured {
        input_tokens: w.tokens,
        output,
        images: w.images,
        partial: w.partial,
    }
}

/// [`output_field`] of a raw value (a number or short string, parsed on its own).
fn raw_output_field(value: Option<Val<'_>>, name: &str) -> OutputField {
    output_field(value.map(Val::to_value).as_ref(), name)
}

/// [`Walker`] over raw values.
struct RawWalker<'a, C> {
    count: &'a C,
    image_cost: &'a ImageCost,
    tokens: u64,
    images: u32,
    partial: bool,
}

impl<C: TextCount> RawWalker<'_, C> {
    fn add(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_add(n);
    }

    fn wrong_type(&mut self, field: &str) {
        tracing::debug!(field, "request field has an unexpected type; skipped");
        self.partial = true;
    }

    /// A string value, counted where it is.
    fn count_raw(&mut self, raw: &str) {
        let n = self.count.count_raw(raw);
        self.add(n);
    }

    fn text(&mut self, v: Option<Val<'_>>, field: &str) {
        match v {
            None => {}
            Some(v) => match v.string_raw() {
                Some(raw) => self.count_raw(raw),
                None if v.is_null() => {}
                None => self.wrong_type(field),
            },
        }
    }

    /// Any JSON value, counted as its serialization (strings as themselves). Non-string
    /// values are parsed and re-serialized, as the reference walk counts them.
    fn json(&mut self, v: Val<'_>) {
        if let Some(raw) = v.string_raw() {
            self.count_raw(raw);
        } else if !v.is_null() {
            let s = v.to_value().to_string();
            let n = self.count.count(&s);
            self.add(n);
        }
    }

    fn system(&mut self, v: Option<Val<'_>>) {
        let Some(v) = v else { return };
        if let Some(raw) = v.string_raw() {
            self.add(MESSAGE_OVERHEAD);
            self.count_raw(raw);
        } else if v.is_array() {
            self.add(MESSAGE_OVERHEAD);
            for b in v.elements() {
                self.block(b);
            }
        } else if !v.is_null() {
            self.wrong_type("system");
        }
    }

    fn messages(&mut self, v: Option<Val<'_>>, content_key: &str) {
        let Some(v) = v else { return };
        if v.is_array() {
            for m in v.elements() {
                self.add(MESSAGE_OVERHEAD);
                if m.is_object() {
                    let [content, calls] = m.fields([content_key, "tool_calls"]);
                    self.content(content);
                    if let Some(calls) = calls {
                        self.json(calls);
                    }
                } else {
                    self.wrong_type("messages[]");
                }
            }
        } else if !v.is_null() {
            self.wrong_type("messages");
        }
    }

    fn content(&mut self, v: Option<Val<'_>>) {
        let Some(v) = v else { return };
        if let Some(raw) = v.string_raw() {
            self.count_raw(raw);
        } else if v.is_array() {
            for b in v.elements() {
                self.block(b);
            }
        } else if v.is_object() {
            self.block(v);
        } else if !v.is_null() {
            self.wrong_type("content");
        }
    }

    fn block(&mut self, o: Val<'_>) {
        if !o.is_object() {
            if let Some(raw) = o.string_raw() {
                self.count_raw(raw);
            } else if !o.is_null() {
                self.wrong_type("content block");
            }
            return;
        }
        // Most blocks are `{"type": …, "text": …}` (Anthropic) or `{"text": …}` (Converse):
        // two keys first, the keyed kinds only when neither is there.
        let [kind, text] = o.fields(["type", "text"]);
        if let Some(kind) = kind.and_then(Val::as_str) {
            match kind.as_ref() {
                "text" | "input_text" => self.text(text, "text"),
                "image" => {
                    self.add(BLOCK_OVERHEAD);
                    let source = o.get("source");
                    let data = match source.and_then(|s| s.get("type")) {
                        Some(t) if t.str_eq("base64") => {
                            source.and_then(|s| s.get("data")).and_then(Val::as_str)
                        }
                        _ => None,
                    };
                    self.image_data(data);
                }
                "image_url" => {
                    self.add(BLOCK_OVERHEAD);
                    let url = o.get("image_url").and_then(|u| u.get("url").or(Some(u)));
                    let data = url.and_then(Val::as_str).filter(|u| u.starts_with("data:"));
                    self.image_data(data);
                }
                "document" => {
                    self.add(BLOCK_OVERHEAD);
                    self.anthropic_document(o);
                }
                "tool_use" | "server_tool_use" => {
                    self.add(BLOCK_OVERHEAD);
                    let [name, input] = o.fields(["name", "input"]);
                    self.text(name, "tool_use.name");
                    if let Some(input) = input {
                        self.json(input);
                    }
                }
                "tool_result" | "web_search_tool_result" => {
                    self.add(BLOCK_OVERHEAD);
                    self.content(o.get("content"));
                }
                "thinking" => self.text(o.get("thinking"), "thinking"),
                "redacted_thinking" => {
                    if let Some(d) = o.get("data").and_then(Val::as_str) {
                        self.add(crate::estimate::text::count_bytes(d.len()));
                    }
                }
                _ => self.json(o),
            }
            return;
        }
        if let Some(t) = text {
            self.text(Some(t), "text");
            return;
        }
        let [image, document, video, tool_use, tool_result, json, reasoning, guard, cache_point, cache_control] =
            o.fields([
                "image",
                "document",
                "video",
                "toolUse",
                "toolResult",
                "json",
                "reasoningContent",
                "guardContent",
                "cachePoint",
                "cache_control",
            ]);
        if let Some(img) = image {
            self.add(BLOCK_OVERHEAD);
            let data = img
                .get("source")
                .and_then(|s| s.get("bytes"))
                .and_then(Val::as_str);
            self.image_data(data);
        } else if let Some(doc) = document.or(video) {
            self.add(BLOCK_OVERHEAD);
            self.keyed_document(doc);
        } else if let Some(tool) = tool_use {
            self.add(BLOCK_OVERHEAD);
            let [name, input] = tool.fields(["name", "input"]);
            self.text(name, "toolUse.name");
            if let Some(input) = input {
                self.json(input);
            }
        } else if let Some(result) = tool_result {
            self.add(BLOCK_OVERHEAD);
            self.content(result.get("content"));
        } else if let Some(j) = json {
            self.json(j);
        } else if let Some(r) = reasoning {
            let text = r.get("reasoningText").and_then(|t| t.get("text"));
            self.text(text, "reasoningContent.reasoningText.text");
        } else if let Some(g) = guard {
            self.text(
                g.get("text").and_then(|t| t.get("text")),
                "guardContent.text",
            );
        } else if cache_point.is_none() && cache_control.is_none() {
            self.json(o);
        }
    }

    fn image_data(&mut self, base64: Option<Cow<'_, str>>) {
        self.images = self.images.saturating_add(1);
        let dims = base64
            .as_deref()
            .and_then(crate::estimate::image::dimensions_base64);
        let tokens = self.image_cost.tokens(dims);
        self.add(tokens);
    }

    fn binary_document(&mut self, base64_len: usize) {
        let decoded = (base64_len as u64) / 4 * 3;
        self.add(decoded.div_ceil(DOCUMENT_BYTES_PER_TOKEN));
    }

    fn anthropic_document(&mut self, o: Val<'_>) {
        let [title, context, source] = o.fields(["title", "context", "source"]);
        if let Some(t) = title {
            self.json(t);
        }
        if let Some(c) = context {
            self.json(c);
        }
        let Some(source) = source else {
            return;
        };
        let [kind, data, content] = source.fields(["type", "data", "content"]);
        match kind.and_then(Val::as_str).as_deref() {
            Some("text") => self.text(data, "document.source.data"),
            Some("base64") => match data.and_then(Val::as_str) {
                Some(d) => self.binary_document(d.len()),
                None => self.wrong_type("document.source.data"),
            },
            Some("content") => self.content(content),
            _ => self.add(UNKNOWN_DOCUMENT_TOKENS),
        }
    }

    fn keyed_document(&mut self, doc: Val<'_>) {
        let [name, source] = doc.fields(["name", "source"]);
        if let Some(name) = name {
            self.json(name);
        }
        let [bytes, text, content] = match source {
            Some(s) => s.fields(["bytes", "text", "content"]),
            None => [None, None, None],
        };
        if let Some(bytes) = bytes {
            match bytes.as_str() {
                Some(d) => self.binary_document(d.len()),
                None => self.wrong_type("document.source.bytes"),
            }
        } else if let Some(text) = text {
            self.text(Some(text), "document.source.text");
        } else if let Some(content) = content {
            self.content(Some(content));
        } else {
            self.add(UNKNOWN_DOCUMENT_TOKENS);
        }
    }

    fn tools(&mut self, v: Option<Val<'_>>) {
        let Some(v) = v else { return };
        if v.is_array() {
            if v.elements().next().is_some() {
                self.add(TOOLS_PROMPT_OVERHEAD);
            }
            for t in v.elements() {
                self.add(TOOL_OVERHEAD);
                self.json(t.get("toolSpec").unwrap_or(t));
            }
        } else if !v.is_null() {
            self.wrong_type("tools");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn words(s: &str) -> u64 {
        s.split_whitespace().count() as u64
    }

    fn m(shape: Shape, body: Value) -> Measured {
        measure(shape, &body, &words, &ImageCost::default())
    }

    #[test]
    fn detect_by_operation_model_and_keys() {
        let body = json!({"messages": []});
        assert_eq!(
            Shape::detect(Some("meta.llama3"), Operation::Converse, &body),
            Some(Shape::Converse)
        );
        assert_eq!(
            Shape::detect(
                Some("arn:aws:bedrock:us-east-1:1:inference-profile/us.amazon.nova-lite-v1:0"),
                Operation::Invoke,
                &body
            ),
            Some(Shape::Nova)
        );
        assert_eq!(Shape::detect(None, Operation::CountTokens, &body), None);
        let sniff = |v: Value| Shape::detect(None, Operation::Invoke, &v);
        assert_eq!(
            sniff(json!({"anthropic_version": "x", "messages": []})),
            Some(Shape::AnthropicMessages)
        );
        assert_eq!(
            sniff(json!({"prompt": "x", "max_tokens_to_sample": 5})),
            Some(Shape::AnthropicText)
        );
        assert_eq!(
            sniff(json!({"inputText": "x", "textGenerationConfig": {}})),
            Some(Shape::TitanText)
        );
        assert_eq!(
            sniff(json!({"inputText": "x", "dimensions": 256})),
            Some(Shape::TitanEmbed)
        );
        assert_eq!(
            sniff(json!({"texts": ["a"], "input_type": "search_query"})),
            Some(Shape::CohereEmbed)
        );
        assert_eq!(sniff(json!({"message": "hi"})), Some(Shape::CohereCommand));
        assert_eq!(
            sniff(json!({"schemaVersion": "messages-v1", "messages": []})),
            Some(Shape::Nova)
        );
        assert_eq!(
            sniff(json!({"prompt": "x", "max_gen_len": 5})),
            Some(Shape::Llama)
        );
        assert_eq!(sniff(json!({"prompt": "x"})), Some(Shape::Mistral));
        assert_eq!(
            sniff(json!({"messages": [{"role": "user", "content": "x"}]})),
            Some(Shape::Jamba)
        );
        assert_eq!(
            sniff(
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]})
            ),
            Some(Shape::AnthropicMessages)
        );
        assert_eq!(
            sniff(json!({"messages": [{"role": "user", "content": [{"text": "x"}]}]})),
            Some(Shape::Nova)
        );
        assert_eq!(sniff(json!({"foo": 1})), None);
        assert_eq!(sniff(json!([1, 2])), None);
        // Claude 2 decides by body.
        assert_eq!(
            Shape::detect(
                Some("anthropic.claude-v2:1"),
                Operation::Invoke,
                &json!({"prompt": "x", "max_tokens_to_sample": 5})
            ),
            Some(Shape::AnthropicText)
        );
    }

    #[test]
    fn anthropic_messages_blocks() {
        let got = m(
            Shape::AnthropicMessages,
            json!({
                "anthropic_version": "bedrock-2023-05-31",
                "max_tokens": 100,
                "system": [{"type": "text", "text": "be brief"}],
                "messages": [
                    {"role": "user", "content": "one two three"},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "four"},
                        {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": "five six"}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "seven eight"}]},
                        {"type": "tool_result", "tool_use_id": "t1", "content": "nine"},
                        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "ten eleven"}},
                        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "A".repeat(800)}},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}}
                    ]}
                ],
                "tools": [{"name": "lookup", "description": "look it up", "input_schema": {"type": "object"}}]
            }),
        );
        // system 4+2, messages 3×4, text 3+1, tool_use 3+1+2, results 3+2, 3+1,
        // text doc 3+2, pdf 3+600/8=75, image 3+1600, tools 300+8+(3 words of json)
        let expected = 6 + 12 + 4 + 6 + 5 + 4 + 5 + 78 + 1603 + 311;
        assert_eq!(got.input_tokens, expected);
        assert_eq!(got.output, OutputField::Value(100));
        assert_eq!(got.images, 1);
        assert!(!got.partial);
    }

    #[test]
    fn converse_and_nova() {
        let body = json!({
            "system": [{"text": "a b"}, {"cachePoint": {"type": "default"}}],
            "messages": [{"role": "user", "content": [
                {"text": "c d e"},
                {"image": {"format": "png", "source": {"s3Location": {"uri": "s3://b/k"}}}},
                {"document": {"format": "txt", "name": "n", "source": {"bytes": "QUFB"}}},
                {"toolUse": {"toolUseId": "1", "name": "f", "input": {}}},
                {"toolResult": {"toolUseId": "1", "content": [{"text": "g"}, {"json": {"h": 1}}]}}
            ]}],
            "toolConfig": {"tools": [{"toolSpec": {"name": "f", "description": "x", "inputSchema": {"json": {}}}}]},
            "inferenceConfig": {"maxTokens": 77}
        });
        let got = m(Shape::Converse, body.clone());
        // system 4+2, message 4+3, image 3+1600, doc 3+1+1, toolUse 3+1+1, result 3+1+1,
        // tools 300+8+1
        assert_eq!(got.input_tokens, 6 + 7 + 1603 + 5 + 5 + 5 + 309);
        assert_eq!(got.output, OutputField::Value(77));
        let nova = json!({"messages": [{"role": "user", "content": [{"text": "x"}]}], "inferenceConfig": {"max_new_tokens": 12}});
        assert_eq!(m(Shape::Nova, nova).output, OutputField::Value(12));
        let none = json!({"messages": []});
        assert_eq!(m(Shape::Converse, none).output, OutputField::Absent);
    }

    #[test]
    fn other_shapes() {
        let t = m(
            Shape::TitanText,
            json!({"inputText": "a b c", "textGenerationConfig": {"maxTokenCount": 9}}),
        );
        assert_eq!((t.input_tokens, t.output), (3, OutputField::Value(9)));
        let t = m(Shape::TitanText, json!({"inputText": "a"}));
        assert_eq!(t.output, OutputField::Absent);
        let e = m(Shape::TitanEmbed, json!({"inputText": "a b"}));
        assert_eq!((e.input_tokens, e.output), (2, OutputField::Value(0)));
        let e = m(
            Shape::CohereEmbed,
            json!({"texts": ["a b", "c"], "input_type": "search_document"}),
        );
        assert_eq!((e.input_tokens, e.output), (3, OutputField::Value(0)));
        let l = m(Shape::Llama, json!({"prompt": "a b", "max_gen_len": 3}));
        assert_eq!((l.input_tokens, l.output), (2, OutputField::Value(3)));
        let ms = m(
            Shape::Mistral,
            json!({"prompt": "<s>[INST] a b [/INST]", "max_tokens": 5}),
        );
        assert_eq!((ms.input_tokens, ms.output), (4, OutputField::Value(5)));
        let mc = m(
            Shape::Mistral,
            json!({"messages": [{"role": "user", "content": "a"}]}),
        );
        assert_eq!(mc.input_tokens, 5);
        let c = m(
            Shape::CohereCommand,
            json!({"message": "a b", "preamble": "c", "chat_history": [{"role": "USER", "message": "d"}], "max_tokens": 8}),
        );
        // message 2 + preamble 4+1 + history 4+1 + final message overhead 4
        assert_eq!((c.input_tokens, c.output), (16, OutputField::Value(8)));
        let png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAu4AAAAB";
        let i = m(
            Shape::Mistral,
            json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": png}},
                {"type": "image_url", "image_url": "https://example.com/a.png"}
            ]}]}),
        );
        // 750×1 px = 1 token, then an unknown image; 4 + 2 × 3 overhead
        assert_eq!((i.input_tokens, i.images), (4 + 3 + 1 + 3 + 1_600, 2));
        let j = m(
            Shape::Jamba,
            json!({"messages": [{"role": "user", "content": "a b"}], "max_tokens": 4}),
        );
        assert_eq!((j.input_tokens, j.output), (6, OutputField::Value(4)));
        let a = m(
            Shape::AnthropicText,
            json!({"prompt": "\n\nHuman: a\n\nAssistant:", "max_tokens_to_sample": 300}),
        );
        assert_eq!(a.output, OutputField::Value(300));
    }

    #[test]
    fn wrong_types() {
        assert_eq!(
            output_field(Some(&json!("123")), "f"),
            OutputField::Value(123)
        );
        assert_eq!(
            output_field(Some(&json!("lots")), "f"),
            OutputField::Invalid
        );
        assert_eq!(output_field(Some(&json!(-5)), "f"), OutputField::Invalid);
        assert_eq!(output_field(Some(&json!(2.5)), "f"), OutputField::Value(3));
        assert_eq!(
            output_field(Some(&json!(1e300)), "f"),
            OutputField::Value(MAX_OUTPUT_LIMIT)
        );
        assert_eq!(
            output_field(Some(&json!(u64::MAX)), "f"),
            OutputField::Value(MAX_OUTPUT_LIMIT)
        );
        assert_eq!(output_field(Some(&json!(true)), "f"), OutputField::Invalid);
        assert_eq!(output_field(Some(&Value::Null), "f"), OutputField::Absent);
        let p = m(Shape::Llama, json!({"prompt": 5}));
        assert!(p.partial);
        let p = m(
            Shape::AnthropicMessages,
            json!({"messages": "nope", "max_tokens": 1}),
        );
        assert!(p.partial);
        let p = m(Shape::AnthropicMessages, json!([1, 2, 3]));
        assert_eq!(p.input_tokens, 0);
    }
}
