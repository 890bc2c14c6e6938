//! Event streams through the gate (InvokeModelWithResponseStream and ConverseStream): exact
//! pass-through, settlement from the usage in the last frames, first-frame exceptions retried,
//! mid-stream throttles passed on and fed to the gate. Against mock upstreams and against the
//! emulator over loopback HTTP, in virtual time.

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use base64::Engine as _;
use bedrock_throttle::{
    estimate::TokenEstimate, gate::GateLayer, retry::Attempts, BedrockThrottleLayer, BoxError,
    Quota, ThrottleConfig, ThrottleError,
};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::time::Instant;
use tower::{service_fn, util::BoxCloneService, Service, ServiceBuilder, ServiceExt};

const MODEL_PATH: &str = "anthropic.claude-3-5-sonnet-20240620-v1%3A0";

fn frame(headers: &[(&'static str, &'static str)], payload: String) -> Bytes {
    let mut m = Message::new(payload);
    for (k, v) in headers {
        m = m.add_header(Header::new(*k, HeaderValue::String((*v).into())));
    }
    let mut out = Vec::new();
    write_message_to(&m, &mut out).unwrap();
    Bytes::from(out)
}

fn chunk(event: &Value) -> Bytes {
    let b64 = base64::engine::general_purpose::STANDARD.encode(event.to_string());
    frame(
        &[(":event-type", "chunk"), (":message-type", "event")],
        json!({ "bytes": b64, "p": "abcd" }).to_string(),
    )
}

fn exception(kind: &'static str, message: &str) -> Bytes {
    frame(
        &[(":exception-type", kind), (":message-type", "exception")],
        json!({ "message": message }).to_string(),
    )
}

/// An InvokeModelWithResponseStream body of a few deltas, ending with the metrics.
fn invoke_stream(input: u64, output: u64) -> Vec<Bytes> {
    let mut frames = vec![chunk(&json!({"type": "message_start"}))];
    for i in 0..4 {
        frames.push(chunk(&json!({"type": "content_block_delta",
            "delta": {"type": "text_delta", "text": format!(" word{i}")}})));
    }
    frames.push(chunk(&json!({
        "type": "message_stop",
        "amazon-bedrock-invocationMetrics": {"inputTokenCount": input, "outputTokenCount": output,
            "invocationLatency": 500, "firstByteLatency": 100},
    })));
    frames
}

/// A body that yields the given chunks, one data frame each.
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

fn stream_response(chunks: Vec<Bytes>) -> Response<Chunks> {
    Response::builder()
        .header("content-type", "application/vnd.amazon.eventstream")
        .body(Chunks(chunks.into()))
        .unwrap()
}

