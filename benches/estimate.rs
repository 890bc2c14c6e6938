//! Throughput of the heuristic estimator on Anthropic Messages bodies of 1 KB to 10 MB,
//! side by side with parsing the same body into a `serde_json::Value`, and of the text
//! counter alone on each kind of text the bodies mix.
//!
//! ```text
//! cargo bench --bench estimate -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;

use bedrock_throttle::estimate::text::count_tokens;
use bedrock_throttle::estimate::{HeuristicEstimator, Operation, RequestInfo, TokenEstimator};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const MODEL: &str = "us.anthropic.claude-sonnet-4-20250514-v1:0";

const PROSE: &str =
    "Rate limiting is one of those problems that looks simple until you try to do it well. ";
const CODE: &str =
    "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{:?}\", x.iter().sum::<i32>());\n}\n";
const CJK: &str = "大语言模型的接口又增加了新的难题。レート制限は難しい問題です。";

/// An Anthropic Messages body of about `size` bytes: alternating turns of English prose,
/// Rust code (escaped quotes and line breaks) and Chinese/Japanese text.
fn body(size: usize) -> Vec<u8> {
    let mut messages = Vec::new();
    let mut len = 0;
    let mut i = 0;
    // Turns of about 1 KB, or smaller for the smallest body.
    let scale = (size / 4_000).clamp(1, 8);
    while len < size.saturating_sub(200) {
        let text = match i % 3 {
            0 => PROSE.repeat(scale),
            1 => CODE.repeat(scale),
            _ => CJK.repeat(scale),
        };
        len += text.len() + 60;
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages
            .push(serde_json::json!({"role": role, "content": [{"type": "text", "text": text}]}));
        i += 1;
    }
    serde_json::to_vec(&serde_json::json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 2048,
        "system": "You are a careful assistant.",
        "messages": messages,
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let estimator = HeuristicEstimator::new();
    for (name, size) in [
        ("1KB", 1_000),
        ("100KB", 100_000),
        ("1MB", 1_000_000),
        ("10MB", 10_000_000),
    ] {
        let body = body(size);
        let mut group = c.benchmark_group(format!("estimate_{name}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        if size >= 1_000_000 {
            group.sample_size(20);
        }
        group.bench_with_input(BenchmarkId::new("estimate", name), &body, |b, body| {
            b.iter(|| {
                estimator.estimate(&RequestInfo {
                    model: Some(MODEL),
                    operation: Operation::Invoke,
                    body: black_box(body),
                })
            })
        });
        group.bench_with_input(
            BenchmarkId::new("serde_json_value", name),
            &body,
            |b, body| {
                b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body)).unwrap())
            },
        );
        group.finish();
    }

    // The text counter alone, on 1 MB of each kind of text the bodies mix.
    let mut group = c.benchmark_group("count_tokens");
    for (name, unit) in [("prose", PROSE), ("code", CODE), ("cjk", CJK)] {
        let text = unit.repeat(1_000_000 / unit.len());
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::new("1MB", name), &text, |b, text| {
            b.iter(|| count_tokens(black_box(text)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
