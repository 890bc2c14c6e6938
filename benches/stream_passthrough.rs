//! Throughput of an event stream through the gate's `SettlingBody` against the bare body:
//! 4 MB of InvokeModelWithResponseStream and ConverseStream frames, delivered one frame per
//! data chunk (as a server flushes them) and in 16 KiB reads that split frames.
//!
//! `cargo bench --bench stream_passthrough`
//!
//! The bare body does no I/O, so its figures only bound the harness; the gate's figures are
//! the reading cost. On one core of a shared 2-core Xeon VM the gate passed 1.6 GiB/s of
//! InvokeModelWithResponseStream chunks (each base64 payload is scanned for the metrics) and
//! 2.7 GiB/s of ConverseStream frames delivered a frame per read; 1.8 and 5.4 GiB/s in
//! 16 KiB reads.

use std::{
    collections::VecDeque,
    convert::Infallible,
    hint::black_box,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use base64::Engine as _;
use bedrock_throttle::{estimate::TokenEstimate, gate::GateLayer, Quota, ThrottleConfig};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use serde_json::{json, Value};
use tower::{service_fn, Service, ServiceExt};

const SIZE: usize = 4 << 20;

fn frame(event_type: &'static str, payload: String) -> Bytes {
    let m = Message::new(payload)
        .add_header(Header::new(
            ":event-type",
            HeaderValue::String(event_type.into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ))
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("event".into()),
        ));
    let mut out = Vec::new();
    write_message_to(&m, &mut out).unwrap();
    Bytes::from(out)
}

fn chunk(event: &Value) -> Bytes {
    let b64 = base64::engine::general_purpose::STANDARD.encode(event.to_string());
    // Bedrock pads chunk payloads with a random "p" field.
    frame(
        "chunk",
        json!({"bytes": b64, "p": "abcdefghijklmnopqrstu"}).to_string(),
    )
}

/// About `SIZE` bytes of frames, one `Bytes` each; the last one carries the usage.
fn stream(converse: bool) -> Vec<Bytes> {
    let text = " The quota is shared by every caller of the model, so each request";
    let mut frames = Vec::new();
    let mut size = 0;
    while size < SIZE {
        let f = if converse {
            frame(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": text}}).to_string(),
            )
        } else {
            chunk(&json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": text}}))
        };
        size += f.len();
        frames.push(f);
    }
    frames.push(if converse {
        frame(
            "metadata",
            json!({"usage": {"inputTokens": 100, "outputTokens": 9000, "totalTokens": 9100},
                "metrics": {"latencyMs": 90000}})
            .to_string(),
        )
    } else {
        chunk(
            &json!({"type": "message_stop", "amazon-bedrock-invocationMetrics":
            {"inputTokenCount": 100, "outputTokenCount": 9000,
             "invocationLatency": 90000, "firstByteLatency": 300}}),
        )
    });
    frames
}

/// The same bytes cut into `size`-byte reads.
fn reads(frames: &[Bytes], size: usize) -> Vec<Bytes> {
    let all = Bytes::from(frames.concat());
    (0..all.len())
        .step_by(size)
        .map(|i| all.slice(i..(i + size).min(all.len())))
        .collect()
}

struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

async fn drain<B: Body<Data = Bytes> + Unpin>(mut body: B) -> usize
where
    B::Error: std::fmt::Debug,
{
    let mut n = 0;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            n += black_box(d).len();
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let cfg = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(1_000_000_000))
        .build()
        .unwrap();
    let mut group = c.benchmark_group("stream_passthrough");
    for (name, converse) in [("invoke", false), ("converse", true)] {
        let frames = stream(converse);
        for (cut, chunks) in [
            ("frame_per_read", frames.clone()),
            ("16KiB_reads", reads(&frames, 16 << 10)),
        ] {
            let bytes: usize = chunks.iter().map(Bytes::len).sum();
            group.throughput(Throughput::Bytes(bytes as u64));
            let id = format!("{name}/{cut}");
            group.bench_with_input(BenchmarkId::new("bare", &id), &chunks, |b, chunks| {
                b.iter(|| rt.block_on(drain(Chunks(chunks.iter().cloned().collect()))))
            });
            let gate = GateLayer::new(cfg.clone());
            group.bench_with_input(BenchmarkId::new("gate", &id), &chunks, |b, chunks| {
                b.iter(|| {
                    rt.block_on(async {
                        // Shared so the service is Clone without cloning the body.
                        let body =
                            Arc::new(Mutex::new(Some(Chunks(chunks.iter().cloned().collect()))));
                        let mut svc =
                            tower::ServiceBuilder::new()
                                .layer(gate.clone())
                                .service(service_fn(move |_req: Request<Empty<Bytes>>| {
                                    let body = body.lock().unwrap().take().expect("one call");
                                    async move {
                                        Ok::<_, Infallible>(
                                            Response::builder()
                                                .header(
                                                    "content-type",
                                                    "application/vnd.amazon.eventstream",
                                                )
                                                .body(body)
                                                .unwrap(),
                                        )
                                    }
                                }));
                        let mut req = Request::post(
                            "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream",
                        )
                        .body(Empty::new())
                        .unwrap();
                        req.extensions_mut().insert(TokenEstimate::new(100, 10_000));
                        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
                        drain(resp.into_body()).await
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
