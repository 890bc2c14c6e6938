//! Default output reservations per model, and model id normalisation.
//!
//! When a request sets no output limit, Bedrock reserves the model's maximum output at
//! admission (64,000 tokens for Claude Sonnet 4), so the estimate has to do the same.
//! [`default_output_limit`] answers from a built-in table, matched by prefix on the
//! [base model id](base_model_id); [`OutputLimits`] adds per-model overrides on top.
//!
//! | model id prefix (after normalisation) | tokens | note |
//! |---|---|---|
//! | `anthropic.claude-sonnet-4` (4, 4.5) | 64,000 | model maximum |
//! | `anthropic.claude-3-7-sonnet` | 64,000 | model maximum |
//! | `anthropic.claude-opus-4-5` | 64,000 | model maximum |
//! | `anthropic.claude-opus-4` (4, 4.1) | 32,000 | model maximum |
//! | `anthropic.claude-haiku-4-5` | 64,000 | model maximum |
//! | `anthropic.claude-3-5-sonnet-20241022` (3.5 Sonnet v2) | 8,192 | model maximum |
//! | `anthropic.claude-3-5-haiku` | 8,192 | model maximum |
//! | `anthropic.claude-3` (other 3.x Haiku/Sonnet/Opus) | 4,096 | model maximum |
//! | `anthropic.` (Claude 2, Instant, newer unknown) | 4,096 | guess |
//! | `amazon.titan-text`, `amazon.titan-tg1` | 512 | API default of `maxTokenCount` |
//! | `amazon.titan-embed`, `cohere.embed` | 0 | embeddings: output is not tokens |
//! | `amazon.nova` | 5,000 | documented constant (Nova's default `maxTokens`) |
//! | `meta.llama` | 512 | API default of `max_gen_len` |
//! | `mistral.mistral-large`, `mistral.pixtral` | 8,192 | guess: these models' maximum |
//! | `mistral.` (7B, Mixtral, Small) | 512 | API default of `max_tokens` for the older models |
//! | `cohere.command` | 4,000 | Command R / R+ maximum output |
//! | `ai21.jamba` | 4,096 | Jamba 1.5 default `max_tokens` |
//! | anything else | 4,096 | [`UNKNOWN_MODEL_OUTPUT_LIMIT`] |
//!
//! The numbers for Mistral, Cohere and Jamba are less certain than the others; override them
//! with [`OutputLimits::with`] or
//! [`HeuristicEstimator::with_output_limit`](crate::estimate::HeuristicEstimator::with_output_limit)
//! when an account sees something else.

use std::borrow::Cow;

/// Output reservation for a model the table does not know.
pub const UNKNOWN_MODEL_OUTPUT_LIMIT: u64 = 4_096;

/// Built-in table: (base model id prefix, tokens). First match wins, so more specific
/// prefixes come first.
const TABLE: &[(&str, u64)] = &[
    ("anthropic.claude-sonnet-4", 64_000),
    ("anthropic.claude-3-7-sonnet", 64_000),
    ("anthropic.claude-opus-4-5", 64_000),
    ("anthropic.claude-opus-4", 32_000),
    ("anthropic.claude-haiku-4-5", 64_000),
    ("anthropic.claude-3-5-sonnet-20241022", 8_192),
    ("anthropic.claude-3-5-haiku", 8_192),
    ("anthropic.claude-3", 4_096),
    ("anthropic.", 4_096),
    ("amazon.titan-text", 512),
    ("amazon.titan-tg1", 512),
    ("amazon.titan-embed", 0),
    ("amazon.titan-e1t", 0),
    ("cohere.embed", 0),
    ("amazon.nova", 5_000),
    ("meta.llama", 512),
    ("mistral.mistral-large", 8_192),
    ("mistral.pixtral", 8_192),
    ("mistral.", 512),
    ("cohere.command", 4_000),
    ("ai21.jamba", 4_096),
];

/// The foundation model id inside a model id, inference profile id or ARN.
///
/// Percent escapes (as in the request path: `%3A` for `:`, `%2F` for `/`) are decoded,
/// surrounding whitespace is trimmed, an ARN is cut to the part after its last `/`, and a
/// cross-Region prefix (`us.`, `eu.`, `apac.`, `global.`, `us-gov.`, `jp.`, `au.`, `ca.`)
/// is removed. The encoded and the decoded forms of an id give the same base id.
///
/// ```
/// use bedrock_throttle::estimate::limits::base_model_id;
/// assert_eq!(
///     base_model_id("us.anthropic.claude-3-7-sonnet-20250219-v1:0"),
///     "anthropic.claude-3-7-sonnet-20250219-v1:0"
/// );
/// assert_eq!(
///     base_model_id(
///         "arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.meta.llama3-2-1b-instruct-v1:0"
///     ),
///     "meta.llama3-2-1b-instruct-v1:0"
/// );
/// assert_eq!(base_model_id("amazon.nova-pro-v1%3A0"), "amazon.nova-pro-v1:0");
/// ```
pub fn base_model_id(model: &str) -> Cow<'_, str> {
    crate::bedrock::model_id::base_model_id(model)
}

