//! Daily token quotas against the emulator over loopback HTTP, in virtual time: Bedrock's
//! own daily refusal is passed on without a retry, and a gate that knows the daily quota
//! refuses before upstream has to.
#![cfg(feature = "emulator")]

use std::time::Duration;

use bedrock_throttle::{
    emulator::{EmulatedQuota, Emulator, EmulatorHandle, LatencyModel, OutputLength},
    retry::Attempts,
    BedrockThrottleLayer, Quota, ThrottleConfig, ThrottleError,
};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

/// Burndown 1: upstream charges input + output.
const MODEL: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";
const TPD: u64 = 10_000;

/// An upstream with a daily quota of 10,000 tokens that always writes 500 output tokens.
async fn upstream() -> EmulatorHandle {
    Emulator::builder()
        .model_quota(
            MODEL,
            EmulatedQuota {
                rpm: None,
                tpm: 1_000_000,
                tpd: Some(TPD),
                period: Duration::from_secs(60),
            },
        )
        .latency(LatencyModel::ZERO)
        .output_tokens(OutputLength::Fixed(500))
        .seed(19)
        .spawn()
        .await
        .unwrap()
}

/// An InvokeModel request that asks for up to 2,000 output tokens.
fn invoke(url: &str) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 2_000,
        "messages": [{"role": "user", "content": "Summarise the Broad Street outbreak."}],
    });
    Request::post(format!("{url}/model/{MODEL}/invoke"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn bedrocks_daily_refusal_is_passed_on_after_one_attempt() {
    let emu = upstream().await;
    let url = emu.endpoint_url();
    let cfg = ThrottleConfig::builder()
        .model_quota(MODEL, Quota::tokens_per_minute(1_000_000))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let mut refused = None;
    for _ in 0..50 {
        let resp = svc.clone().oneshot(invoke(&url)).await.unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(resp);
            break;
        }
        resp.into_body().collect().await.unwrap();
    }
    let resp = refused.expect("upstream's day ran out");
    assert_eq!(resp.extensions().get::<Attempts>(), Some(&Attempts(1)));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("Too many tokens per day"), "{body}");
    let s = emu.stats().model(MODEL);
    assert_eq!(s.throttled_tpd, 1);
    emu.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_gate_that_knows_the_day_refuses_before_upstream_does() {
    let emu = upstream().await;
    let url = emu.endpoint_url();
    let cfg = ThrottleConfig::builder()
        .model_quota(
            MODEL,
            Quota::tokens_per_minute(1_000_000).with_tokens_per_day(TPD),
        )
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let mut sent = 0;
    let error = loop {
        let start = Instant::now();
        match svc.clone().oneshot(invoke(&url)).await {
            Ok(resp) => {
                assert_eq!(resp.status(), StatusCode::OK);
                resp.into_body().collect().await.unwrap();
                sent += 1;
                assert!(sent < 50, "the gate never refused");
            }
            Err(e) => {
                assert_eq!(start.elapsed(), Duration::ZERO, "refused at once: {e}");
                break e;
            }
        }
    };
    match error.downcast_ref::<ThrottleError>() {
        Some(ThrottleError::DailyQuotaExhausted {
            key: Some(_),
            limit: TPD,
            used,
            needed,
            ..
        }) => assert!(used + needed > TPD, "{used} + {needed}"),
        _ => panic!("{error}"),
    }
    // Each reserved over 2,000 and was settled to what it used, about 500 + its input:
    // far more than the 5 that reservations alone would have let through.
    assert!(sent > 10, "{sent}");
    let s = emu.stats().model(MODEL);
    assert_eq!(s.throttled_tpd, 0, "upstream never had to refuse");
    assert_eq!(s.admitted, sent);
    emu.shutdown().await;
}
