//! OpenAI-compatible Chat Completions on bedrock-runtime, over HTTP on loopback: the layer
//! keys each request by the model in its body, estimates it, and settles it from the usage
//! the emulator reports, in a JSON answer or in the last chunk of a server-sent event stream.
//! The last test drives the same route with OpenAI's own Python client when it is installed.

#![cfg(feature = "emulator")]

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bedrock_throttle::{
    emulator::{EmulatedQuota, Emulator, EmulatorHandle, LatencyModel, OutputLength},
    BedrockThrottleLayer, BoxError, Quota, QuotaKey, ThrottleConfig,
};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{json, Value};
use tower::{ServiceBuilder, ServiceExt};

const GPT_OSS: &str = "openai.gpt-oss-20b-1:0";
const TPM: u64 = 100_000;

async fn emulator(latency: LatencyModel, require_authorization: bool) -> EmulatorHandle {
    Emulator::builder()
        .model_quota(
            GPT_OSS,
            EmulatedQuota {
                rpm: None,
                tpm: TPM,
                tpd: None,
                period: Duration::from_secs(60),
            },
        )
        .latency(latency)
        .require_authorization(require_authorization)
        .output_tokens(OutputLength::Uniform { min: 5, max: 40 })
        .stream_chunk_tokens(4)
        .seed(19)
        .spawn()
        .await
        .unwrap()
}

type Throttled = tower::util::BoxCloneService<
    Request<Full<Bytes>>,
    Response<BoxBody<Bytes, BoxError>>,
    BoxError,
>;

fn throttled(cfg: &ThrottleConfig) -> Throttled {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    ServiceBuilder::new()
        .map_response(|r: Response<_>| {
            r.map(|b: bedrock_throttle::gate::SettlingBody<_>| b.map_err(BoxError::from).boxed())
        })
        .layer(BedrockThrottleLayer::new(cfg.clone()))
        .service(client)
        .boxed_clone()
}

fn chat(url: &str, body: Value) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn usage(body: &Value) -> (u64, u64) {
    let u = &body["usage"];
    (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    )
}

/// The `usage` of the last chunk of a server-sent event stream, and how many chunks came.
fn stream_usage(text: &str) -> (Option<(u64, u64)>, usize) {
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
    }
    let last = chunks.last().unwrap();
    let usage = last["usage"].is_object().then(|| usage(last));
    (usage, chunks.len())
}

fn key_stats(cfg: &ThrottleConfig) -> bedrock_throttle::KeyStats {
    let stats = cfg.stats();
    assert_eq!(stats.keys.len(), 1, "one key: {stats:?}");
    let key = stats.keys[0].clone();
    assert_eq!(key.key, QuotaKey::new(Some(GPT_OSS), None));
    key
}

fn config() -> ThrottleConfig {
    ThrottleConfig::builder()
        .model_quota(GPT_OSS, Quota::tokens_per_minute(TPM))
        .build()
        .unwrap()
}

const PROMPT: &str =
    "Summarise the history of the Broad Street pump and what it taught about cholera.";

