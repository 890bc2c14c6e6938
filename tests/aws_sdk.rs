//! The real `aws-sdk-bedrockruntime` client (SigV4 and all) through `ThrottledHttpClient`,
//! over loopback against the crate's emulator, in real time with short quota periods.

#![cfg(all(feature = "aws-sdk", feature = "emulator"))]

mod sdk;

use std::time::Duration;

use aws_sdk_bedrockruntime::{
    config::retry::RetryConfig,
    types::{ConverseStreamOutput, InferenceConfiguration},
    Client,
};
use aws_smithy_runtime_api::client::result::{ConnectorError, SdkError};
use bedrock_throttle::{
    aws::ThrottledHttpClient,
    emulator::{EmulatedQuota, Emulator, EmulatorHandle, Faults, LatencyModel, OutputLength},
    BedrockThrottleLayer, BoxError, Quota, ThrottleError,
};
use bytes::Bytes;
use http_body_util::Full;
use sdk::{anthropic_body, config, message, sdk_client, throttled, MODEL};
use tokio::time::{timeout, Instant};
use tower::{service_fn, Layer, ServiceExt};

/// Every test must end well within this.
const DEADLINE: Duration = Duration::from_secs(20);

async fn emulator(quota: EmulatedQuota, latency: LatencyModel, faults: Faults) -> EmulatorHandle {
    Emulator::builder()
        .default_quota(quota)
        .latency(latency)
        .chars_per_token(4.0)
        .output_tokens(OutputLength::Fixed(20))
        .faults(faults)
        .seed(7)
        .spawn()
        .await
        .unwrap()
}

fn quota(tpm: u64, period: Duration) -> EmulatedQuota {
    EmulatedQuota {
        rpm: None,
        tpm,
        tpd: None,
        period,
    }
}

async fn invoke(client: &Client, prompt: &str, max_tokens: u64) -> Result<(), BoxError> {
    client
        .invoke_model()
        .model_id(MODEL)
        .body(anthropic_body(prompt, max_tokens))
        .send()
        .await?;
    Ok(())
}

async fn converse(client: &Client, prompt: &str, max_tokens: i32) -> Result<(), BoxError> {
    let out = client
        .converse()
        .model_id(MODEL)
        .messages(message(prompt))
        .inference_config(
            InferenceConfiguration::builder()
                .max_tokens(max_tokens)
                .build(),
        )
        .send()
        .await?;
    assert_eq!(out.usage().map(|u| u.output_tokens()), Some(20));
    Ok(())
}

