//! The real SDK's streaming operations (`converse_stream`, `invoke_model_with_response_stream`)
//! through `ThrottledHttpClient`, over loopback against the crate's emulator, in real time
//! with short quota periods: settlement from the usage frames, a throttle in the middle of a
//! stream, and a throttle in its first frame.

#![cfg(all(feature = "aws-sdk", feature = "emulator"))]

mod sdk;

use std::time::Duration;

use aws_sdk_bedrockruntime::{
    error::ProvideErrorMetadata,
    types::{ConverseStreamOutput, InferenceConfiguration},
    Client,
};
use bedrock_throttle::{
    emulator::{EmulatedQuota, Emulator, EmulatorHandle, Faults, LatencyModel, OutputLength},
    BoxError, Quota, ThrottleError,
};
use sdk::{anthropic_body, config, message, throttled, MODEL};
use tokio::time::{timeout, Instant};

/// Every test must end well within this.
const DEADLINE: Duration = Duration::from_secs(15);
/// The emulator's message for a token throttle.
const TOO_MANY_TOKENS: &str = "Too many tokens, please wait before trying again.";

/// 20 output tokens per answer, 4 characters a token, the first event after 20 ms.
async fn emulator(faults: Faults, seed: u64) -> EmulatorHandle {
    Emulator::builder()
        .default_quota(EmulatedQuota {
            rpm: None,
            tpm: 1_000_000,
            tpd: None,
            period: Duration::from_secs(60),
        })
        .latency(LatencyModel {
            first_token: Duration::from_millis(20),
            per_output_token: Duration::from_millis(1),
        })
        .chars_per_token(4.0)
        .output_tokens(OutputLength::Fixed(20))
        .stream_chunk_tokens(4)
        .faults(faults)
        .seed(seed)
        .spawn()
        .await
        .unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    ConverseStream,
    InvokeStream,
}

const OPS: [Op; 2] = [Op::ConverseStream, Op::InvokeStream];

/// What the SDK's `EventReceiver` yielded for one streaming call.
#[derive(Debug)]
struct Received {
    /// Events before the end or the error.
    events: usize,
    /// Output tokens of ConverseStream's `metadata` event.
    usage: Option<i32>,
    /// The error that ended the stream: whether it is a throttling exception, and its
    /// message.
    error: Option<(bool, Option<String>)>,
}

/// Sends one streaming call and reads its stream to the end (or its error).
async fn stream(
    client: &Client,
    op: Op,
    prompt: &str,
    max_tokens: i32,
) -> Result<Received, BoxError> {
    let mut received = Received {
        events: 0,
        usage: None,
        error: None,
    };
    match op {
        Op::ConverseStream => {
            let mut out = client
                .converse_stream()
                .model_id(MODEL)
                .messages(message(prompt))
                .inference_config(
                    InferenceConfiguration::builder()
                        .max_tokens(max_tokens)
                        .build(),
                )
                .send()
                .await?;
            loop {
                match out.stream.recv().await {
                    Ok(Some(event)) => {
                        received.events += 1;
                        if let ConverseStreamOutput::Metadata(m) = event {
                            received.usage = m.usage().map(|u| u.output_tokens());
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let e = e.into_service_error();
                        received.error =
                            Some((e.is_throttling_exception(), e.message().map(str::to_owned)));
                        break;
                    }
                }
            }
        }
        Op::InvokeStream => {
            let mut out = client
                .invoke_model_with_response_stream()
                .model_id(MODEL)
                .body(anthropic_body(prompt, max_tokens as u64))
                .send()
                .await?;
            loop {
                match out.body.recv().await {
                    Ok(Some(_)) => received.events += 1,
                    Ok(None) => break,
                    Err(e) => {
                        let e = e.into_service_error();
                        received.error =
                            Some((e.is_throttling_exception(), e.message().map(str::to_owned)));
                        break;
                    }
                }
            }
        }
    }
    Ok(received)
}

/// The `ThrottleError` somewhere in an error's source chain.
fn throttle_error<'a>(mut e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ThrottleError> {
    loop {
        if let Some(t) = e.downcast_ref::<ThrottleError>() {
            return Some(t);
        }
        e = e.source()?;
    }
}

