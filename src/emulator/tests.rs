//! Tests over real HTTP on 127.0.0.1 with hyper-util's legacy client.

use std::time::Duration;

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::Message;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};

use super::*;

const SONNET_35: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const SONNET_35_PATH: &str = "anthropic.claude-3-5-sonnet-20240620-v1%3A0";
const SONNET_4: &str = "anthropic.claude-sonnet-4-20250514-v1:0";
const SONNET_4_PATH: &str = "anthropic.claude-sonnet-4-20250514-v1%3A0";

/// Every test's upper bound (virtual time in paused tests, real time otherwise).
const BOUND: Duration = Duration::from_secs(120);

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("missing header {name}"))
            .to_str()
            .unwrap()
    }
}

fn request(emu: &EmulatorHandle, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(format!("{}{path}", emu.endpoint_url()))
        .header("content-type", "application/json")
        // As the AWS SDK signs it; the emulator ignores it.
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/bedrock/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=00",
        )
        .header("x-amz-date", "20260101T000000Z")
        .body(Full::new(body.into()))
        .unwrap()
}

async fn post(
    client: &TestClient,
    emu: &EmulatorHandle,
    path: &str,
    body: impl Into<Bytes>,
) -> Reply {
    let req = request(emu, path, body);
    timeout(BOUND, async {
        let resp = client.request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    })
    .await
    .expect("request within bound")
}

/// One decoded event-stream message with the (virtual) time it arrived.
#[derive(Debug)]
struct Event {
    at: Duration,
    message: Message,
}

impl Event {
    fn header(&self, name: &str) -> String {
        self.message
            .headers()
            .iter()
            .find(|h| h.name().as_str() == name)
            .and_then(|h| h.value().as_string().ok())
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default()
    }

    fn payload(&self) -> Value {
        serde_json::from_slice(self.message.payload()).expect("JSON payload")
    }

    /// The Anthropic event inside an InvokeModelWithResponseStream chunk.
    fn chunk(&self) -> Value {
        let b64 = self.payload()["bytes"].as_str().expect("bytes").to_owned();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        serde_json::from_slice(&raw).expect("chunk JSON")
    }
}

/// Sends a streaming request and decodes the frames one by one as they arrive.
async fn post_stream(
    client: &TestClient,
    emu: &EmulatorHandle,
    path: &str,
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, Vec<Event>) {
    let req = request(emu, path, body);
    timeout(BOUND, async {
        let start = Instant::now();
        let resp = client.request(req).await.expect("response");
        let (parts, mut body) = resp.into_parts();
        let mut decoder = MessageFrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.expect("frame").into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let DecodedFrame::Complete(message) =
                decoder.decode_frame(&mut buf).expect("valid frame")
            {
                events.push(Event {
                    at: start.elapsed(),
                    message,
                });
            }
        }
        assert!(buf.is_empty(), "trailing bytes after the last frame");
        (parts.status, parts.headers, events)
    })
    .await
    .expect("stream within bound")
}

fn quota(rpm: Option<u64>, tpm: u64, tpd: Option<u64>) -> EmulatedQuota {
    EmulatedQuota {
        rpm,
        tpm,
        tpd,
        period: Duration::from_secs(60),
    }
}

fn anthropic_body(chars: usize, max_tokens: u64) -> String {
    json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "x".repeat(chars)}],
    })
    .to_string()
}

fn converse_body(chars: usize, max_tokens: Option<u64>) -> String {
    let mut body = json!({
        "messages": [{"role": "user", "content": [{"text": "x".repeat(chars)}]}],
    });
    if let Some(m) = max_tokens {
        body["inferenceConfig"] = json!({ "maxTokens": m });
    }
    body.to_string()
}

fn invoke_path(model_path: &str) -> String {
    format!("/model/{model_path}/invoke")
}

const THROTTLE_TYPE: &str =
    "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/";

fn assert_throttle(reply: &Reply, message: &str) {
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("x-amzn-errortype"), THROTTLE_TYPE);
    assert_eq!(reply.header("content-type"), "application/json");
    assert!(!reply.header("x-amzn-requestid").is_empty());
    assert_eq!(reply.body, format!("{{\"message\":\"{message}\"}}"));
}

