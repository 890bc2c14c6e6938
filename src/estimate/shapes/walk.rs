//! Measures a validated body of a known shape in place, without parsing it into a tree.

use std::borrow::Cow;

use crate::estimate::image::ImageCost;
use crate::estimate::scan::Val;

use super::{
    output_field, Measured, OutputField, Shape, TextCount, BLOCK_OVERHEAD,
    DOCUMENT_BYTES_PER_TOKEN, MESSAGE_OVERHEAD, TOOLS_PROMPT_OVERHEAD, TOOL_OVERHEAD,
    UNKNOWN_DOCUMENT_TOKENS,
};

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
        Shape::OpenAiChat => {
            let [messages, tools, max_completion, max_tokens] =
                b.fields(["messages", "tools", "max_completion_tokens", "max_tokens"]);
            w.messages(messages, "content");
            w.tools(tools);
            match (max_completion, max_tokens) {
                (Some(v), _) if !v.is_null() => raw_output_field(Some(v), "max_completion_tokens"),
                (_, v) => raw_output_field(v, "max_tokens"),
            }
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

/// The walk over a body's raw text: its running totals.
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
    use serde_json::{json, Value};

    use super::*;
    use crate::estimate::scan;
    use crate::estimate::shapes::CountFn;

    fn words(s: &str) -> u64 {
        s.split_whitespace().count() as u64
    }

    /// [`measure_raw`] of `body`, serialized, counting words.
    fn m(shape: Shape, body: Value) -> Measured {
        let text = body.to_string();
        let doc = scan::validate(text.as_bytes()).expect("a serialized Value is JSON");
        measure_raw(shape, doc.root(), &CountFn(&words), &ImageCost::default())
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
        let o = m(
            Shape::OpenAiChat,
            json!({
                "model": "openai.gpt-oss-120b-1:0",
                "messages": [
                    {"role": "developer", "content": "a b"},
                    {"role": "user", "content": [{"type": "text", "text": "c"}]},
                ],
                "max_tokens": 50,
                "max_completion_tokens": 9,
            }),
        );
        // 4 + 2, then 4 + 1: the model name is not text the model reads.
        assert_eq!((o.input_tokens, o.output), (11, OutputField::Value(9)));
        let o = m(
            Shape::OpenAiChat,
            json!({"messages": [], "max_tokens": 50, "max_completion_tokens": null}),
        );
        assert_eq!(o.output, OutputField::Value(50));
        let o = m(Shape::OpenAiChat, json!({"messages": []}));
        assert_eq!(o.output, OutputField::Absent);
    }

    #[test]
    fn wrong_types() {
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
