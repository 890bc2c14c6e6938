//! Throughput of the heuristic estimator on a 100 KB Anthropic Messages body.

use std::hint::black_box;

use bedrock_throttle::estimate::text::count_tokens;
use bedrock_throttle::estimate::{HeuristicEstimator, Operation, RequestInfo, TokenEstimator};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn body() -> Vec<u8> {
    let prose =
        "Rate limiting is one of those problems that looks simple until you try to do it well. ";
    let code = "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{:?}\", x.iter().sum::<i32>());\n}\n";
    let cjk = "大语言模型的接口又增加了新的难题。レート制限は難しい問題です。";
    let mut messages = Vec::new();
    let mut size = 0;
    let mut i = 0;
    while size < 100_000 {
        let text = match i % 3 {
            0 => prose.repeat(8),
            1 => code.repeat(6),
            _ => cjk.repeat(10),
        };
        size += text.len();
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
    let body = body();
    let text = String::from_utf8_lossy(&body).into_owned();
    let estimator = HeuristicEstimator::new();
    let mut group = c.benchmark_group("estimate");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("anthropic_messages_100kb", |b| {
        b.iter(|| {
            estimator.estimate(&RequestInfo {
                model: Some("us.anthropic.claude-sonnet-4-20250514-v1:0"),
                operation: Operation::Invoke,
                body: black_box(&body),
            })
        })
    });
    group.bench_function("count_tokens_100kb", |b| {
        b.iter(|| count_tokens(black_box(&text)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
