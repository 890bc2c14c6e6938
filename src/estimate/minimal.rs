//! The body-length estimator.

use serde_json::Value;

use super::{BodyEstimate, EstimateMethod, RequestInfo, TokenEstimator};

/// Counts a quarter token per body byte (rounded up) and reads the output limit from the
/// body's max-tokens field of any Bedrock request shape, else the model's default.
///
/// Byte length over-counts the text of any JSON body, so the gate reserves a little more
/// than Bedrock will charge and settlement gives the rest back.
///
/// ```
/// use bedrock_throttle::estimate::{BodyLengthEstimator, Operation, RequestInfo, TokenEstimator};
///
/// let body = br#"{"inputText":"hi","textGenerationConfig":{"maxTokenCount":64}}"#;
/// let e = BodyLengthEstimator.estimate(&RequestInfo {
///     model: Some("amazon.titan-text-express-v1"),
///     operation: Operation::Invoke,
///     body,
/// });
/// assert_eq!(e.input_tokens, (body.len() as u64).div_ceil(4));
/// assert_eq!(e.output_limit, 64);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct BodyLengthEstimator;

impl TokenEstimator for BodyLengthEstimator {
    fn estimate(&self, request: &RequestInfo<'_>) -> BodyEstimate {
        let input_tokens = (request.body.len() as u64).div_ceil(4);
        let from_body = serde_json::from_slice::<Value>(request.body)
            .ok()
            .and_then(|v| output_limit_field(&v));
        let output_limit =
            from_body.unwrap_or_else(|| crate::config::fallback_output_limit(request.model));
        BodyEstimate {
            input_tokens,
            output_limit,
            output_limit_from_body: from_body.is_some(),
            method: EstimateMethod::BodyLength,
        }
    }
}

/// The output limit field of every Bedrock request shape.
fn output_limit_field(body: &Value) -> Option<u64> {
    const PATHS: [&[&str]; 7] = [
        &["max_tokens"],
        &["max_tokens_to_sample"],
        &["max_gen_len"],
        &["textGenerationConfig", "maxTokenCount"],
        &["inferenceConfig", "maxTokens"],
        &["inferenceConfig", "max_new_tokens"],
        &["maxTokens"],
    ];
    PATHS.iter().find_map(|path| {
        path.iter()
            .try_fold(body, |v, k| v.get(k))
            .and_then(Value::as_u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::Operation;

    fn est(model: Option<&str>, body: &[u8]) -> BodyEstimate {
        BodyLengthEstimator.estimate(&RequestInfo {
            model,
            operation: Operation::Invoke,
            body,
        })
    }

    #[test]
    fn reads_every_output_limit_field() {
        for (body, limit) in [
            (r#"{"max_tokens":100}"#, 100),
            (r#"{"prompt":"x","max_tokens_to_sample":200}"#, 200),
            (r#"{"prompt":"x","max_gen_len":300}"#, 300),
            (r#"{"textGenerationConfig":{"maxTokenCount":400}}"#, 400),
            (r#"{"inferenceConfig":{"maxTokens":500}}"#, 500),
            (r#"{"inferenceConfig":{"max_new_tokens":600}}"#, 600),
        ] {
            let e = est(Some("m"), body.as_bytes());
            assert_eq!(
                (e.output_limit, e.output_limit_from_body),
                (limit, true),
                "{body}"
            );
        }
    }

    #[test]
    fn bad_bodies_fall_back_to_length_and_the_model_default() {
        for body in [
            &b""[..],
            b"not json",
            b"\xff\xfe\x00",
            br#"{"max_tokens":"many"}"#,
            br#"{"max_tokens":-5}"#,
        ] {
            let e = est(Some("anthropic.claude-sonnet-4-20250514-v1:0"), body);
            assert_eq!(e.input_tokens, (body.len() as u64).div_ceil(4));
            assert_eq!((e.output_limit, e.output_limit_from_body), (64_000, false));
        }
        assert_eq!(est(None, b"{}").output_limit, 4_096);
        assert_eq!(
            est(Some("amazon.titan-embed-text-v2:0"), b"{}").output_limit,
            0
        );
    }
}
