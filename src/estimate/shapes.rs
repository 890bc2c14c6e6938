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
//!
//! [`ImageCost`]: crate::estimate::image::ImageCost
//! [`ImageCost::unknown_tokens`]: crate::estimate::image::ImageCost::unknown_tokens

mod count;
mod detect;
mod walk;

#[cfg(test)]
mod reference;

use serde_json::Value;

pub(crate) use count::{CountFn, Heuristic, TextCount};
pub(crate) use walk::measure_raw;

#[cfg(test)]
pub(crate) use reference::measure;

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
    /// OpenAI-compatible Chat Completions: `messages` (string or parts content, `tool_calls`),
    /// `tools`, `max_completion_tokens` or else the older `max_tokens`.
    OpenAiChat,
}

impl Shape {
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
mod tests {
    use super::*;
    use serde_json::json;

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
    }
}