/// The connector error of an SDK dispatch failure.
fn connector_error<E, R>(e: &SdkError<E, R>) -> &ConnectorError {
    match e {
        SdkError::DispatchFailure(d) => d.as_connector_error().expect("a connector error"),
        _ => panic!("not a dispatch failure"),
    }
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
async fn invoke_model_and_converse_succeed_through_emulated_throttling() {
    // 600 tokens a second; each call reserves about 110 (input + max_tokens 100) and uses
    // about 30, so 24 calls at once ask for four times what the bucket holds.
    let period = Duration::from_secs(1);
    let latency = LatencyModel {
        first_token: Duration::from_millis(50),
        per_output_token: Duration::from_millis(2),
    };
    let emu = emulator(quota(600, period), latency, Faults::NONE).await;
    let cfg = config(Quota::tokens_per_minute(600).with_period(period))
        .build()
        .unwrap();
    let client = throttled(&emu, &cfg);

    let started = Instant::now();
    let calls = (0..24).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            let prompt = format!("request number {i:02}: tell me about quotas");
            if i % 2 == 0 {
                invoke(&client, &prompt, 100).await
            } else {
                converse(&client, &prompt, 100).await
            }
        })
    });
    let results = timeout(DEADLINE, futures_join(calls))
        .await
        .expect("no hang");
    for r in results {
        r.expect("every call succeeds");
    }
    let stats = emu.stats().model(MODEL);
    assert_eq!(stats.admitted, 24, "{stats:?}");
    assert_eq!(stats.settled, 24, "{stats:?}");
    assert_eq!(stats.output_tokens, 24 * 20, "{stats:?}");
    assert_eq!(
        stats.tokens_billed,
        stats.input_tokens + stats.output_tokens,
        "billed = input + output (burndown 1): {stats:?}"
    );
    let throttled = stats.throttled_tpm + stats.throttled_rpm;
    // Ungated, most of the 24 would be refused at once; a throttle or two can slip through
    // where the estimate of a prompt falls short of the emulator's count.
    assert!(
        throttled <= 3,
        "the gate kept almost every request inside the quota: {stats:?}"
    );
    // Throughput stays near the quota, not crushed by backoff.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    emu.shutdown().await;
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn usage_is_settled_from_invoke_headers_and_the_converse_body() {
    // The client's budget holds 1,000 tokens a minute. A call reserves about 615
    // (max_tokens 600) and uses about 35, so a second call fits at once only if the first
    // was settled to its usage.
    let latency = LatencyModel {
        first_token: Duration::from_millis(400),
        per_output_token: Duration::ZERO,
    };
    let emu = emulator(
        quota(1_000_000, Duration::from_secs(60)),
        latency,
        Faults::NONE,
    )
    .await;
    let cfg = config(Quota::tokens_per_minute(1_000))
        .max_wait(Duration::from_millis(200))
        .build()
        .unwrap();
    let client = throttled(&emu, &cfg);

    let prompt = "what is a token bucket?";
    timeout(DEADLINE, async {
        invoke(&client, prompt, 600).await.expect("first invoke");
        invoke(&client, prompt, 600)
            .await
            .expect("settled from headers");
        converse(&client, prompt, 600)
            .await
            .expect("first converse");
        converse(&client, prompt, 600)
            .await
            .expect("settled from the body");
        converse(&client, prompt, 600).await.expect("and again");
    })
    .await
    .expect("no hang");

    // Control: while a call is in flight its whole reservation is held, so a second one
    // does not fit and gives up after max_wait without being sent.
    let first = tokio::spawn({
        let client = client.clone();
        async move { invoke(&client, prompt, 600).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = client
        .invoke_model()
        .model_id(MODEL)
        .body(anthropic_body(prompt, 600))
        .send()
        .await
        .expect_err("no room while the first is unsettled");
    assert!(
        matches!(
            throttle_error(&err),
            Some(ThrottleError::MaxWaitExceeded { .. })
        ),
        "{err:?}"
    );
    let connector = connector_error(&err);
    assert!(connector.is_other() && connector.as_other().is_none());
    first.await.unwrap().expect("first call");
    assert_eq!(emu.stats().model(MODEL).requests, 6);
    emu.shutdown().await;
}

#[tokio::test]
async fn an_oversize_request_fails_with_the_throttle_error_inside_the_sdk_error() {
    let emu = emulator(
        quota(1_000_000, Duration::from_secs(60)),
        LatencyModel::ZERO,
        Faults::NONE,
    )
    .await;
    let cfg = config(Quota::tokens_per_minute(100_000))
        .body_limit(256)
        .build()
        .unwrap();
    // The SDK's standard retry is on: it must not repeat our verdict.
    let inner = aws_smithy_http_client::Builder::new().build_http();
    let client = sdk_client(
        &emu.endpoint_url(),
        ThrottledHttpClient::new(inner, cfg),
        RetryConfig::standard()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_secs(2)),
    );
    let started = Instant::now();
    let err = timeout(DEADLINE, invoke(&client, &"x".repeat(1_000), 100))
        .await
        .expect("no hang")
        .expect_err("too large");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the SDK did not back off and retry: {:?}",
        started.elapsed()
    );
    let sdk = err
        .downcast_ref::<SdkError<
            aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelError,
            aws_smithy_runtime_api::client::orchestrator::HttpResponse,
        >>()
        .expect("the SDK's error");
    let connector = connector_error(sdk);
    assert!(connector.is_user(), "{connector:?}");
    assert!(
        matches!(
            throttle_error(sdk),
            Some(ThrottleError::BodyTooLarge { limit: 256 })
        ),
        "{sdk:?}"
    );
    assert_eq!(emu.stats().total().requests, 0, "nothing was sent");
    emu.shutdown().await;
}

#[tokio::test]
async fn sdk_retry_left_on_ends_within_the_product_of_attempts() {
    let emu = emulator(
        quota(1_000_000, Duration::from_secs(60)),
        LatencyModel::ZERO,
        Faults {
            http_503: 1.0,
            ..Faults::NONE
        },
    )
    .await;
    let cfg = config(Quota::tokens_per_minute(100_000))
        .max_attempts(2)
        .build()
        .unwrap();
    let inner = aws_smithy_http_client::Builder::new().build_http();
    let client = sdk_client(
        &emu.endpoint_url(),
        ThrottledHttpClient::new(inner, cfg),
        RetryConfig::standard()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(50)),
    );
    let err = timeout(DEADLINE, invoke(&client, "hello", 100))
        .await
        .expect("the call ends")
        .expect_err("always 503");
    let sdk = err
        .downcast_ref::<SdkError<
            aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelError,
            aws_smithy_runtime_api::client::orchestrator::HttpResponse,
        >>()
        .expect("the SDK's error");
    assert!(
        sdk.as_service_error()
            .is_some_and(|e| e.is_service_unavailable_exception()),
        "{sdk:?}"
    );
    let stats = emu.stats().model(MODEL);
    // 3 SDK attempts, each retried once by the throttle.
    assert_eq!(stats.requests, 3 * 2, "{stats:?}");
    assert_eq!(stats.faults_503, 3 * 2, "{stats:?}");
    emu.shutdown().await;
}

