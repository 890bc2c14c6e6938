//! What the layers print never contains a prompt, a response text or a credential.
//!
//! Every test installs a subscriber that writes ALL output (every target, TRACE level,
//! span opens and closes with their fields) into a buffer, sends requests whose prompt,
//! response text, `Authorization` and `X-Amz-Security-Token` carry a marker through the
//! whole `BedrockThrottleLayer` (over a hyper client to the emulator, and through the AWS
//! SDK wrapper), then checks that the marker is nowhere in the buffer and that the request
//! spans, their fields and the events are. The emulator writes its own fixed text, so the
//! response-text cases use an in-process upstream that answers with the marker.

#![cfg(all(feature = "emulator", feature = "aws-sdk"))]

use std::{
    convert::Infallible,
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_sdk_bedrockruntime::{
    config::{retry::RetryConfig, BehaviorVersion, Credentials, Region},
    primitives::Blob,
    types::{ContentBlock, ConversationRole, InferenceConfiguration, Message},
};
use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message as Frame};
use base64::Engine as _;
use bedrock_throttle::{
    aws::ThrottledHttpClient,
    emulator::{EmulatedQuota, Emulator, EmulatorHandle, Faults, LatencyModel, OutputLength},
    BedrockThrottleLayer, BoxError, Quota, QuotaKey, ThrottleConfig, ThrottleError,
};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::json;
use tower::{service_fn, Layer, Service, ServiceExt};
use tracing_subscriber::fmt::{format::FmtSpan, MakeWriter};

const MARKER: &str = "zq-SECRET-MARKER-81f4";
/// Burndown 1.
const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const MODEL_PATH: &str = "anthropic.claude-3-5-sonnet-20240620-v1%3A0";

/// Everything the subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Installs the capture for this (current-thread) test.
    fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(FmtSpan::FULL)
            .with_writer(capture.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    /// The marker is nowhere, and each of `expected` is somewhere.
    fn check(&self, expected: &[&str]) -> String {
        let text = self.text();
        assert!(text.len() > 1_000, "captured almost nothing: {text}");
        if let Some(at) = text.find(MARKER) {
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
            panic!("the marker leaked: {}", &text[line_start..line_end]);
        }
        for e in expected {
            assert!(text.contains(e), "{e:?} missing from the output:\n{text}");
        }
        text
    }
}

fn anthropic(prompt: &str, max_tokens: serde_json::Value) -> String {
    json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": max_tokens,
        "system": format!("{MARKER} system"),
        "messages": [{"role": "user", "content": format!("{prompt} {MARKER}")}],
    })
    .to_string()
}