#[tokio::test]
async fn both_streaming_operations_settle_from_their_usage_frames() {
    let emu = emulator(Faults::NONE, 7).await;
    // 1,000 tokens a minute: a call reserves about 615 (max_tokens 600) and uses about 25,
    // so each next call fits at once only if the stream before it was settled.
    let cfg = config(Quota::tokens_per_minute(1_000))
        .max_wait(Duration::from_millis(200))
        .build()
        .unwrap();
    let client = throttled(&emu, &cfg);
    let prompt = "tell me a story about quotas";
    timeout(DEADLINE, async {
        for op in [OPS, OPS].concat() {
            let got = stream(&client, op, prompt, 600)
                .await
                .unwrap_or_else(|e| panic!("{op:?} fits: {e:?}"));
            assert!(got.events > 3, "{op:?}: {got:?}");
            assert!(got.error.is_none(), "{op:?}: {got:?}");
            if op == Op::ConverseStream {
                assert_eq!(got.usage, Some(20));
            }
        }
    })
    .await
    .expect("no hang");
    let s = emu.stats().model(MODEL);
    assert_eq!((s.requests, s.admitted, s.settled), (4, 4, 4), "{s:?}");
    assert_eq!(s.output_tokens, 4 * 20, "{s:?}");
    assert_eq!(s.tokens_billed, s.input_tokens + s.output_tokens, "{s:?}");
    assert_eq!(s.throttled_tpm, 0, "{s:?}");

    // Control: a stream held open before its usage frame keeps its whole reservation, so the
    // next call does not fit and gives up after max_wait without being sent.
    let mut held = client
        .converse_stream()
        .model_id(MODEL)
        .messages(message(prompt))
        .inference_config(InferenceConfiguration::builder().max_tokens(600).build())
        .send()
        .await
        .expect("fits");
    held.stream.recv().await.expect("first event");
    let err = timeout(DEADLINE, stream(&client, Op::InvokeStream, prompt, 600))
        .await
        .expect("no hang")
        .expect_err("no room while the first stream is unsettled");
    assert!(
        matches!(
            throttle_error(&*err),
            Some(ThrottleError::MaxWaitExceeded { .. })
        ),
        "{err:?}"
    );
    drop(held);
    assert_eq!(emu.stats().model(MODEL).requests, 5);
    emu.shutdown().await;
}

/// Streams once, then measures how long the next call takes to its first event.
async fn next_call_after_one_stream(faults: Faults, op: Op) -> (Received, Duration) {
    let emu = emulator(faults, 7).await;
    // 150 tokens a second; a call reserves about 105 (max_tokens 100).
    let cfg = config(Quota::tokens_per_minute(300).with_period(Duration::from_secs(2)))
        .max_wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let client = throttled(&emu, &cfg);
    let first = stream(&client, op, "stream me a story", 100)
        .await
        .expect("HTTP 200");
    let start = Instant::now();
    let mut second = client
        .converse_stream()
        .model_id(MODEL)
        .messages(message("and another one"))
        .inference_config(InferenceConfiguration::builder().max_tokens(100).build())
        .send()
        .await
        .expect("admitted");
    second.stream.recv().await.expect("first event");
    let waited = start.elapsed();
    let s = emu.stats().model(MODEL);
    // Both calls are throttled halfway through (the second after the event read here), or
    // neither.
    let expected = 2 * u64::from(faults.stream_throttle > 0.0);
    assert_eq!(
        (s.requests, s.faults_stream_throttle),
        (2, expected),
        "{s:?}"
    );
    emu.shutdown().await;
    (first, waited)
}

#[tokio::test]
async fn a_mid_stream_throttle_reaches_the_sdk_unchanged_and_slows_the_gate() {
    let throttle = Faults {
        stream_throttle: 1.0,
        ..Faults::NONE
    };
    timeout(DEADLINE, async {
        for op in OPS {
            let (first, unthrottled) = next_call_after_one_stream(Faults::NONE, op).await;
            assert!(first.error.is_none(), "{op:?}: {first:?}");

            let (first, throttled) = next_call_after_one_stream(throttle, op).await;
            // The SDK saw the events sent before the throttle, then the throttle itself.
            assert!(first.events >= 3, "{op:?}: data came first: {first:?}");
            assert_eq!(
                first.error,
                Some((true, Some(TOO_MANY_TOKENS.to_owned()))),
                "{op:?}: {first:?}"
            );
            assert_eq!(first.usage, None);
            // Unthrottled, the second call's 105 tokens fit at once. The throttle emptied the
            // bucket and cut the rate to 70 %: about 105 / (0.7 × 150) s = 1 s of waiting.
            assert!(
                unthrottled < Duration::from_millis(300),
                "{op:?}: {unthrottled:?}"
            );
            assert!(
                throttled > Duration::from_millis(700) && throttled < Duration::from_secs(3),
                "{op:?}: {throttled:?}"
            );
        }
    })
    .await
    .expect("no hang");
}