/// A stream request with a hand-set estimate: input 100, output limit 1,000 (burndown 1),
/// so the gate reserves exactly 1,100 tokens.
fn stream_request(base: &str, op: &str) -> Request<Full<Bytes>> {
    let body = if op == "converse-stream" {
        json!({"messages": [{"role": "user", "content": [{"text": "x".repeat(400)}]}],
            "inferenceConfig": {"maxTokens": 1000}})
    } else {
        json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 1000,
            "messages": [{"role": "user", "content": "x".repeat(400)}]})
    };
    let mut req = Request::post(format!("{base}/model/{MODEL_PATH}/{op}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    req.extensions_mut().insert(TokenEstimate::new(100, 1_000));
    req
}

/// 2,000 tokens a minute: one 1,100-token reservation fits, a second fits only if the first
/// was settled to less than 900 (the refill within `max_wait` is about 70 tokens).
fn tight_config() -> ThrottleConfig {
    ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(2_000))
        .max_wait(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn is_max_wait(e: &BoxError) -> bool {
    matches!(
        e.downcast_ref::<ThrottleError>(),
        Some(ThrottleError::MaxWaitExceeded { .. })
    )
}

#[tokio::test(start_paused = true)]
async fn every_byte_passes_through_in_its_original_frames_and_the_stream_settles() {
    // Split the frames at awkward places: the first data frame is 5 bytes of a prelude.
    let joined: Vec<u8> = invoke_stream(120, 45).concat();
    let cuts = [5, 6, 70, 300, 301, 700, joined.len()];
    let mut chunks = Vec::new();
    let mut at = 0;
    for c in cuts {
        chunks.push(Bytes::copy_from_slice(&joined[at..c]));
        at = c;
    }
    let sent = chunks.clone();
    let mut svc = ServiceBuilder::new()
        .layer(GateLayer::new(tight_config()))
        .service(service_fn(move |_req: Request<Full<Bytes>>| {
            let chunks = sent.clone();
            async move { Ok::<_, Infallible>(stream_response(chunks)) }
        }));

    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(stream_request("", "invoke-with-response-stream"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(f) = body.frame().await {
        got.push(f.unwrap().into_data().unwrap());
    }
    assert_eq!(got, chunks, "same bytes, same frame boundaries");

    // Settled to 120 + 45: a second 1,100-token request fits at once.
    let start = Instant::now();
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(stream_request("", "invoke-with-response-stream"))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    drop(resp); // dropped unread: keeps its 1,100
    let third = svc
        .ready()
        .await
        .unwrap()
        .call(stream_request("", "invoke-with-response-stream"))
        .await;
    assert!(is_max_wait(&third.unwrap_err()));
}

type Upstream = BoxCloneService<Request<Full<Bytes>>, Response<Chunks>, Infallible>;

/// A mock upstream that answers each call with the next scripted event stream.
fn scripted(script: Vec<Vec<Bytes>>) -> (Arc<Mutex<u32>>, Upstream) {
    let calls = Arc::new(Mutex::new(0u32));
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let c = calls.clone();
    let svc = service_fn(move |_req: Request<Full<Bytes>>| {
        *c.lock().unwrap() += 1;
        let chunks = script.lock().unwrap().pop_front().expect("scripted reply");
        async move { Ok::<_, Infallible>(stream_response(chunks)) }
    });
    (calls, BoxCloneService::new(svc))
}

#[tokio::test(start_paused = true)]
async fn exceptions_in_the_first_frame_are_retried_through_the_gate() {
    let good = invoke_stream(120, 45);
    let (calls, upstream) = scripted(vec![
        vec![exception(
            "throttlingException",
            "Too many tokens, please wait before trying again.",
        )],
        vec![exception(
            "serviceUnavailableException",
            "Service unavailable.",
        )],
        good.clone(),
    ]);
    let cfg = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(100_000))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg))
        .service(upstream);
    let resp = svc
        .oneshot(stream_request("", "invoke-with-response-stream"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.extensions().get::<Attempts>(), Some(&Attempts(3)));
    assert_eq!(*calls.lock().unwrap(), 3);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes, good.concat());
}

#[tokio::test(start_paused = true)]
async fn a_first_frame_throttle_left_unretried_is_a_429_carrying_the_frame() {
    let frame = exception(
        "throttlingException",
        "Too many tokens, please wait before trying again.",
    );
    let (_calls, upstream) = scripted(vec![vec![frame.clone()]]);
    let cfg = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(100_000))
        .max_attempts(1)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg))
        .service(upstream);
    let resp = svc
        .oneshot(stream_request("", "invoke-with-response-stream"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["x-amzn-errortype"], "ThrottlingException");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes, frame);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_ends_without_usage_keeps_its_whole_reservation() {
    let mut frames = invoke_stream(120, 45);
    frames.pop(); // no metrics
    let (_calls, upstream) = scripted(vec![frames.clone(), frames]);
    let mut svc = ServiceBuilder::new()
        .layer(GateLayer::new(tight_config()))
        .service(upstream);
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(stream_request("", "invoke-with-response-stream"))
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();
    let second = svc
        .ready()
        .await
        .unwrap()
        .call(stream_request("", "invoke-with-response-stream"))
        .await;
    assert!(is_max_wait(&second.unwrap_err()));
}

