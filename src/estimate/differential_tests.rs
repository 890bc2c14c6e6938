//! The shipped raw walk against its test oracle (`shapes::reference`): equal results on every body.

use proptest::prelude::*;

use super::*;

const MODELS: &[Option<&str>] = &[
    None,
    Some("anthropic.claude-sonnet-4-20250514-v1:0"),
    Some("anthropic.claude-v2:1"),
    Some("amazon.titan-text-express-v1"),
    Some("amazon.titan-embed-text-v2:0"),
    Some("eu.amazon.nova-pro-v1:0"),
    Some("meta.llama3-1-70b-instruct-v1:0"),
    Some("mistral.mistral-large-2407-v1:0"),
    Some("cohere.command-r-plus-v1:0"),
    Some("cohere.embed-multilingual-v3"),
    Some("ai21.jamba-1-5-mini-v1:0"),
];

const OPERATIONS: &[Operation] = &[
    Operation::Invoke,
    Operation::Converse,
    Operation::CountTokens,
    Operation::ChatCompletions,
    Operation::Other,
];

/// A base64 PNG header of 300 × 250 pixels.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAASwAAAD6CAIAAAA=";

/// Asserts the raw walk (default counter and counter function) equals the `Value` walk, and
/// returns whether the body was understood.
fn same(model: Option<&str>, operation: Operation, body: &[u8]) -> bool {
    let estimator = HeuristicEstimator::new();
    let request = RequestInfo {
        model,
        operation,
        body,
    };
    let reference =
        estimator.estimate_with_value(&request, &text::count_tokens, EstimateMethod::Heuristic);
    let estimate = estimator.estimate(&request);
    assert_eq!(
        estimate,
        reference,
        "{model:?} {operation:?} {}",
        String::from_utf8_lossy(body)
    );
    let words = |s: &str| s.split_whitespace().count() as u64 + s.len() as u64;
    assert_eq!(
        estimator.estimate_with(&request, &words, EstimateMethod::Tokenizer),
        estimator.estimate_with_value(&request, &words, EstimateMethod::Tokenizer),
        "{model:?} {operation:?} {}",
        String::from_utf8_lossy(body)
    );
    estimate.method == EstimateMethod::Heuristic
}

/// [`same`] for every model and operation; the number of understood estimates.
fn same_everywhere(body: &[u8]) -> usize {
    let mut understood = 0;
    for model in MODELS {
        for operation in OPERATIONS {
            understood += usize::from(same(*model, *operation, body));
        }
    }
    understood
}

/// [`same`] for every model, invoked.
fn same_for_models(body: &[u8]) {
    for model in MODELS {
        same(*model, Operation::Invoke, body);
    }
}

/// `s` as a JSON string with every non-ASCII char (and some ASCII) as a `\u` escape.
fn escape_all(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == ' ' {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04X}"));
            }
        }
    }
    out.push('"');
    out
}