#[tokio::test]
async fn a_first_frame_throttle_is_retried_and_the_sdk_sees_a_normal_stream() {
    // Half the streaming calls are throttled in their first frame. With this seed the first
    // call of each operation is, and its retry is not.
    let faults = Faults {
        stream_throttle_first: 0.5,
        ..Faults::NONE
    };
    let cfg = config(Quota::tokens_per_minute(100_000)).build().unwrap();
    timeout(DEADLINE, async {
        for op in OPS {
            let emu = emulator(faults, 5).await;
            let client = throttled(&emu, &cfg);
            let got = stream(&client, op, "stream me a story", 100)
                .await
                .unwrap_or_else(|e| panic!("{op:?}: {e:?}"));
            assert!(got.events > 3, "{op:?}: {got:?}");
            assert!(got.error.is_none(), "{op:?}: {got:?}");
            if op == Op::ConverseStream {
                assert_eq!(got.usage, Some(20));
            }
            let s = emu.stats().model(MODEL);
            assert_eq!(
                (
                    s.requests,
                    s.faults_stream_throttle_first,
                    s.admitted,
                    s.settled
                ),
                (2, 1, 1, 1),
                "{op:?}: {s:?}"
            );
            emu.shutdown().await;
        }
    })
    .await
    .expect("no hang");
}

#[tokio::test]
async fn a_first_frame_throttle_past_the_last_attempt_is_the_sdks_throttling_error() {
    let faults = Faults {
        stream_throttle_first: 1.0,
        ..Faults::NONE
    };
    let cfg = config(Quota::tokens_per_minute(100_000))
        .max_attempts(2)
        .build()
        .unwrap();
    timeout(DEADLINE, async {
        for op in OPS {
            let emu = emulator(faults, 7).await;
            let client = throttled(&emu, &cfg);
            let err = match stream(&client, op, "stream me a story", 100).await {
                Ok(got) => panic!("{op:?}: not an error: {got:?}"),
                Err(e) => e,
            };
            let (throttling, code, message) = match op {
                Op::ConverseStream => {
                    let e = err
                        .downcast::<aws_sdk_bedrockruntime::error::SdkError<
                            aws_sdk_bedrockruntime::operation::converse_stream::ConverseStreamError,
                            aws_smithy_runtime_api::client::orchestrator::HttpResponse,
                        >>()
                        .expect("the SDK's error");
                    let raw_status = e.raw_response().map(|r| r.status().as_u16());
                    assert_eq!(raw_status, Some(429), "{op:?}: {e:?}");
                    let e = e.into_service_error();
                    (
                        e.is_throttling_exception(),
                        e.code().map(str::to_owned),
                        e.message().map(str::to_owned),
                    )
                }
                Op::InvokeStream => {
                    let e = err
                        .downcast::<aws_sdk_bedrockruntime::error::SdkError<
                            aws_sdk_bedrockruntime::operation::invoke_model_with_response_stream::InvokeModelWithResponseStreamError,
                            aws_smithy_runtime_api::client::orchestrator::HttpResponse,
                        >>()
                        .expect("the SDK's error");
                    let raw_status = e.raw_response().map(|r| r.status().as_u16());
                    assert_eq!(raw_status, Some(429), "{op:?}: {e:?}");
                    let e = e.into_service_error();
                    (
                        e.is_throttling_exception(),
                        e.code().map(str::to_owned),
                        e.message().map(str::to_owned),
                    )
                }
            };
            assert!(throttling, "{op:?}: {code:?} {message:?}");
            assert_eq!(code.as_deref(), Some("ThrottlingException"));
            assert_eq!(message.as_deref(), Some(TOO_MANY_TOKENS));
            let s = emu.stats().model(MODEL);
            assert_eq!(
                (s.requests, s.faults_stream_throttle_first, s.admitted),
                (2, 2, 0),
                "{op:?}: {s:?}"
            );
            emu.shutdown().await;
        }
    })
    .await
    .expect("no hang");
}