#[tokio::test(start_paused = true)]
async fn a_first_frame_exception_that_is_not_retried_passes_on_in_the_stream() {
    let frame = exception("modelStreamErrorException", "The model stopped.");
    let (calls, upstream) = scripted(vec![vec![frame.clone()]]);
    let cfg = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(100_000))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg))
        .service(upstream);
    let resp = svc
        .oneshot(stream_request("", "invoke-with-response-stream"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(*calls.lock().unwrap(), 1);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes, frame);
}

#[cfg(feature = "emulator")]
mod emulator {
    use super::*;
    use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
    use bedrock_throttle::emulator::{
        EmulatedQuota, Emulator, EmulatorHandle, Faults, LatencyModel, OutputLength,
    };
    use bytes::BytesMut;
    use hyper_util::{
        client::legacy::{connect::HttpConnector, Client},
        rt::TokioExecutor,
    };

    const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

    type HttpClient = Client<HttpConnector, Full<Bytes>>;

    fn decode(bytes: &[u8]) -> Vec<Message> {
        let mut decoder = MessageFrameDecoder::new();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let DecodedFrame::Complete(m) = decoder.decode_frame(&mut buf).unwrap() {
            out.push(m);
        }
        assert!(buf.is_empty(), "trailing bytes");
        out
    }