/// Bodies of every shape around `text` (a JSON string literal).
fn shaped_bodies(text: &str) -> Vec<String> {
    vec![
        format!(
            r#"{{"anthropic_version":"bedrock-2023-05-31","max_tokens":512,"system":{text},"messages":[{{"role":"user","content":{text}}},{{"role":"assistant","content":[{{"type":"text","text":{text}}},{{"type":"tool_use","id":"t","name":"f","input":{{"q":{text},"n":[1,2.5,-3e2]}}}}]}},{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"t","content":[{{"type":"text","text":{text}}}]}},{{"type":"image","source":{{"type":"base64","media_type":"image/png","data":"{PNG}"}}}},{{"type":"document","source":{{"type":"text","data":{text}}}}},{{"type":"thinking","thinking":{text}}}]}}],"tools":[{{"name":"f","description":{text},"input_schema":{{"type":"object"}}}}]}}"#
        ),
        format!(r#"{{"prompt":{text},"max_tokens_to_sample":300}}"#),
        format!(r#"{{"inputText":{text},"textGenerationConfig":{{"maxTokenCount":"77"}}}}"#),
        format!(r#"{{"inputText":{text},"dimensions":256}}"#),
        format!(
            r#"{{"system":[{{"text":{text}}},{{"cachePoint":{{"type":"default"}}}}],"messages":[{{"role":"user","content":[{{"text":{text}}},{{"image":{{"format":"png","source":{{"bytes":"{PNG}"}}}}}},{{"document":{{"format":"txt","name":{text},"source":{{"text":{text}}}}}}},{{"toolResult":{{"toolUseId":"1","content":[{{"json":{{"a":{text}}}}}]}}}},{{"reasoningContent":{{"reasoningText":{{"text":{text}}}}}}},{{"guardContent":{{"text":{{"text":{text}}}}}}}]}}],"toolConfig":{{"tools":[{{"toolSpec":{{"name":"f","description":{text}}}}}]}},"inferenceConfig":{{"maxTokens":null,"max_new_tokens":9.5}}}}"#
        ),
        format!(r#"{{"prompt":{text},"images":["{PNG}"],"max_gen_len":64}}"#),
        format!(
            r#"{{"messages":[{{"role":"user","content":{text},"tool_calls":[{{"function":{{"arguments":{text}}}}}]}}],"documents":[{text}],"max_tokens":1e3}}"#
        ),
        format!(
            r#"{{"message":{text},"preamble":{text},"chat_history":[{{"role":"USER","message":{text}}}],"documents":[{{"t":{text}}}]}}"#
        ),
        format!(r#"{{"texts":[{text},{text}],"input_type":"search_document"}}"#),
        format!(
            r#"{{"messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{PNG}"}}}},{{"type":"text","text":{text}}}]}}]}}"#
        ),
        format!(
            r#"{{"model":"openai.gpt-oss-20b-1:0","messages":[{{"role":"developer","content":{text}}},{{"role":"assistant","content":null,"tool_calls":[{{"id":"c","type":"function","function":{{"name":"f","arguments":{text}}}}}]}},{{"role":"tool","tool_call_id":"c","content":[{{"type":"text","text":{text}}}]}}],"tools":[{{"type":"function","function":{{"name":"f","description":{text}}}}}],"max_tokens":7,"max_completion_tokens":null,"stream":true,"stream_options":{{"include_usage":true}}}}"#
        ),
    ]
}

#[test]
fn corpus_bodies_estimate_the_same() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let (mut bodies, mut understood) = (0, 0);
    for category in std::fs::read_dir(dir).unwrap() {
        for file in std::fs::read_dir(category.unwrap().path()).unwrap() {
            let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
            for literal in [serde_json::to_string(&text).unwrap(), escape_all(&text)] {
                for body in shaped_bodies(&literal) {
                    understood += same_everywhere(body.as_bytes());
                    // Pretty-printed and re-ordered by a round trip through `Value`.
                    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
                    same_for_models(serde_json::to_string_pretty(&value).unwrap().as_bytes());
                    // Truncated: not JSON.
                    same_for_models(&body.as_bytes()[..body.len() / 2]);
                    bodies += 3;
                }
            }
        }
    }
    assert!(bodies > 1_000, "{bodies}");
    // Most compact bodies are understood (not every model takes every shape).
    assert!(
        understood * 2 > bodies / 3 * MODELS.len() * OPERATIONS.len(),
        "{understood}"
    );
}

const SHAPES: &[Shape] = &[
    Shape::AnthropicMessages,
    Shape::AnthropicText,
    Shape::TitanText,
    Shape::TitanEmbed,
    Shape::Nova,
    Shape::Llama,
    Shape::Mistral,
    Shape::CohereCommand,
    Shape::CohereEmbed,
    Shape::Jamba,
    Shape::Converse,
    Shape::OpenAiChat,
];

/// Every shape walks every shaped body to the same measure, images and wrong types
/// included (an estimate shows neither the image count nor which field was skipped).
#[test]
fn every_shape_measures_every_body_the_same() {
    let words = |s: &str| s.split_whitespace().count() as u64 + s.len() as u64;
    let images = ImageCost::default();
    for text in ["plain words", "tab\there \u{e9} \u{1f600} \"q\" \\ /", ""] {
        for literal in [serde_json::to_string(text).unwrap(), escape_all(text)] {
            for body in shaped_bodies(&literal) {
                let value: serde_json::Value = serde_json::from_str(&body).unwrap();
                let doc = scan::validate(body.as_bytes()).unwrap();
                for &shape in SHAPES {
                    assert_eq!(
                        shapes::measure_raw(shape, doc.root(), &shapes::CountFn(&words), &images),
                        shapes::measure(shape, &value, &words, &images),
                        "{shape:?} {body}"
                    );
                }
            }
        }
    }
}

#[test]
fn duplicate_and_escaped_keys_read_as_a_parser_does() {
    same_everywhere(
        br#"{"messages":[{"role":"user","content":"one"}],"max_tokens":5,"max_tokens":7,"messages":[{"role":"user","content":"two three four"}]}"#,
    );
    same_everywhere(
        br#"{"anthropic_version":"x","m\u0065ssages":[{"content":[{"\u0074ype":"text","text":"a b c"}]}],"max_tokens":"12"}"#,
    );
    same_everywhere(br#"{"messages":[{"content":[{"text":"hi","type":"text"}]}]}"#);
    same_everywhere(br#"  [1, {"messages": []}]  "#);
    same_everywhere(b"{\"prompt\": \"tab\\there\\u00e9\\ud83d\\ude00 \\\"q\\\" \\\\ \\/\"}");
}

/// A JSON tree rendered with chosen layout: keys may repeat and be escaped.
#[derive(Clone, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String, bool),
    Arr(Vec<Json>),
    Obj(Vec<(String, bool, Json)>),
}

fn render(j: &Json, pretty: bool, out: &mut String) {
    let sep = if pretty { " \n\t" } else { "" };
    match j {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Int(n) => out.push_str(&n.to_string()),
        Json::Float(f) => out.push_str(&format!("{f:e}")),
        Json::Str(s, escaped) => out.push_str(&if *escaped {
            escape_all(s)
        } else {
            serde_json::to_string(s).unwrap()
        }),
        Json::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(sep);
                render(item, pretty, out);
            }
            out.push_str(sep);
            out.push(']');
        }
        Json::Obj(members) => {
            out.push('{');
            for (i, (k, escaped, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(sep);
                render(&Json::Str(k.clone(), *escaped), pretty, out);
                out.push(':');
                out.push_str(sep);
                render(v, pretty, out);
            }
            out.push_str(sep);
            out.push('}');
        }
    }
}

const VOCABULARY: &[&str] = &[
    "messages",
    "content",
    "system",
    "text",
    "type",
    "role",
    "user",
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
    "images",
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
    "image",
    "image_url",
    "url",
    "document",
    "video",
    "title",
    "context",
    "s3Location",
    "dimensions",
    "inputImage",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(VOCABULARY).prop_map(String::from),
        1 => Just(PNG.to_string()),
        1 => Just(format!("data:image/png;base64,{PNG}")),
        2 => "\\PC{0,24}",
    ]
}

fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::Int),
        (-1e6f64..1e6).prop_map(Json::Float),
        (word(), any::<bool>()).prop_map(|(s, e)| Json::Str(s, e)),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Arr),
            prop::collection::vec((word(), prop::bool::weighted(0.1), inner), 0..6)
                .prop_map(Json::Obj),
        ]
    })
}

fn body() -> impl Strategy<Value = (String, bool)> {
    (
        prop::collection::vec((word(), prop::bool::weighted(0.1), json()), 0..8),
        any::<bool>(),
    )
        .prop_map(|(members, pretty)| {
            let mut out = String::new();
            render(&Json::Obj(members), pretty, &mut out);
            (out, pretty)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generated_bodies_estimate_the_same((body, _pretty) in body(),
                                          model in prop::sample::select(MODELS),
                                          operation in prop::sample::select(OPERATIONS)) {
        same(model, operation, body.as_bytes());
    }

    #[test]
    fn damaged_bodies_estimate_the_same((body, _pretty) in body(),
                                        cut in any::<prop::sample::Index>(),
                                        byte in any::<u8>(),
                                        model in prop::sample::select(MODELS)) {
        let mut bytes = body.into_bytes();
        if !bytes.is_empty() {
            let i = cut.index(bytes.len());
            bytes[i] = byte;
        }
        same(model, Operation::Invoke, &bytes);
    }
}
