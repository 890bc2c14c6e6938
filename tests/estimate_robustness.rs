//! Bad input never panics, and estimates stay proportional to the body length.
//!
//! The bound is `4 × body length + 2,000` tokens. It holds for any body without image,
//! document or video blocks; those legitimately cost up to 1,600 (image) or 3,000
//! (document by S3 location) tokens from a dozen bytes of JSON, so the generated
//! bodies leave those keys out.

use bedrock_throttle::estimate::{
    EstimateMethod, HeuristicEstimator, Operation, RequestInfo, TokenEstimator,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

const MODELS: &[Option<&str>] = &[
    None,
    Some("anthropic.claude-sonnet-4-20250514-v1:0"),
    Some("us.anthropic.claude-3-5-haiku-20241022-v1:0"),
    Some("anthropic.claude-v2:1"),
    Some("amazon.titan-text-express-v1"),
    Some("amazon.titan-embed-text-v2:0"),
    Some("eu.amazon.nova-pro-v1:0"),
    Some("meta.llama3-1-70b-instruct-v1:0"),
    Some("mistral.mistral-large-2407-v1:0"),
    Some("cohere.command-r-plus-v1:0"),
    Some("cohere.embed-multilingual-v3"),
    Some("ai21.jamba-1-5-mini-v1:0"),
    Some("arn:aws:bedrock:us-east-1:123456789012:inference-profile/global.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    Some("arn%3Aaws%3Abedrock%3Aus-west-2%3A%3Afoundation-model%2Fmeta.llama3-8b-instruct-v1%3A0"),
    Some("vendor.unknown-model"),
    Some(""),
];

const OPERATIONS: &[Operation] = &[
    Operation::Invoke,
    Operation::InvokeStream,
    Operation::Converse,
    Operation::ConverseStream,
    Operation::CountTokens,
    Operation::Other,
];

/// Keys and string values that steer generated bodies into the known shapes.
const VOCABULARY: &[&str] = &[
    "messages",
    "content",
    "system",
    "text",
    "type",
    "role",
    "user",
    "assistant",
    "prompt",
    "max_tokens",
    "max_tokens_to_sample",
    "inputText",
    "textGenerationConfig",
    "maxTokenCount",
    "inferenceConfig",
    "maxTokens",
    "max_new_tokens",
    "max_gen_len",
    "message",
    "chat_history",
    "preamble",
    "texts",
    "tools",
    "toolConfig",
    "toolSpec",
    "toolUse",
    "toolResult",
    "tool_use",
    "tool_result",
    "input",
    "name",
    "json",
    "source",
    "data",
    "bytes",
    "anthropic_version",
    "schemaVersion",
    "documents",
    "tool_calls",
    "reasoningContent",
    "reasoningText",
    "thinking",
    "guardContent",
    "redacted_thinking",
    "cachePoint",
    "base64",
    "input_type",
];

fn bound(len: usize) -> u64 {
    4 * len as u64 + 2_000
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(VOCABULARY).prop_map(String::from),
        ".{0,24}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((word(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn body_object() -> impl Strategy<Value = Value> {
    prop::collection::vec((word(), json_value()), 0..8)
        .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()))
}

fn check(model: Option<&str>, operation: Operation, body: &[u8]) {
    let estimate = HeuristicEstimator::new().estimate(&RequestInfo {
        model,
        operation,
        body,
    });
    assert!(
        estimate.input_tokens <= bound(body.len()),
        "{} tokens for {} bytes ({model:?}, {operation:?})",
        estimate.input_tokens,
        body.len()
    );
    assert!(estimate.output_limit <= 1_000_000);
    assert_ne!(estimate.method, EstimateMethod::Manual);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..2048),
                       model in prop::sample::select(MODELS),
                       operation in prop::sample::select(OPERATIONS)) {
        check(model, operation, &body);
    }

    #[test]
    fn arbitrary_json(value in body_object(),
                      model in prop::sample::select(MODELS),
                      operation in prop::sample::select(OPERATIONS)) {
        let body = serde_json::to_vec(&value).unwrap();
        check(model, operation, &body);
    }

    #[test]
    fn arbitrary_json_every_model(value in body_object()) {
        let body = serde_json::to_vec(&value).unwrap();
        for model in MODELS {
            for operation in [Operation::Invoke, Operation::Converse] {
                check(*model, operation, &body);
            }
        }
    }

    #[test]
    fn arbitrary_text_in_known_shapes(text in "\\PC{0,400}", n in any::<i64>()) {
        let bodies = [
            serde_json::json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": n,
                "system": text, "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}),
            serde_json::json!({"prompt": text, "max_gen_len": n}),
            serde_json::json!({"inputText": text, "textGenerationConfig": {"maxTokenCount": n}}),
            serde_json::json!({"messages": [{"role": "user", "content": [{"text": text}]}], "inferenceConfig": {"maxTokens": n}}),
        ];
        for body in bodies {
            let bytes = serde_json::to_vec(&body).unwrap();
            for model in MODELS {
                check(*model, Operation::Invoke, &bytes);
            }
        }
    }
}

#[test]
fn huge_bodies() {
    // 25 MB of prose inside an Anthropic Messages body.
    let paragraph = "The quick brown fox jumps over the lazy dog; 12345 {\"json\": true}\n";
    let text = paragraph.repeat(25_000_000 / paragraph.len());
    let body = serde_json::to_vec(&serde_json::json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": text}],
    }))
    .unwrap();
    assert!(body.len() > 24_000_000);
    let e = HeuristicEstimator::new().estimate(&RequestInfo {
        model: Some("anthropic.claude-3-haiku-20240307-v1:0"),
        operation: Operation::Invoke,
        body: &body,
    });
    assert_eq!(e.method, EstimateMethod::Heuristic);
    assert!(
        e.input_tokens > 4_000_000 && e.input_tokens < 12_000_000,
        "{}",
        e.input_tokens
    );

    // 25 MB of garbage.
    let garbage: Vec<u8> = (0..25_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    check(
        Some("anthropic.claude-3-haiku-20240307-v1:0"),
        Operation::Invoke,
        &garbage,
    );

    // Deeply nested, both arrays and objects.
    let deep = format!(
        "{}1{}",
        "{\"messages\":[".repeat(100_000),
        "]}".repeat(100_000)
    );
    check(None, Operation::Converse, deep.as_bytes());
}

const MAGICS: &[&[u8]] = &[
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"\xff\xd8",
    b"\xff\xd8\xff\xe1",
    b"RIFF\0\0\0\0WEBPVP8 ",
    b"RIFF\0\0\0\0WEBPVP8L",
    b"RIFF\0\0\0\0WEBPVP8X",
];

proptest! {
    #[test]
    fn image_headers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096),
                                 magic in prop::sample::select(MAGICS),
                                 text in "\\PC{0,64}") {
        use base64::Engine as _;
        use bedrock_throttle::estimate::image::{dimensions, dimensions_base64};
        let mut data = magic.to_vec();
        data.extend_from_slice(&bytes);
        let _ = dimensions(&data);
        let _ = dimensions_base64(&base64::engine::general_purpose::STANDARD.encode(&data));
        let _ = dimensions_base64(&text);
    }
}