#[tokio::test(start_paused = true)]
async fn a_chat_completion_is_keyed_by_its_body_model_and_settled_from_its_usage() {
    let emu = emulator(LatencyModel::default(), false).await;
    let cfg = config();
    let svc = throttled(&cfg);
    let url = format!("{}/openai/v1/chat/completions", emu.endpoint_url());
    let resp = svc
        .oneshot(chat(
            &url,
            json!({
                "model": GPT_OSS,
                "messages": [
                    {"role": "developer", "content": "You are terse."},
                    {"role": "user", "content": PROMPT},
                ],
                "max_completion_tokens": 300,
            }),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["object"], "chat.completion");
    let (prompt, completion) = usage(&body);
    let key = key_stats(&cfg);
    assert_eq!(key.admitted, 1);
    // Reserved: the estimate plus max_completion_tokens (burndown 1 for this model).
    assert_eq!(key.tokens_reserved, key.input_tokens_estimated + 300);
    assert!(key.input_tokens_estimated > 10, "{key:?}");
    // Settled: what the answer's usage says.
    assert_eq!(key.tokens_settled, prompt + completion);
    assert_eq!(key.input_tokens_actual, prompt);
    let billed = emu.stats().model(GPT_OSS);
    assert_eq!(
        (billed.admitted, billed.tokens_billed),
        (1, key.tokens_settled)
    );
    emu.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_streamed_chat_completion_settles_from_its_last_chunk() {
    let emu = emulator(LatencyModel::default(), false).await;
    let cfg = config();
    let svc = throttled(&cfg);
    let url = format!("{}/openai/v1/chat/completions", emu.endpoint_url());
    let body = json!({
        "model": GPT_OSS,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 200,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let resp = svc.clone().oneshot(chat(&url, body.clone())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let (usage, chunks) = stream_usage(&text);
    let (prompt, completion) = usage.expect("a usage chunk");
    assert!(chunks > 3, "{chunks} chunks");
    let key = key_stats(&cfg);
    assert_eq!(key.tokens_reserved, key.input_tokens_estimated + 200);
    assert_eq!(key.tokens_settled, prompt + completion);

    // Without `include_usage` the stream has no usage: the whole reservation is kept.
    let mut body = body;
    body.as_object_mut().unwrap().remove("stream_options");
    let resp = svc.oneshot(chat(&url, body)).await.unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert_eq!(stream_usage(&text).0, None);
    let after = key_stats(&cfg);
    assert_eq!(after.admitted, 2);
    assert!(after.tokens_reserved > key.tokens_reserved);
    assert_eq!(after.tokens_settled, key.tokens_settled, "nothing settled");
    emu.shutdown().await;
}

/// Enough concurrent chat completions to overrun the quota unthrottled stay inside it.
#[tokio::test(start_paused = true)]
async fn chat_completions_share_the_gate_and_stay_inside_the_quota() {
    let emu = emulator(LatencyModel::default(), false).await;
    let cfg = config();
    let svc = throttled(&cfg);
    let url = format!("{}/v1/chat/completions", emu.endpoint_url());
    // Origin-form `/v1/chat/completions` to an unknown host is not Bedrock's route: it is
    // charged to the default key, which has no quota here.
    let resp = svc
        .clone()
        .oneshot(chat(&url, json!({"model": GPT_OSS, "messages": []})))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(emu.stats().model(GPT_OSS).admitted, 1);
    let model_key = QuotaKey::new(Some(GPT_OSS), None);
    assert!(cfg.stats().key(&model_key).is_none(), "{:?}", cfg.stats());

    let url = format!("{}/openai/v1/chat/completions", emu.endpoint_url());
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let svc = svc.clone();
            let req = chat(
                &url,
                json!({
                    "model": GPT_OSS,
                    "messages": [{"role": "user", "content": PROMPT.repeat(1 + i % 4)}],
                    "max_completion_tokens": 8_000,
                    "stream": i % 2 == 0,
                    "stream_options": {"include_usage": true},
                }),
            );
            tokio::spawn(async move {
                let resp = svc.oneshot(req).await.unwrap();
                let status = resp.status();
                resp.into_body().collect().await.unwrap();
                status
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let stats = emu.stats();
    let gpt = &stats.models[GPT_OSS];
    assert_eq!((gpt.admitted, gpt.throttled_tpm), (41, 0));
    assert_eq!(cfg.stats().key(&model_key).unwrap().admitted, 40);
    emu.shutdown().await;
}

/// OpenAI's Python client, pointed at a proxy whose every request goes through the layer to
/// the emulator: non-streamed and streamed answers parse, and both settle from their usage.
#[tokio::test]
async fn the_openai_python_client_through_the_layer() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            println!(
                "skipped: the openai Python package is not installed (pip install openai): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            println!("skipped: python3 cannot be run: {e}");
            return;
        }
    }
    // The client sends its API key as `Authorization: Bearer …`, which the emulator then
    // requires, as bedrock-runtime does.
    let emu = emulator(
        LatencyModel {
            first_token: Duration::from_millis(1),
            per_output_token: Duration::ZERO,
        },
        true,
    )
    .await;
    let cfg = config();
    let proxy = proxy(throttled(&cfg), emu.addr()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_chat.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(format!("http://{proxy}/openai/v1"))
        .arg(GPT_OSS)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The script prints the usage each answer reported: prompt, completion, per line.
    let reported: Vec<(u64, u64)> = stdout
        .lines()
        .filter_map(|l| {
            let (p, c) = l.strip_prefix("usage ")?.split_once(' ')?;
            Some((p.parse().unwrap(), c.parse().unwrap()))
        })
        .collect();
    assert_eq!(reported.len(), 2, "{stdout}");
    let key = key_stats(&cfg);
    assert_eq!(key.admitted, 2);
    assert_eq!(
        key.tokens_settled,
        reported.iter().map(|(p, c)| p + c).sum::<u64>()
    );
    emu.shutdown().await;
}

/// An HTTP server on loopback that sends every request through `svc` to `upstream`.
async fn proxy(svc: Throttled, upstream: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = svc.clone();
            tokio::spawn(async move {
                let handler =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let svc = svc.clone();
                        async move {
                            let (mut parts, body) = req.into_parts();
                            let bytes = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                            parts.uri = format!("http://{upstream}{path}").parse().unwrap();
                            let resp = match svc
                                .oneshot(Request::from_parts(parts, Full::new(bytes)))
                                .await
                            {
                                Ok(r) => r,
                                Err(e) => Response::builder()
                                    .status(StatusCode::BAD_GATEWAY)
                                    .body(
                                        Full::new(Bytes::from(e.to_string()))
                                            .map_err(BoxError::from)
                                            .boxed(),
                                    )
                                    .unwrap(),
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), handler)
                    .await;
            });
        }
    });
    addr
}