#[tokio::test]
async fn sdk_clients_and_a_tower_stack_from_one_config_share_one_budget() {
    let emu = emulator(
        quota(1_000_000, Duration::from_secs(60)),
        LatencyModel::ZERO,
        Faults::NONE,
    )
    .await;
    // Two requests a minute for everything built from `cfg`.
    let cfg = config(Quota::new(2, 100_000))
        .max_wait(Duration::from_millis(200))
        .build()
        .unwrap();
    let a = throttled(&emu, &cfg);
    let b = throttled(&emu, &cfg.clone());
    timeout(DEADLINE, async {
        invoke(&a, "one", 100).await.expect("first of two");
        converse(&b, "two", 100).await.expect("second of two");
        let err = invoke(&a, "three", 100).await.expect_err("budget spent");
        assert!(
            matches!(
                throttle_error(&*err),
                Some(ThrottleError::MaxWaitExceeded { .. })
            ),
            "{err:?}"
        );
        let err = converse(&b, "three", 100).await.expect_err("for both");
        assert!(throttle_error(&*err).is_some(), "{err:?}");
    })
    .await
    .expect("no hang");

    // A tower stack built from the same configuration finds the budget spent too.
    let upstream = service_fn(|_req: http::Request<Full<Bytes>>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
    });
    let stack = BedrockThrottleLayer::new(cfg.clone()).layer(upstream);
    let request = http::Request::post("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke")
        .body(Full::new(Bytes::from(
            anthropic_body("four", 100).into_inner(),
        )))
        .unwrap();
    let err = stack.oneshot(request).await.expect_err("budget spent");
    assert!(
        matches!(
            err.downcast_ref::<ThrottleError>(),
            Some(ThrottleError::MaxWaitExceeded { .. })
        ),
        "{err:?}"
    );

    // A client of another configuration has a budget of its own.
    let other = config(Quota::new(2, 100_000)).build().unwrap();
    invoke(&throttled(&emu, &other), "five", 100)
        .await
        .expect("separate budget");
    assert_eq!(emu.stats().model(MODEL).requests, 3);
    emu.shutdown().await;
}

#[tokio::test]
async fn streaming_operations_work_through_the_wrapper() {
    let latency = LatencyModel {
        first_token: Duration::from_millis(20),
        per_output_token: Duration::from_millis(1),
    };
    let emu = emulator(
        quota(1_000_000, Duration::from_secs(60)),
        latency,
        Faults::NONE,
    )
    .await;
    let cfg = config(Quota::tokens_per_minute(100_000)).build().unwrap();
    let client = throttled(&emu, &cfg);

    timeout(DEADLINE, async {
        let mut out = client
            .converse_stream()
            .model_id(MODEL)
            .messages(message("stream me a story"))
            .inference_config(InferenceConfiguration::builder().max_tokens(100).build())
            .send()
            .await
            .expect("converse_stream");
        let (mut events, mut usage) = (0, None);
        while let Some(event) = out.stream.recv().await.expect("event") {
            events += 1;
            if let ConverseStreamOutput::Metadata(m) = event {
                usage = m.usage().map(|u| u.output_tokens());
            }
        }
        assert!(events > 2, "{events} events");
        assert_eq!(usage, Some(20));

        let mut out = client
            .invoke_model_with_response_stream()
            .model_id(MODEL)
            .body(anthropic_body("stream me a story", 100))
            .send()
            .await
            .expect("invoke_model_with_response_stream");
        let mut chunks = 0;
        while out.body.recv().await.expect("chunk").is_some() {
            chunks += 1;
        }
        assert!(chunks > 1, "{chunks} chunks");
    })
    .await
    .expect("no hang");
    let stats = emu.stats().model(MODEL);
    assert_eq!((stats.admitted, stats.settled), (2, 2), "{stats:?}");
    emu.shutdown().await;
}
