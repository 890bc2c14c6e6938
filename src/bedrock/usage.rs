//! The tokens a response says it used, in its headers or its JSON body.

use http::HeaderMap;
use serde_json::Value;

/// Tokens one invocation actually used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cache_read_input_tokens: u64,
    pub(crate) cache_write_input_tokens: u64,
}

impl Usage {
    /// Bedrock's final charge: input + cache writes + output × burndown (saturating: the
    /// numbers come from the wire).
    pub(crate) fn charge(&self, burndown: f64) -> u64 {
        self.input_tokens
            .saturating_add(self.cache_write_input_tokens)
            .saturating_add((self.output_tokens as f64 * burndown).ceil() as u64)
    }

    /// Every input token, cache reads and writes included (saturating).
    pub(crate) fn input_total(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cache_read_input_tokens)
            .saturating_add(self.cache_write_input_tokens)
    }
}

/// From InvokeModel's `x-amzn-bedrock-*-token-count` headers; both counts are required.
pub(crate) fn from_headers(headers: &HeaderMap) -> Option<Usage> {
    let num = |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    Some(Usage {
        input_tokens: num("x-amzn-bedrock-input-token-count")?,
        output_tokens: num("x-amzn-bedrock-output-token-count")?,
        cache_read_input_tokens: num("x-amzn-bedrock-cache-read-input-token-count").unwrap_or(0),
        cache_write_input_tokens: num("x-amzn-bedrock-cache-write-input-token-count").unwrap_or(0),
    })
}

/// From a JSON response body: Converse `usage`, OpenAI Chat Completions `usage`, Anthropic
/// `usage`, Llama, Titan, Cohere.
pub(crate) fn from_json(body: &[u8]) -> Option<Usage> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
    if let Some(u) = v.get("usage") {
        // Converse: camelCase; Anthropic Messages: snake_case.
        if let (Some(i), Some(o)) = (n(u, "inputTokens"), n(u, "outputTokens")) {
            return Some(Usage {
                input_tokens: i,
                output_tokens: o,
                cache_read_input_tokens: n(u, "cacheReadInputTokens").unwrap_or(0),
                cache_write_input_tokens: n(u, "cacheWriteInputTokens").unwrap_or(0),
            });
        }
        // OpenAI Chat Completions. `prompt_tokens` includes the cached ones
        // (`prompt_tokens_details.cached_tokens`); AWS does not say whether bedrock-runtime
        // counts those toward the quota, so all are charged as input, the safe side.
        if let (Some(i), Some(o)) = (n(u, "prompt_tokens"), n(u, "completion_tokens")) {
            return Some(Usage {
                input_tokens: i,
                output_tokens: o,
                ..Usage::default()
            });
        }
        if let (Some(i), Some(o)) = (n(u, "input_tokens"), n(u, "output_tokens")) {
            return Some(Usage {
                input_tokens: i,
                output_tokens: o,
                cache_read_input_tokens: n(u, "cache_read_input_tokens").unwrap_or(0),
                cache_write_input_tokens: n(u, "cache_creation_input_tokens").unwrap_or(0),
            });
        }
    }
    if let (Some(i), Some(o)) = (n(&v, "prompt_token_count"), n(&v, "generation_token_count")) {
        return Some(Usage {
            input_tokens: i,
            output_tokens: o,
            ..Usage::default()
        });
    }
    if let Some(i) = n(&v, "inputTextTokenCount") {
        let o = v
            .get("results")
            .and_then(Value::as_array)
            .map_or(0, |r| r.iter().filter_map(|r| n(r, "tokenCount")).sum());
        return Some(Usage {
            input_tokens: i,
            output_tokens: o,
            ..Usage::default()
        });
    }
    let billed = v.get("meta")?.get("billed_units")?;
    Some(Usage {
        input_tokens: n(billed, "input_tokens")?,
        output_tokens: n(billed, "output_tokens").unwrap_or(0),
        ..Usage::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_need_both_counts() {
        let mut h = HeaderMap::new();
        h.insert("x-amzn-bedrock-input-token-count", "120".parse().unwrap());
        assert_eq!(from_headers(&h), None);
        h.insert("x-amzn-bedrock-output-token-count", "30".parse().unwrap());
        h.insert(
            "x-amzn-bedrock-cache-write-input-token-count",
            "7".parse().unwrap(),
        );
        let u = from_headers(&h).unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cache_write_input_tokens),
            (120, 30, 7)
        );
        assert_eq!(u.charge(5.0), 120 + 7 + 150);
    }

    #[test]
    fn every_body_shape() {
        let cases = [
            (
                r#"{"usage":{"inputTokens":10,"outputTokens":20,"totalTokens":30,"cacheWriteInputTokens":3}}"#,
                (10, 20, 3),
            ),
            (
                r#"{"usage":{"input_tokens":11,"output_tokens":21,"cache_creation_input_tokens":4}}"#,
                (11, 21, 4),
            ),
            (
                r#"{"object":"chat.completion","usage":{"prompt_tokens":15,"completion_tokens":25,"total_tokens":40,"prompt_tokens_details":{"cached_tokens":5}}}"#,
                (15, 25, 0),
            ),
            (
                r#"{"generation":"x","prompt_token_count":12,"generation_token_count":22}"#,
                (12, 22, 0),
            ),
            (
                r#"{"inputTextTokenCount":13,"results":[{"tokenCount":20},{"tokenCount":3}]}"#,
                (13, 23, 0),
            ),
            (
                r#"{"meta":{"billed_units":{"input_tokens":14,"output_tokens":24}}}"#,
                (14, 24, 0),
            ),
        ];
        for (body, (i, o, w)) in cases {
            let u = from_json(body.as_bytes()).unwrap();
            assert_eq!(
                (u.input_tokens, u.output_tokens, u.cache_write_input_tokens),
                (i, o, w),
                "{body}"
            );
        }
        for body in [
            "",
            "{",
            "[]",
            r#"{"usage":{"inputTokens":"x"}}"#,
            r#"{"usage":null}"#,
            r#"{"usage":{"prompt_tokens":3}}"#,
            r#"{"output":{}}"#,
        ] {
            assert_eq!(from_json(body.as_bytes()), None, "{body}");
        }
    }
}