#[tokio::test(start_paused = true)]
async fn rpm_refusal_has_bedrock_headers_and_body() {
    let emu = Emulator::builder()
        .default_quota(quota(Some(2), 1_000_000, None))
        .latency(LatencyModel::ZERO)
        .output_tokens(OutputLength::Fixed(10))
        .chars_per_token(4.0)
        .seed(1)
        .spawn()
        .await
        .unwrap();
    let c = client();
    let path = invoke_path(SONNET_35_PATH);
    for _ in 0..2 {
        let r = post(&c, &emu, &path, anthropic_body(40, 100)).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = post(&c, &emu, &path, anthropic_body(40, 100)).await;
    assert_throttle(&r, "Too many requests, please wait before trying again.");
    // One request refills every 30 s (2 per 60 s).
    tokio::time::sleep(Duration::from_secs(30)).await;
    let r = post(&c, &emu, &path, anthropic_body(40, 100)).await;
    assert_eq!(r.status, StatusCode::OK);

    let s = emu.stats().model(SONNET_35);
    assert_eq!((s.requests, s.admitted, s.throttled_rpm), (4, 3, 1));
    assert_eq!((s.throttled_tpm, s.throttled_tpd), (0, 0));
    emu.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn tpm_refusal_has_bedrock_headers_and_body() {
    let emu = Emulator::builder()
        .default_quota(quota(None, 1_000, None))
        .latency(LatencyModel::ZERO)
        .chars_per_token(4.0)
        .seed(1)
        .spawn()
        .await
        .unwrap();
    let c = client();
    // 100 input + 950 max_tokens = 1,050 > 1,000.
    let r = post(
        &c,
        &emu,
        &invoke_path(SONNET_35_PATH),
        anthropic_body(400, 950),
    )
    .await;
    assert_throttle(&r, "Too many tokens, please wait before trying again.");
    // Nothing was taken by the refusal.
    assert!((emu.quota(SONNET_35).tokens_available - 1_000.0).abs() < 1e-6);
    let s = emu.stats().model(SONNET_35);
    assert_eq!(
        (s.requests, s.admitted, s.throttled_tpm, s.tokens_billed),
        (1, 0, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn tpd_refusal_has_bedrock_headers_and_body() {
    let emu = Emulator::builder()
        .default_quota(quota(None, 10_000, Some(1_000)))
        .latency(LatencyModel::ZERO)
        .chars_per_token(4.0)
        .seed(1)
        .spawn()
        .await
        .unwrap();
    let c = client();
    // 1,200 tokens fit the minute bucket but not the day.
    let r = post(
        &c,
        &emu,
        &invoke_path(SONNET_35_PATH),
        anthropic_body(400, 1_100),
    )
    .await;
    assert_throttle(
        &r,
        "Too many tokens per day, please wait before trying again.",
    );
    let s = emu.stats().model(SONNET_35);
    assert_eq!((s.throttled_tpd, s.throttled_tpm, s.admitted), (1, 0, 0));
}

/// Settlement returns the unused reservation: with numbers.
#[tokio::test(start_paused = true)]
async fn settlement_returns_the_unused_reservation() {
    let emu = Emulator::builder()
        .model_quota(SONNET_35, quota(None, 1_000, None))
        .latency(LatencyModel {
            first_token: Duration::from_millis(500),
            per_output_token: Duration::from_millis(10),
        })
        .chars_per_token(4.0)
        .output_tokens(OutputLength::Fixed(50))
        .seed(7)
        .spawn()
        .await
        .unwrap();
    let c = client();
    let path = invoke_path(SONNET_35_PATH);
    // 400 chars / 4 = 100 input tokens; reserve 100 + 600 × 1 = 700.
    let body = anthropic_body(400, 600);
    let start = Instant::now();
    let first = tokio::spawn({
        let (c, req) = (c.clone(), request(&emu, &path, body.clone()));
        async move { c.request(req).await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let q = emu.quota(SONNET_35);
    assert_eq!((q.tokens_reserved, q.in_flight), (700, 1));
    // 1,000 - 700 + 100 ms of refill (1,000 / 60 s × 0.1 s).
    assert!(
        (q.tokens_available - (300.0 + 1_000.0 / 600.0)).abs() < 0.05,
        "{q:?}"
    );

    // A second reservation of 700 does not fit while the first runs.
    let r = post(&c, &emu, &path, body.clone()).await;
    assert_throttle(&r, "Too many tokens, please wait before trying again.");

    // The first finishes after 500 ms + 50 × 10 ms and is charged 100 + 50 = 150:
    // 550 of its 700 come back.
    let status = timeout(BOUND, first).await.unwrap().unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    let q = emu.quota(SONNET_35);
    assert_eq!((q.tokens_reserved, q.in_flight), (0, 0));
    // 300 + 1 s of refill (16.67) + 550 refunded = 866.67; without the refund it would be
    // 316.67, less than the 700 the next request needs.
    assert!(
        (q.tokens_available - (850.0 + 1_000.0 / 60.0)).abs() < 0.05,
        "{q:?}"
    );
    let r = post(&c, &emu, &path, body).await;
    assert_eq!(r.status, StatusCode::OK);

    let s = emu.stats().model(SONNET_35);
    assert_eq!((s.admitted, s.settled, s.throttled_tpm), (2, 2, 1));
    assert_eq!(
        (s.tokens_billed, s.input_tokens, s.output_tokens),
        (300, 200, 100)
    );
}

/// Output is charged at the burndown rate: 5 for Claude Sonnet 4.
#[tokio::test(start_paused = true)]
async fn burndown_multiplies_output_tokens() {
    let emu = Emulator::builder()
        .latency(LatencyModel::ZERO)
        .chars_per_token(4.0)
        .output_tokens(OutputLength::Fixed(30))
        .burndown("custom.model", 3)
        .seed(3)
        .spawn()
        .await
        .unwrap();
    let c = client();
    let r = post(
        &c,
        &emu,
        &invoke_path(SONNET_4_PATH),
        anthropic_body(40, 100),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = post(
        &c,
        &emu,
        &invoke_path("custom.model"),
        anthropic_body(40, 100),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let s = emu.stats();
    assert_eq!(s.model(SONNET_4).tokens_billed, 10 + 30 * 5);
    assert_eq!(s.model("custom.model").tokens_billed, 10 + 30 * 3);
}

#[tokio::test(start_paused = true)]
async fn absent_max_tokens_reserves_the_model_maximum() {
    let emu = Emulator::builder()
        .default_quota(quota(None, 400_000, None))
        .latency(LatencyModel {
            first_token: Duration::from_secs(1),
            per_output_token: Duration::ZERO,
        })
        .chars_per_token(4.0)
        .output_tokens(OutputLength::Fixed(20))
        .seed(5)
        .spawn()
        .await
        .unwrap();
    let c = client();
    let path = format!("/model/{SONNET_4_PATH}/converse");
    let first = tokio::spawn({
        let (c, req) = (c.clone(), request(&emu, &path, converse_body(40, None)));
        async move { c.request(req).await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    // 10 input + 64,000 × 5.
    assert_eq!(emu.quota(SONNET_4).tokens_reserved, 320_010);
    // A second one does not fit (about 80,000 left) ...
    let r = post(&c, &emu, &path, converse_body(40, None)).await;
    assert_throttle(&r, "Too many tokens, please wait before trying again.");
    // ... but one with maxTokens 1,000 (10 + 5,000) does.
    let r = post(&c, &emu, &path, converse_body(40, Some(1_000))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        timeout(BOUND, first).await.unwrap().unwrap().unwrap(),
        StatusCode::OK
    );
    // Titan's maxTokenCount defaults to 512 when absent.
    let titan = "amazon.titan-text-express-v1";
    let t = tokio::spawn({
        let req = request(
            &emu,
            &invoke_path(titan),
            json!({"inputText": "abcd"}).to_string(),
        );
        let c = c.clone();
        async move { c.request(req).await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(emu.quota(titan).tokens_reserved, 1 + 512);
    assert_eq!(
        timeout(BOUND, t).await.unwrap().unwrap().unwrap(),
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn percent_encoded_ids_and_profiles_are_separate_keys() {
    let profile = "us.anthropic.claude-3-5-sonnet-20240620-v1:0";
    let arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0";
    let emu = Emulator::builder()
        .model_quota(profile, quota(Some(1), 100_000, None))
        .latency(LatencyModel::ZERO)
        .seed(1)
        .spawn()
        .await
        .unwrap();
    let c = client();
    let body = anthropic_body(10, 10);
    let p = "/model/us.anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke";
    assert_eq!(post(&c, &emu, p, body.clone()).await.status, StatusCode::OK);
    // The profile's own quota (1 RPM) is used up; the in-Region model is another key.
    assert_eq!(
        post(&c, &emu, p, body.clone()).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let r = post(&c, &emu, &invoke_path(SONNET_35_PATH), body.clone()).await;
    assert_eq!(r.status, StatusCode::OK);
    let arn_path = format!(
        "/model/{}/invoke",
        percent_encoding::utf8_percent_encode(arn, percent_encoding::NON_ALPHANUMERIC)
    );
    assert_eq!(post(&c, &emu, &arn_path, body).await.status, StatusCode::OK);

    let s = emu.stats();
    assert_eq!(s.models.len(), 3, "{s:?}");
    assert_eq!(
        (s.model(profile).admitted, s.model(profile).throttled_rpm),
        (1, 1)
    );
    assert_eq!(s.model(SONNET_35).admitted, 1);
    assert_eq!(s.model(arn).admitted, 1);
    assert_eq!(s.total().admitted, 3);
}

#[tokio::test(start_paused = true)]
async fn invoke_model_body_and_headers() {
    let emu = Emulator::builder()
        .latency(LatencyModel {
            first_token: Duration::from_millis(200),
            per_output_token: Duration::from_millis(20),
        })
        .chars_per_token(4.0)
        .output_tokens(OutputLength::Fixed(25))
        .seed(9)
        .spawn()
        .await
        .unwrap();
    let c = client();
    let start = Instant::now();
    let r = post(
        &c,
        &emu,
        &invoke_path(SONNET_35_PATH),
        anthropic_body(41, 100),
    )
    .await;
    assert_eq!(start.elapsed(), Duration::from_millis(200 + 25 * 20));
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("x-amzn-bedrock-input-token-count"), "11"); // ceil(41 / 4)
    assert_eq!(r.header("x-amzn-bedrock-output-token-count"), "25");
    assert_eq!(r.header("x-amzn-bedrock-invocation-latency"), "700");
    assert_eq!(r.header("x-amzn-requestid").len(), 36);
    let b = r.json();
    assert_eq!(b["type"], "message");
    assert_eq!(b["role"], "assistant");
    assert_eq!(b["stop_reason"], "end_turn");
    assert_eq!(b["content"][0]["type"], "text");
    assert!(!b["content"][0]["text"].as_str().unwrap().is_empty());
    assert_eq!(b["usage"], json!({"input_tokens": 11, "output_tokens": 25}));

    // Output is capped at max_tokens.
    let r = post(
        &c,
        &emu,
        &invoke_path(SONNET_35_PATH),
        anthropic_body(4, 10),
    )
    .await;
    assert_eq!(r.json()["usage"]["output_tokens"], 10);
    assert_eq!(r.json()["stop_reason"], "max_tokens");

    // Llama and Titan bodies get their own shapes.
    let r = post(
        &c,
        &emu,
        &invoke_path("meta.llama3-8b-instruct-v1%3A0"),
        json!({"prompt": "abcdefgh", "max_gen_len": 100}).to_string(),
    )
    .await;
    let b = r.json();
    assert_eq!(
        (
            b["prompt_token_count"].as_u64(),
            b["generation_token_count"].as_u64()
        ),
        (Some(2), Some(25))
    );
    let r = post(
        &c,
        &emu,
        &invoke_path("amazon.titan-text-express-v1"),
        json!({"inputText": "abcd", "textGenerationConfig": {"maxTokenCount": 100}}).to_string(),
    )
    .await;
    let b = r.json();
    assert_eq!(b["inputTextTokenCount"], 1);
    assert_eq!(b["results"][0]["tokenCount"], 25);
    assert_eq!(r.header("x-amzn-bedrock-output-token-count"), "25");
}

#[tokio::test(start_paused = true)]
async fn converse_body_and_usage() {
    let emu = Emulator::builder()
        .latency(LatencyModel {
            first_token: Duration::from_millis(100),
            per_output_token: Duration::from_millis(10),
        })
        .chars_per_token(4.0)
        .output_tokens(OutputLength::Fixed(40))
        .seed(9)
        .spawn()
        .await
        .unwrap();
    let c = client();
    let body = json!({
        "system": [{"text": "abcd"}],
        "messages": [{"role": "user", "content": [{"text": "efghijkl"}]}],
        "inferenceConfig": {"maxTokens": 500},
    });
    let r = post(
        &c,
        &emu,
        &format!("/model/{SONNET_35_PATH}/converse"),
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), "application/json");
    let b = r.json();
    assert_eq!(b["output"]["message"]["role"], "assistant");
    assert!(b["output"]["message"]["content"][0]["text"].is_string());
    assert_eq!(b["stopReason"], "end_turn");
    assert_eq!(
        b["usage"],
        json!({"inputTokens": 3, "outputTokens": 40, "totalTokens": 43})
    );
    assert_eq!(b["metrics"], json!({"latencyMs": 500}));
}

#[tokio::test(start_paused = true)]
async fn validation_errors() {
    let emu = Emulator::builder()
        .chars_per_token(1.0)
        .context_window(100)
        .latency(LatencyModel::ZERO)
        .seed(1)
        .spawn()
        .await
        .unwrap();
    let c = client();
    let check = |r: &Reply, msg: &str| {
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            r.header("x-amzn-errortype"),
            "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"
        );
        assert_eq!(r.json(), json!({ "message": msg }));
    };
    let r = post(&c, &emu, &invoke_path(SONNET_35_PATH), "{not json").await;
    check(
        &r,
        "Malformed input request, please reformat your input and try again.",
    );
    let r = post(
        &c,
        &emu,
        &invoke_path(SONNET_35_PATH),
        anthropic_body(101, 10),
    )
    .await;
    check(&r, "Input is too long for requested model.");
    let r = post(
        &c,
        &emu,
        &invoke_path(SONNET_35_PATH),
        anthropic_body(100, 10),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(emu.stats().model(SONNET_35).validation_errors, 2);
    let r = post(&c, &emu, "/model/x/unknown-op", "{}").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test(start_paused = true)]
async fn invoke_stream_frames_end_with_invocation_metrics() {
    let emu = Emulator::builder()
        .latency(LatencyModel {
            first_token: Duration::from_millis(300),
            per_output_token: Duration::from_millis(10),
        })
        .chars_per_token(4.0)
        .output_tokens(OutputLength::Fixed(23))
        .stream_chunk_tokens(5)
        .seed(11)
        .spawn()
        .await
        .unwrap();
    let c = client();
    let path = format!("/model/{SONNET_4_PATH}/invoke-with-response-stream");
    let (status, headers, events) = post_stream(&c, &emu, &path, anthropic_body(40, 1_000)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["content-type"],
        "application/vnd.amazon.eventstream"
    );
    for e in &events {
        assert_eq!(e.header(":message-type"), "event");
        assert_eq!(e.header(":event-type"), "chunk");
        assert_eq!(e.header(":content-type"), "application/json");
    }
    let chunks: Vec<Value> = events.iter().map(Event::chunk).collect();
    let types: Vec<&str> = chunks.iter().map(|c| c["type"].as_str().unwrap()).collect();
    // 23 tokens in deltas of 5: 5 deltas.
    assert_eq!(
        types,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(chunks[0]["message"]["usage"]["input_tokens"], 10);
    assert_eq!(events[0].at, Duration::from_millis(300));
    assert_eq!(events[2].at, Duration::from_millis(350));
    assert_eq!(events.last().unwrap().at, Duration::from_millis(530));
    assert_eq!(chunks[8]["usage"]["output_tokens"], 23);
    assert_eq!(
        chunks[9]["amazon-bedrock-invocationMetrics"],
        json!({
            "inputTokenCount": 10,
            "outputTokenCount": 23,
            "invocationLatency": 530,
            "firstByteLatency": 300
        })
    );
    let s = emu.stats().model(SONNET_4);
    assert_eq!((s.settled, s.tokens_billed), (1, 10 + 23 * 5));
}

#[tokio::test(start_paused = true)]
async fn converse_stream_frames_end_with_metadata() {
    let emu = Emulator::builder()
        .latency(LatencyModel {
            first_token: Duration::from_millis(200),
            per_output_token: Duration::from_millis(10),
        })
        .chars_per_token(4.0)
        .output_tokens(OutputLength::Fixed(12))
        .stream_chunk_tokens(4)
        .seed(11)
        .spawn()
        .await
        .unwrap();
    let c = client();
    let path = format!("/model/{SONNET_35_PATH}/converse-stream");
    let (status, _, events) = post_stream(&c, &emu, &path, converse_body(20, Some(100))).await;
    assert_eq!(status, StatusCode::OK);
    let types: Vec<String> = events.iter().map(|e| e.header(":event-type")).collect();
    assert_eq!(
        types,
        [
            "messageStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    assert_eq!(events[0].payload(), json!({"role": "assistant"}));
    assert_eq!(events[1].payload()["contentBlockIndex"], 0);
    assert!(events[1].payload()["delta"]["text"].is_string());
    assert_eq!(events[5].payload(), json!({"stopReason": "end_turn"}));
    assert_eq!(
        events[6].payload(),
        json!({
            "usage": {"inputTokens": 5, "outputTokens": 12, "totalTokens": 17},
            "metrics": {"latencyMs": 320}
        })
    );
    assert_eq!(events[6].at, Duration::from_millis(320));
}

#[tokio::test(start_paused = true)]
async fn stream_throttle_arrives_as_exception_frame_after_200() {
    let emu = Emulator::builder()
        .latency(LatencyModel {
            first_token: Duration::from_millis(100),
            per_output_token: Duration::from_millis(10),
        })
        .chars_per_token(4.0)
        .output_tokens(OutputLength::Fixed(20))
        .stream_chunk_tokens(5)
        .faults(Faults {
            stream_throttle: 1.0,
            ..Faults::NONE
        })
        .seed(11)
        .spawn()
        .await
        .unwrap();
    let c = client();
    for op in ["invoke-with-response-stream", "converse-stream"] {
        let path = format!("/model/{SONNET_35_PATH}/{op}");
        let body = if op == "converse-stream" {
            converse_body(40, Some(100))
        } else {
            anthropic_body(40, 100)
        };
        let (status, _, events) = post_stream(&c, &emu, &path, body).await;
        assert_eq!(status, StatusCode::OK);
        let last = events.last().unwrap();
        assert!(events.len() >= 2, "some events before the exception");
        assert!(events[..events.len() - 1]
            .iter()
            .all(|e| e.header(":message-type") == "event"));
        assert_eq!(last.header(":message-type"), "exception");
        assert_eq!(last.header(":exception-type"), "throttlingException");
        assert_eq!(last.header(":content-type"), "application/json");
        assert_eq!(
            last.payload(),
            json!({"message": "Too many tokens, please wait before trying again."})
        );
    }
    let s = emu.stats().model(SONNET_35);
    assert_eq!((s.faults, s.faults_stream_throttle, s.settled), (2, 2, 2));
    // Half of the 20 tokens were written before each throttle.
    assert_eq!((s.output_tokens, s.tokens_billed), (20, 2 * (10 + 10)));
}

#[tokio::test(start_paused = true)]
async fn stream_throttle_first_is_the_only_frame_and_charges_nothing() {
    let emu = Emulator::builder()
        .latency(LatencyModel {
            first_token: Duration::from_millis(100),
            per_output_token: Duration::from_millis(10),
        })
        .chars_per_token(4.0)
        .output_tokens(OutputLength::Fixed(20))
        .faults(Faults {
            stream_throttle_first: 1.0,
            ..Faults::NONE
        })
        .seed(11)
        .spawn()
        .await
        .unwrap();
    let c = client();
    for op in ["invoke-with-response-stream", "converse-stream"] {
        let path = format!("/model/{SONNET_35_PATH}/{op}");
        let body = if op == "converse-stream" {
            converse_body(40, Some(100))
        } else {
            anthropic_body(40, 100)
        };
        let start = Instant::now();
        let (status, headers, events) = post_stream(&c, &emu, &path, body).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "{op}: sent at once");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers["content-type"],
            "application/vnd.amazon.eventstream"
        );
        assert_eq!(events.len(), 1, "{op}: the exception alone");
        let only = &events[0];
        assert_eq!(only.header(":message-type"), "exception");
        assert_eq!(only.header(":exception-type"), "throttlingException");
        assert_eq!(
            only.payload(),
            json!({"message": "Too many tokens, please wait before trying again."})
        );
    }
    // Not a streaming operation: the fault does not apply.
    let path = format!("/model/{SONNET_35_PATH}/invoke");
    let resp = c
        .request(request(&emu, &path, anthropic_body(40, 100)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let s = emu.stats().model(SONNET_35);
    assert_eq!(
        (s.requests, s.faults, s.faults_stream_throttle_first),
        (3, 2, 2)
    );
    assert_eq!((s.admitted, s.settled, s.tokens_billed), (1, 1, 10 + 20));
    assert_eq!(emu.quota(SONNET_35).tokens_reserved, 0);
}

#[tokio::test(start_paused = true)]
async fn injected_http_faults() {
    let c = client();
    for (faults, status, error_type) in [
        (
            Faults {
                http_503: 1.0,
                ..Faults::NONE
            },
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
        ),
        (
            Faults {
                http_500: 1.0,
                ..Faults::NONE
            },
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
        ),
    ] {
        let emu = Emulator::builder()
            .faults(faults)
            .seed(1)
            .spawn()
            .await
            .unwrap();
        let r = post(
            &c,
            &emu,
            &invoke_path(SONNET_35_PATH),
            anthropic_body(10, 10),
        )
        .await;
        assert_eq!(r.status, status);
        assert_eq!(
            r.header("x-amzn-errortype"),
            format!("{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/")
        );
        assert!(r.json()["message"].is_string());
        let s = emu.stats().model(SONNET_35);
        assert_eq!((s.faults, s.admitted, s.tokens_billed), (1, 0, 0));
    }

    // Dropped connection: no response at all; the input tokens are charged.
    let emu = Emulator::builder()
        .faults(Faults {
            drop_connection: 1.0,
            ..Faults::NONE
        })
        .chars_per_token(4.0)
        .seed(1)
        .spawn()
        .await
        .unwrap();
    let req = request(&emu, &invoke_path(SONNET_35_PATH), anthropic_body(40, 10));
    let res = timeout(BOUND, c.request(req)).await.expect("bounded");
    assert!(res.is_err(), "expected a dropped connection, got {res:?}");
    let s = emu.stats().model(SONNET_35);
    assert_eq!((s.faults_dropped, s.settled, s.tokens_billed), (1, 1, 10));

    // Slow: the extra delay is added to the latency.
    let emu = Emulator::builder()
        .faults(Faults {
            slow: 1.0,
            ..Faults::NONE
        })
        .slow_delay(Duration::from_secs(3))
        .latency(LatencyModel {
            first_token: Duration::from_millis(100),
            per_output_token: Duration::ZERO,
        })
        .seed(1)
        .spawn()
        .await
        .unwrap();
    let r = post(
        &c,
        &emu,
        &invoke_path(SONNET_35_PATH),
        anthropic_body(40, 10),
    )
    .await;
    assert_eq!(r.header("x-amzn-bedrock-invocation-latency"), "3100");
    assert_eq!(emu.stats().model(SONNET_35).faults_slow, 1);
}

#[tokio::test(start_paused = true)]
async fn count_tokens_answers_and_costs_nothing() {
    let emu = Emulator::builder()
        .default_quota(quota(Some(1), 100, None))
        .chars_per_token(4.0)
        .seed(1)
        .spawn()
        .await
        .unwrap();
    let c = client();
    let path = format!("/model/{SONNET_35_PATH}/count-tokens");
    let inner = base64::engine::general_purpose::STANDARD.encode(anthropic_body(400, 1_000_000));
    let body = json!({"input": {"invokeModel": {"body": inner}}}).to_string();
    for _ in 0..3 {
        let r = post(&c, &emu, &path, body.clone()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json(), json!({"inputTokens": 100}));
    }
    let conv = json!({"input": {"converse": {
        "messages": [{"role": "user", "content": [{"text": "abcdefgh"}]}],
        "system": [{"text": "ijkl"}],
    }}});
    let r = post(&c, &emu, &path, conv.to_string()).await;
    assert_eq!(r.json(), json!({"inputTokens": 3}));
    let r = post(&c, &emu, &path, "{}").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let q = emu.quota(SONNET_35);
    assert_eq!(q.tokens_available, 100.0);
    assert_eq!(q.requests_available, Some(1.0));
    let s = emu.stats().model(SONNET_35);
    assert_eq!(
        (s.count_tokens, s.requests, s.admitted, s.tokens_billed),
        (5, 0, 0, 0)
    );
}

/// With `tokens_per_message`, each message adds its template tokens to the input, in the
/// usage reported, the amount billed and the count-tokens answer.
#[tokio::test(start_paused = true)]
async fn tokens_per_message_add_to_every_messages_input() {
    let emu = Emulator::builder()
        .latency(LatencyModel::ZERO)
        .output_tokens(OutputLength::Fixed(10))
        .chars_per_token(3.6)
        .tokens_per_message(3)
        .seed(1)
        .spawn()
        .await
        .unwrap();
    let c = client();
    // Two messages of 36 and 18 characters: ceil(54 / 3.6) = 15 tokens of text, plus 2 × 3.
    let body = json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "x".repeat(36)},
            {"role": "assistant", "content": "y".repeat(18)},
        ],
    });
    let r = post(&c, &emu, &invoke_path(SONNET_35_PATH), body.to_string()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json()["usage"],
        json!({"input_tokens": 21, "output_tokens": 10})
    );
    let s = emu.stats().model(SONNET_35);
    assert_eq!((s.input_tokens, s.tokens_billed), (21, 31));

    // Converse and count-tokens count the same way: 8 characters → 3 tokens, + 3.
    let path = format!("/model/{SONNET_35_PATH}/count-tokens");
    let conv = json!({"input": {"converse": {
        "messages": [{"role": "user", "content": [{"text": "abcdefgh"}]}],
    }}});
    let r = post(&c, &emu, &path, conv.to_string()).await;
    assert_eq!(r.json(), json!({"inputTokens": 6}));
    emu.shutdown().await;
}

/// Ten concurrent requests in virtual time: the same admissions, lengths and timings on
/// every run.
#[tokio::test(start_paused = true)]
async fn ten_concurrent_requests_are_deterministic_in_virtual_time() {
    async fn run() -> Vec<(StatusCode, u64, u64, Duration)> {
        let emu = Emulator::builder()
            // Each request reserves 10 + 300 = 310; 2,200 admits 7 of 10.
            .default_quota(quota(None, 2_200, None))
            .latency(LatencyModel {
                first_token: Duration::from_millis(300),
                per_output_token: Duration::from_millis(10),
            })
            .chars_per_token(4.0)
            .output_tokens(OutputLength::Uniform { min: 50, max: 400 })
            .seed(42)
            .spawn()
            .await
            .unwrap();
        let c = client();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..10 {
            let req = request(
                &emu,
                &invoke_path(SONNET_35_PATH),
                json!({
                    "max_tokens": 300,
                    "messages": [{"role": "user", "content": format!("request {i:02} {}", "x".repeat(29))}],
                })
                .to_string(),
            );
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let resp = c.request(req).await.unwrap();
                let status = resp.status();
                let h = |n: &str| {
                    resp.headers()
                        .get(n)
                        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap())
                        .unwrap_or(0)
                };
                let (out, lat) = (
                    h("x-amzn-bedrock-output-token-count"),
                    h("x-amzn-bedrock-invocation-latency"),
                );
                resp.into_body().collect().await.unwrap();
                (status, out, lat, start.elapsed())
            }));
            // Requests leave in a fixed order, 1 ms apart.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(timeout(BOUND, t).await.unwrap().unwrap());
        }
        let s = emu.stats().model(SONNET_35);
        assert_eq!((s.admitted, s.throttled_tpm, s.max_in_flight), (7, 3, 7));
        out
    }

    let a = run().await;
    let b = run().await;
    assert_eq!(a, b);
    let ok: Vec<_> = a.iter().filter(|r| r.0 == StatusCode::OK).collect();
    assert_eq!(ok.len(), 7);
    for (i, (status, out, lat, elapsed)) in a.iter().enumerate() {
        if *status == StatusCode::OK {
            assert!(*out <= 300);
            assert_eq!(*lat, 300 + out * 10);
            // Sent at i ms, answered exactly when the latency model says.
            assert_eq!(
                *elapsed,
                Duration::from_millis(i as u64 + lat),
                "request {i}"
            );
        } else {
            assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS);
        }
    }
    // The outputs differ between requests: lengths really are drawn.
    let mut lengths: Vec<u64> = ok.iter().map(|r| r.1).collect();
    lengths.dedup();
    assert!(lengths.len() > 1);
}

#[tokio::test]
async fn shutdown_and_drop_stop_the_server() {
    let emu = Emulator::builder().seed(1).spawn().await.unwrap();
    let addr = emu.addr();
    emu.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    let emu = Emulator::builder().seed(1).spawn().await.unwrap();
    let addr = emu.addr();
    drop(emu);
    // The aborted task releases the listener once the runtime has run it.
    let mut refused = false;
    for _ in 0..100 {
        tokio::task::yield_now().await;
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused);
}
