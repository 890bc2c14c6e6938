//! Which shape a request body has: by operation, then model id, then the body's keys.

use crate::estimate::limits::base_model_id;
use crate::estimate::scan::Val;
use crate::estimate::Operation;

use super::Shape;

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

    /// The shape of a request: Converse operations first, then the model id, then the
    /// body's keys. `None` for CountTokens, `Other` bodies that do not sniff, and non-objects.
    pub(crate) fn detect_raw(
        model: Option<&str>,
        operation: Operation,
        body: Val<'_>,
    ) -> Option<Shape> {
        match operation {
            Operation::Converse | Operation::ConverseStream => return Some(Shape::Converse),
            Operation::ChatCompletions => return Some(Shape::OpenAiChat),
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

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::estimate::scan;

    /// [`Shape::detect_raw`] of `body`, serialized.
    fn detect(model: Option<&str>, operation: Operation, body: Value) -> Option<Shape> {
        let text = body.to_string();
        let doc = scan::validate(text.as_bytes()).expect("a serialized Value is JSON");
        Shape::detect_raw(model, operation, doc.root())
    }

    #[test]
    fn detect_by_operation_model_and_keys() {
        let body = json!({"messages": []});
        assert_eq!(
            detect(Some("meta.llama3"), Operation::Converse, body.clone()),
            Some(Shape::Converse)
        );
        assert_eq!(
            detect(
                Some("arn:aws:bedrock:us-east-1:1:inference-profile/us.amazon.nova-lite-v1:0"),
                Operation::Invoke,
                body.clone()
            ),
            Some(Shape::Nova)
        );
        assert_eq!(detect(None, Operation::CountTokens, body.clone()), None);
        let sniff = |v: Value| detect(None, Operation::Invoke, v);
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
            detect(
                Some("anthropic.claude-v2:1"),
                Operation::Invoke,
                json!({"prompt": "x", "max_tokens_to_sample": 5})
            ),
            Some(Shape::AnthropicText)
        );
    }
}