/// A request with the marker in its body and in its credential headers, for tenant
/// "tenant-a".
fn request(base: &str, op: &str, body: String) -> Request<Full<Bytes>> {
    let mut req = Request::post(format!("{base}/model/{MODEL_PATH}/{op}"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {MARKER}"))
        .header("x-amz-security-token", MARKER)
        .header("x-amz-date", "20261128T000000Z")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    req.extensions_mut()
        .insert(bedrock_throttle::Tenant::new("tenant-a"));
    req
}

async fn emulator(quota: EmulatedQuota, faults: Faults) -> EmulatorHandle {
    Emulator::builder()
        .default_quota(quota)
        .latency(LatencyModel {
            first_token: Duration::from_millis(5),
            per_output_token: Duration::ZERO,
        })
        .output_tokens(OutputLength::Fixed(20))
        .faults(faults)
        .seed(3)
        .spawn()
        .await
        .unwrap()
}

fn config() -> ThrottleConfig {
    ThrottleConfig::builder()
        .model_quota(MODEL, Quota::tokens_per_minute(1_000_000))
        .base_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(300))
        .max_attempts(10)
        .build()
        .unwrap()
}

/// Sends `req` and reads the whole body (which settles it).
async fn send<S, B>(svc: &mut S, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let resp = svc.ready().await?.call(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(Into::into)?;
    Ok((status, body.to_bytes()))
}

#[tokio::test]
async fn hyper_client_to_the_emulator_success_throttle_retry_stream_and_errors() {
    let (capture, _guard) = Capture::install();
    // One request per second upstream; the gate knows only a generous token quota, so the
    // second request meets an upstream 429 and is retried.
    let emu = emulator(
        EmulatedQuota {
            rpm: Some(1),
            tpm: 1_000_000,
            tpd: None,
            period: Duration::from_secs(1),
        },
        Faults::NONE,
    )
    .await;
    let base = emu.endpoint_url();
    let cfg = config();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut svc = BedrockThrottleLayer::new(cfg.clone()).layer(client.clone());

    // Success, then a throttled request that is retried until upstream has room.
    let (status, _) = send(
        &mut svc,
        request(&base, "invoke", anthropic("hello", json!(64))),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (status, _) = send(
        &mut svc,
        request(&base, "invoke", anthropic("again", json!(64))),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    // A stream (the emulator's InvokeModelWithResponseStream).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, body) = send(
        &mut svc,
        request(
            &base,
            "invoke-with-response-stream",
            anthropic("stream", json!(64)),
        ),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(!body.is_empty());
    // The output limit as a string carrying the marker, and a body that is not JSON (the
    // emulator answers 400): the estimator falls back.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    send(
        &mut svc,
        request(
            &base,
            "invoke",
            anthropic("odd", json!(format!("64 {MARKER}"))),
        ),
    )
    .await
    .unwrap();
    let (status, _) = send(
        &mut svc,
        request(&base, "invoke", format!("not json {MARKER}")),
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    // The gate's own errors: a request larger than the whole quota.
    let err = send(
        &mut svc,
        request(&base, "invoke", anthropic("huge", json!(1_500_000))),
    )
    .await
    .unwrap_err();
    assert!(matches!(
        err.downcast_ref::<ThrottleError>(),
        Some(ThrottleError::NeverFits { .. })
    ));
    // A body over the limit.
    let small = ThrottleConfig::builder()
        .model_quota(MODEL, Quota::tokens_per_minute(1_000_000))
        .body_limit(16)
        .build()
        .unwrap();
    let mut limited = BedrockThrottleLayer::new(small).layer(client.clone());
    let err = send(
        &mut limited,
        request(&base, "invoke", anthropic("big", json!(8))),
    )
    .await
    .unwrap_err();
    assert!(matches!(
        err.downcast_ref::<ThrottleError>(),
        Some(ThrottleError::BodyTooLarge { .. })
    ));
    // No room within max_wait: one request a minute, so the second request waits and gives
    // up. (An upstream without a request limit, so the first is never throttled.)
    let roomy = emulator(
        EmulatedQuota {
            rpm: None,
            tpm: 1_000_000,
            tpd: None,
            period: Duration::from_secs(60),
        },
        Faults::NONE,
    )
    .await;
    let busy = ThrottleConfig::builder()
        .model_quota(MODEL, Quota::new(1, 1_000_000))
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let mut busy = BedrockThrottleLayer::new(busy).layer(client.clone());
    let roomy_base = roomy.endpoint_url();
    send(
        &mut busy,
        request(&roomy_base, "invoke", anthropic("first", json!(100))),
    )
    .await
    .unwrap();
    let err = send(
        &mut busy,
        request(&roomy_base, "invoke", anthropic("second", json!(100))),
    )
    .await
    .unwrap_err();
    assert!(matches!(
        err.downcast_ref::<ThrottleError>(),
        Some(ThrottleError::MaxWaitExceeded { .. })
    ));
    // Connection errors on every attempt.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let quick = ThrottleConfig::builder()
        .model_quota(MODEL, Quota::tokens_per_minute(1_000_000))
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(2))
        .max_attempts(2)
        .build()
        .unwrap();
    let mut refused = BedrockThrottleLayer::new(quick).layer(client);
    let err = send(
        &mut refused,
        request(
            &format!("http://{closed}"),
            "invoke",
            anthropic("nobody", json!(8)),
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(
        err.downcast_ref::<ThrottleError>(),
        Some(ThrottleError::Upstream { attempts: 2, .. })
    ));

    let text = capture.check(&[
        "bedrock_request",
        &format!("quota_key={MODEL}"),
        "tenant=\"tenant-a\"",
        "priority=Interactive",
        "input_tokens=",
        "output_limit=64",
        "reserved_tokens=",
        "settled_tokens=",
        "status=200",
        "status=429",
        "outcome=\"success\"",
        "outcome=\"error_response\"",
        "outcome=\"never_fits\"",
        "outcome=\"max_wait_exceeded\"",
        "no room: queued",
        "outcome=\"body_too_large\"",
        "outcome=\"upstream_error\"",
        "estimate=Heuristic",
        "upstream throttled",
        "retrying",
        "retrying after an error",
        "estimated request",
        "calibration updated",
        "output limit given as a string",
        "request body is not JSON",
        "settled",
        "close",
    ]);
    // The throttled request took more than one attempt, all in its one span.
    let most_attempts = text
        .lines()
        .filter(|l| l.contains("bedrock_request{") && l.contains(": close "))
        .filter_map(|l| {
            l.split("attempts=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .max();
    assert!(
        most_attempts > Some(1),
        "{most_attempts:?}: {:?}",
        text.lines()
            .filter(|l| l.contains("close"))
            .collect::<Vec<_>>()
    );
    let stats = cfg.stats();
    let key = stats
        .key(&QuotaKey::new(Some(MODEL), None))
        .expect("the model's key");
    assert!(key.admitted >= 6, "{key:?}");
    assert!(key.throttled >= 1, "{key:?}");
    assert!(key.retried >= 1, "{key:?}");
    assert!(
        key.tokens_settled > 0 && key.tokens_reserved > key.tokens_settled,
        "{key:?}"
    );
    assert!(
        key.input_tokens_actual > 0 && key.input_tokens_estimated > 0,
        "{key:?}"
    );
    assert_eq!(key.queue_depth, 0);
    assert_eq!(
        key.quota,
        Some(Quota::tokens_per_minute(1_000_000).with_burndown(1.0))
    );
    // Upstream's 429 said "Too many requests": the key slowed down by gaining a request
    // limit, its token rate untouched.
    let effective = key.effective.unwrap();
    assert!(effective.requests().is_some(), "slowed after the throttle");
    assert_eq!(effective.tokens(), 1_000_000);
    assert!(key.calibration_ratio.is_some());
}

#[tokio::test]
async fn stream_throttles_in_the_first_frame_and_later_are_traced_without_content() {
    let (capture, _guard) = Capture::install();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for faults in [
        Faults {
            stream_throttle_first: 1.0,
            ..Faults::NONE
        },
        Faults {
            stream_throttle: 1.0,
            ..Faults::NONE
        },
    ] {
        let emu = emulator(EmulatedQuota::default(), faults).await;
        let cfg = ThrottleConfig::builder()
            .model_quota(MODEL, Quota::tokens_per_minute(1_000_000))
            .base_delay(Duration::from_millis(1))
            .max_delay(Duration::from_millis(2))
            .max_attempts(2)
            .build()
            .unwrap();
        let mut svc = BedrockThrottleLayer::new(cfg.clone()).layer(client.clone());
        let _ = send(
            &mut svc,
            request(
                &emu.endpoint_url(),
                "invoke-with-response-stream",
                anthropic("stream", json!(64)),
            ),
        )
        .await
        .unwrap();
        let key = cfg.stats().keys[0].clone();
        assert!(key.throttled >= 1, "{key:?}");
    }
    capture.check(&[
        "upstream throttled",
        "in_stream=true",
        "in_stream=false",
        "status=429",
    ]);
}

fn frame(headers: &[(&'static str, &'static str)], payload: String) -> Vec<u8> {
    let mut m = Frame::new(payload);
    for (k, v) in headers {
        m = m.add_header(Header::new(*k, HeaderValue::String((*v).into())));
    }
    let mut out = Vec::new();
    write_message_to(&m, &mut out).unwrap();
    out
}

fn chunk(event: serde_json::Value) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(event.to_string());
    frame(
        &[(":event-type", "chunk"), (":message-type", "event")],
        json!({ "bytes": b64 }).to_string(),
    )
}

#[tokio::test]
async fn response_texts_and_error_messages_with_the_marker_are_not_printed() {
    let (capture, _guard) = Capture::install();
    let calls = Arc::new(Mutex::new(0u32));
    let upstream = {
        let calls = calls.clone();
        service_fn(move |req: Request<Full<Bytes>>| {
            let calls = calls.clone();
            async move {
                let n = {
                    let mut c = calls.lock().unwrap();
                    *c += 1;
                    *c
                };
                let stream = req.uri().path().ends_with("invoke-with-response-stream");
                let resp = match (stream, n) {
                    // A throttle whose message carries the marker, then the answer.
                    (false, 1) => Response::builder()
                        .status(429)
                        .header("x-amzn-errortype", "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/")
                        .body(Full::new(Bytes::from(
                            json!({"message": format!("Too many tokens {MARKER}")}).to_string(),
                        ))),
                    (false, _) => Response::builder()
                        .header("content-type", "application/json")
                        .header("x-amzn-bedrock-input-token-count", "40")
                        .header("x-amzn-bedrock-output-token-count", "12")
                        .body(Full::new(Bytes::from(
                            json!({"content": [{"type": "text", "text": format!("answer {MARKER}")}],
                                   "usage": {"input_tokens": 40, "output_tokens": 12}})
                            .to_string(),
                        ))),
                    // A first-frame exception with the marker, then a stream of marked text.
                    (true, 3) => Response::builder()
                        .header("content-type", "application/vnd.amazon.eventstream")
                        .body(Full::new(Bytes::from(frame(
                            &[(":exception-type", "throttlingException"), (":message-type", "exception")],
                            json!({"message": format!("slow down {MARKER}")}).to_string(),
                        )))),
                    (true, _) => {
                        let mut body = chunk(json!({"type": "content_block_delta",
                            "delta": {"type": "text_delta", "text": format!("streamed {MARKER}")}}));
                        body.extend(chunk(json!({"type": "message_stop",
                            "amazon-bedrock-invocationMetrics": {"inputTokenCount": 40, "outputTokenCount": 9,
                                "invocationLatency": 5, "firstByteLatency": 1}})));
                        Response::builder()
                            .header("content-type", "application/vnd.amazon.eventstream")
                            .body(Full::new(Bytes::from(body)))
                    }
                };
                Ok::<_, Infallible>(resp.unwrap())
            }
        })
    };
    let cfg = config();
    let mut svc = BedrockThrottleLayer::new(cfg.clone())
        .layer(upstream)
        .map_err(BoxError::from);
    let base = "https://bedrock-runtime.us-east-1.amazonaws.com";
    let (status, body) = send(&mut svc, request(base, "invoke", anthropic("q", json!(64))))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&body).contains(MARKER),
        "the caller still gets it"
    );
    let (status, body) = send(
        &mut svc,
        request(
            base,
            "invoke-with-response-stream",
            anthropic("q", json!(64)),
        ),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    // The marked text, base64 in its chunk frame, reached the caller.
    let encoded = base64::engine::general_purpose::STANDARD.encode(
        json!({"type": "content_block_delta",
               "delta": {"type": "text_delta", "text": format!("streamed {MARKER}")}})
        .to_string(),
    );
    assert!(String::from_utf8_lossy(&body).contains(&encoded));
    capture.check(&[
        "quota_key=anthropic.claude-3-5-sonnet-20240620-v1:0 in us-east-1",
        "upstream throttled",
        "retrying",
        "settled_tokens=52",
        "settled_tokens=49",
        "input_actual=40",
    ]);
}

#[tokio::test]
async fn the_aws_sdk_wrapper_prints_no_prompt_and_no_session_token() {
    let (capture, _guard) = Capture::install();
    let emu = emulator(
        EmulatedQuota {
            rpm: Some(1),
            tpm: 1_000_000,
            tpd: None,
            period: Duration::from_secs(1),
        },
        Faults::NONE,
    )
    .await;
    let cfg = config();
    let conf = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(emu.endpoint_url())
        .credentials_provider(Credentials::new(
            "AKIDEXAMPLE",
            format!("secret-{MARKER}"),
            Some(format!("session-{MARKER}")),
            None,
            "test",
        ))
        .http_client(ThrottledHttpClient::new(
            aws_smithy_http_client::Builder::new().build_http(),
            cfg.clone(),
        ))
        .retry_config(RetryConfig::disabled())
        .build();
    let client = aws_sdk_bedrockruntime::Client::from_conf(conf);
    // Two calls in one upstream second: the second is throttled and retried.
    for _ in 0..2 {
        client
            .invoke_model()
            .model_id(MODEL)
            .body(Blob::new(anthropic("sdk", json!(64))))
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let out = client
        .converse_stream()
        .model_id(MODEL)
        .messages(
            Message::builder()
                .role(ConversationRole::User)
                .content(ContentBlock::Text(format!("converse {MARKER}")))
                .build()
                .unwrap(),
        )
        .inference_config(InferenceConfiguration::builder().max_tokens(64).build())
        .send()
        .await
        .unwrap();
    let mut events = out.stream;
    while events.recv().await.unwrap().is_some() {}
    capture.check(&[
        "bedrock_request",
        "upstream throttled",
        "retrying",
        "settled_tokens=",
        "outcome=\"success\"",
    ]);
    let key = cfg.stats().keys[0].clone();
    assert!(key.retried >= 1 && key.admitted >= 3, "{key:?}");
}
