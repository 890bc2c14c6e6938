//! The test oracle the shipped walker is checked against: the former walk over a parsed body.
//!
//! [`measure`] and [`Shape::detect`] follow a body parsed into a `serde_json::Value`, the
//! plainest statement of what each shape counts. The shipped walk
//! ([`measure_raw`](super::measure_raw), [`Shape::detect_raw`]) reads the same fields from
//! the raw text; the differential tests (`estimate::differential_tests`) assert that the two
//! agree on every body, walked directly and through `HeuristicEstimator::estimate_with_value`.

use serde_json::{Map, Value};

use crate::estimate::image::ImageCost;
use crate::estimate::Operation;

use super::{
    output_field, Measured, OutputField, Shape, BLOCK_OVERHEAD, DOCUMENT_BYTES_PER_TOKEN,
    MESSAGE_OVERHEAD, TOOLS_PROMPT_OVERHEAD, TOOL_OVERHEAD, UNKNOWN_DOCUMENT_TOKENS,
};

impl Shape {
    /// Guesses the shape from the top-level keys of a parsed body: the reference for
    /// [`Shape::sniff_raw`].
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
    pub(crate) fn detect(model: Option<&str>, operation: Operation, body: &Value) -> Option<Shape> {
        match operation {
            Operation::Converse | Operation::ConverseStream => return Some(Shape::Converse),
            Operation::ChatCompletions => return Some(Shape::OpenAiChat),
            Operation::CountTokens => return None,
            _ => {}
        }
        let object = body.as_object()?;
        model
            .and_then(Shape::from_model)
            .or_else(|| Shape::sniff(object))
    }
}

/// Walks a parsed `body` as `shape` and adds up its input tokens, counting text with
/// `count`: the reference walk over a `serde_json::Value` that [`measure_raw`] is tested
/// against.
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
        Shape::OpenAiChat => {
            w.messages(b.get("messages"), "content");
            w.tools(b.get("tools"));
            match b.get("max_completion_tokens") {
                Some(v) if !v.is_null() => output_field(Some(v), "max_completion_tokens"),
                _ => output_field(b.get("max_tokens"), "max_tokens"),
            }
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

struct Walker<'a> {
    count: &'a dyn Fn(&str) -> u64,
    image_cost: &'a ImageCost,
    tokens: u64,
    images: u32,
    partial: bool,
}

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