/// The model's default output reservation when the body sets no limit: what Bedrock
/// reserves at admission. See the [module table](self).
///
/// ```
/// use bedrock_throttle::estimate::default_output_limit;
/// assert_eq!(default_output_limit("us.anthropic.claude-sonnet-4-20250514-v1:0"), 64_000);
/// assert_eq!(default_output_limit("meta.llama3-70b-instruct-v1:0"), 512);
/// assert_eq!(default_output_limit("amazon.titan-embed-text-v2:0"), 0);
/// assert_eq!(default_output_limit("somebody.new-model"), 4_096);
/// ```
pub fn default_output_limit(model: &str) -> u64 {
    table_lookup(&base_model_id(model))
}

fn table_lookup(base: &str) -> u64 {
    TABLE
        .iter()
        .find(|(prefix, _)| base.starts_with(prefix))
        .map_or(UNKNOWN_MODEL_OUTPUT_LIMIT, |&(_, n)| n)
}

/// The output reservation table with per-model overrides.
///
/// An override key is matched as a prefix of the [base model id](base_model_id) (so
/// `"anthropic.claude-sonnet-4"` covers every version of it, and a cross-Region or ARN form
/// of the key is normalised first); the longest matching override wins, then the built-in
/// table.
///
/// ```
/// use bedrock_throttle::estimate::limits::OutputLimits;
/// let limits = OutputLimits::new().with("mistral.", 2_048);
/// assert_eq!(limits.get("mistral.mistral-7b-instruct-v0:2"), 2_048);
/// assert_eq!(limits.get("meta.llama3-8b-instruct-v1:0"), 512);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputLimits {
    overrides: Vec<(String, u64)>,
}

impl OutputLimits {
    /// The built-in table, no overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an override for every model whose base id starts with `model`.
    pub fn with(mut self, model: impl AsRef<str>, tokens: u64) -> Self {
        self.set(model, tokens);
        self
    }

    /// Adds (or replaces) an override in place.
    pub fn set(&mut self, model: impl AsRef<str>, tokens: u64) {
        let key = base_model_id(model.as_ref()).into_owned();
        if let Some(entry) = self.overrides.iter_mut().find(|(k, _)| *k == key) {
            entry.1 = tokens;
        } else {
            self.overrides.push((key, tokens));
        }
    }

    /// The reservation for `model`: the longest matching override, else the built-in table.
    pub fn get(&self, model: &str) -> u64 {
        let base = base_model_id(model);
        self.overrides
            .iter()
            .filter(|(k, _)| base.starts_with(k.as_str()))
            .max_by_key(|(k, _)| k.len())
            .map_or_else(|| table_lookup(&base), |&(_, n)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            ("anthropic.claude-sonnet-4-20250514-v1:0", 64_000),
            ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", 64_000),
            ("anthropic.claude-3-7-sonnet-20250219-v1:0", 64_000),
            ("anthropic.claude-opus-4-20250514-v1:0", 32_000),
            ("us.anthropic.claude-opus-4-1-20250805-v1:0", 32_000),
            ("anthropic.claude-haiku-4-5-20251001-v1:0", 64_000),
            ("anthropic.claude-3-haiku-20240307-v1:0", 4_096),
            ("anthropic.claude-3-sonnet-20240229-v1:0", 4_096),
            ("anthropic.claude-3-opus-20240229-v1:0", 4_096),
            ("anthropic.claude-3-5-sonnet-20240620-v1:0", 4_096),
            ("anthropic.claude-3-5-sonnet-20241022-v2:0", 8_192),
            ("amazon.titan-text-express-v1", 512),
            ("amazon.titan-embed-text-v2:0", 0),
            ("cohere.embed-english-v3", 0),
            ("us.amazon.nova-pro-v1:0", 5_000),
            ("meta.llama3-1-70b-instruct-v1:0", 512),
            ("mistral.mistral-large-2407-v1:0", 8_192),
            ("mistral.mixtral-8x7b-instruct-v0:1", 512),
            ("cohere.command-r-plus-v1:0", 4_000),
            ("ai21.jamba-1-5-large-v1:0", 4_096),
            ("deepseek.r1-v1:0", 4_096),
            ("", 4_096),
        ];
        for (model, want) in cases {
            assert_eq!(default_output_limit(model), want, "{model}");
        }
    }

    #[test]
    fn normalisation() {
        assert_eq!(
            base_model_id("arn:aws:bedrock:us-west-2::foundation-model/anthropic.claude-3-haiku-20240307-v1:0"),
            "anthropic.claude-3-haiku-20240307-v1:0"
        );
        assert_eq!(
            base_model_id("arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fapac.amazon.nova-lite-v1%3A0"),
            "amazon.nova-lite-v1:0"
        );
        assert_eq!(base_model_id("us-gov.meta.llama3"), "meta.llama3");
        assert_eq!(base_model_id("anthropic.claude"), "anthropic.claude");
        assert_eq!(base_model_id("arn:aws:bedrock"), "arn:aws:bedrock");
    }

    #[test]
    fn overrides() {
        let limits = OutputLimits::new()
            .with("anthropic.", 1_000)
            .with("us.anthropic.claude-sonnet-4", 2_000)
            .with("anthropic.", 1_500);
        assert_eq!(limits.get("anthropic.claude-sonnet-4-20250514-v1:0"), 2_000);
        assert_eq!(limits.get("anthropic.claude-3-haiku-20240307-v1:0"), 1_500);
        assert_eq!(limits.get("amazon.nova-micro-v1:0"), 5_000);
    }
}