    fn header<'a>(m: &'a Message, name: &str) -> &'a str {
        m.headers()
            .iter()
            .find(|h| h.name().as_str() == name)
            .and_then(|h| h.value().as_string().ok())
            .map_or("", |s| s.as_str())
    }

    async fn emulator(faults: Faults) -> EmulatorHandle {
        Emulator::builder()
            .default_quota(EmulatedQuota {
                rpm: None,
                tpm: 1_000_000,
                tpd: None,
                period: Duration::from_secs(60),
            })
            .latency(LatencyModel {
                first_token: Duration::from_millis(300),
                per_output_token: Duration::from_millis(10),
            })
            .chars_per_token(4.0)
            .output_tokens(OutputLength::Fixed(40))
            .faults(faults)
            .seed(7)
            .spawn()
            .await
            .unwrap()
    }

    fn client() -> HttpClient {
        Client::builder(TokioExecutor::new()).build_http()
    }

    async fn settles_from_its_last_frames(op: &str, usage_event: &str) {
        let emu = emulator(Faults::NONE).await;
        let url = emu.endpoint_url();
        let mut svc = ServiceBuilder::new()
            .layer(BedrockThrottleLayer::new(tight_config()))
            .service(client());
        let resp = svc
            .ready()
            .await
            .unwrap()
            .call(stream_request(&url, op))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let frames = decode(&bytes);
        assert_eq!(header(frames.last().unwrap(), ":event-type"), usage_event);
        let s = emu.stats().model(MODEL);
        // 400 characters at 4 a token, and 40 tokens out.
        assert_eq!((s.settled, s.input_tokens, s.output_tokens), (1, 100, 40));
        assert_eq!(s.tokens_billed, 140);

        // The gate settled to 140 too: a second 1,100-token reservation fits at once
        // (unsettled, it would wait about 5 s, past max_wait).
        let start = Instant::now();
        let resp = svc
            .ready()
            .await
            .unwrap()
            .call(stream_request(&url, op))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(300),
            "first token only"
        );
        resp.into_body().collect().await.unwrap();
        assert_eq!(emu.stats().model(MODEL).tokens_billed, 280);
        emu.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn invoke_stream_settles_from_invocation_metrics() {
        settles_from_its_last_frames("invoke-with-response-stream", "chunk").await;
    }

    #[tokio::test(start_paused = true)]
    async fn converse_stream_settles_from_its_metadata_event() {
        settles_from_its_last_frames("converse-stream", "metadata").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_dropped_half_read_keeps_its_whole_reservation() {
        let emu = emulator(Faults::NONE).await;
        let url = emu.endpoint_url();
        let mut svc = ServiceBuilder::new()
            .layer(BedrockThrottleLayer::new(tight_config()))
            .service(client());
        let resp = svc
            .ready()
            .await
            .unwrap()
            .call(stream_request(&url, "converse-stream"))
            .await
            .unwrap();
        let mut body = resp.into_body();
        for _ in 0..3 {
            body.frame().await.unwrap().unwrap();
        }
        drop(body);
        // 1,100 kept: 900 left, and 1,100 more cannot come within max_wait.
        let second = svc
            .ready()
            .await
            .unwrap()
            .call(stream_request(&url, "converse-stream"))
            .await;
        assert!(is_max_wait(&second.unwrap_err()));
        emu.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_frame_throttle_is_retried_then_left_as_a_429() {
        let emu = emulator(Faults {
            stream_throttle_first: 1.0,
            ..Faults::NONE
        })
        .await;
        let url = emu.endpoint_url();
        let cfg = ThrottleConfig::builder()
            .quota(Quota::tokens_per_minute(100_000))
            .max_attempts(2)
            .build()
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(BedrockThrottleLayer::new(cfg))
            .service(client());
        let resp = svc
            .oneshot(stream_request(&url, "converse-stream"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.extensions().get::<Attempts>(), Some(&Attempts(2)));
        assert_eq!(resp.headers()["x-amzn-errortype"], "ThrottlingException");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let frames = decode(&bytes);
        assert_eq!(frames.len(), 1);
        assert_eq!(header(&frames[0], ":exception-type"), "throttlingException");
        let s = emu.stats().model(MODEL);
        assert_eq!(
            (s.requests, s.faults_stream_throttle_first, s.admitted),
            (2, 2, 0)
        );
        emu.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_mid_stream_throttle_passes_on_unchanged_and_slows_the_gate() {
        for op in ["invoke-with-response-stream", "converse-stream"] {
            let emu = emulator(Faults {
                stream_throttle: 1.0,
                ..Faults::NONE
            })
            .await;
            let url = emu.endpoint_url();
            let cfg = ThrottleConfig::builder()
                .quota(Quota::tokens_per_minute(2_000))
                .max_wait(Duration::from_secs(120))
                .build()
                .unwrap();
            let mut svc = ServiceBuilder::new()
                .layer(BedrockThrottleLayer::new(cfg))
                .service(client());
            let resp = svc
                .ready()
                .await
                .unwrap()
                .call(stream_request(&url, op))
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.extensions().get::<Attempts>(), Some(&Attempts(1)));
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            let frames = decode(&bytes);
            let last = frames.last().unwrap();
            assert_eq!(header(last, ":message-type"), "exception");
            assert_eq!(header(last, ":exception-type"), "throttlingException");
            assert!(frames.len() > 3, "{op}: data came before the throttle");
            let s = emu.stats().model(MODEL);
            assert_eq!((s.faults_stream_throttle, s.output_tokens), (1, 20));

            // Kept alone, the 1,100 would leave 900 and the next request would wait about
            // 6 s; the throttle emptied the bucket and, nothing being queued (light load),
            // cut the rate to 70 % of the configured one, from where it climbs back over
            // 90 s; ∫ 2,000/60 × (1 + 0.3 (t/90 − 1)³) dt reaches 1,100 at t ≈ 39.1 s (the
            // rate moves in steps of 0.6 s).
            let start = Instant::now();
            let resp = svc
                .ready()
                .await
                .unwrap()
                .call(stream_request(&url, op))
                .await
                .unwrap();
            let waited = start.elapsed() - Duration::from_millis(300);
            assert!(
                waited > Duration::from_millis(38_500) && waited < Duration::from_millis(40_500),
                "{op}: waited {waited:?}"
            );
            drop(resp);
            emu.shutdown().await;
        }
    }
}
