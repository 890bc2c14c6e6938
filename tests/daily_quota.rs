//! Daily token quotas, per model and account-wide, through the whole layer in virtual time.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bedrock_throttle::{
    estimate::TokenEstimate, BedrockThrottleLayer, BoxError, Quota, QuotaKey, ThrottleConfig,
    ThrottleError,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

const NOVA: &str = "amazon.nova-pro-v1:0";
const LITE: &str = "amazon.nova-lite-v1:0";

/// An upstream answering every Converse call with a usage of 900 input and 100 output
/// tokens, counting its calls.
fn upstream(
    calls: Arc<Mutex<u32>>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |_req: Request<Full<Bytes>>| {
        *calls.lock().unwrap() += 1;
        async {
            Ok(Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},"stopReason":"end_turn","usage":{"inputTokens":900,"outputTokens":100,"totalTokens":1000}}"#,
                )))
                .unwrap())
        }
    })
}

/// A Converse request for `model` that reserves 1,000 input tokens and 1,000 output.
fn converse(model: &str) -> Request<Full<Bytes>> {
    let mut req = Request::post(format!("/model/{model}/converse"))
        .body(Full::new(Bytes::from_static(
            br#"{"inferenceConfig":{"maxTokens":1000}}"#,
        )))
        .unwrap();
    req.extensions_mut()
        .insert(TokenEstimate::new(1_000, 1_000));
    req
}

/// Sends `req` and reads the response body, which settles the charge.
async fn send<S, B>(svc: &S, req: Request<Full<Bytes>>) -> Result<(), BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError> + Clone,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let resp = svc.clone().oneshot(req).await?;
    resp.into_body().collect().await.unwrap();
    Ok(())
}

fn daily_error(e: &BoxError) -> (Option<QuotaKey>, u64, u64, u64, Option<Duration>) {
    match e.downcast_ref::<ThrottleError>() {
        Some(ThrottleError::DailyQuotaExhausted {
            key,
            limit,
            used,
            needed,
            resets_in,
        }) => (key.clone(), *limit, *used, *needed, *resets_in),
        _ => panic!("not a daily refusal: {e}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_job_that_would_exhaust_the_day_is_refused_at_once_until_the_day_turns() {
    let cfg = ThrottleConfig::builder()
        .model_quota(
            NOVA,
            Quota::tokens_per_minute(1_000_000).with_tokens_per_day(5_000),
        )
        .build()
        .unwrap();
    let calls = Arc::new(Mutex::new(0));
    let svc = BedrockThrottleLayer::new(cfg).layer(upstream(calls.clone()));
    // Each reserves 2,000 and is settled to the 1,000 it used: four fit in 5,000 only
    // because the settlements gave the rest back.
    for _ in 0..4 {
        send(&svc, converse(NOVA)).await.unwrap();
    }
    assert_eq!(*calls.lock().unwrap(), 4);
    let start = Instant::now();
    let err = send(&svc, converse(NOVA)).await.unwrap_err();
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "refused at once, not queued"
    );
    let (key, limit, used, needed, resets_in) = daily_error(&err);
    assert_eq!(key.as_ref().and_then(QuotaKey::model), Some(NOVA));
    assert_eq!((limit, used, needed), (5_000, 4_000, 2_000));
    let resets_in = resets_in.unwrap();
    assert!(resets_in > Duration::from_secs(23 * 3_600), "{resets_in:?}");
    assert!(
        err.to_string().starts_with("Too many tokens per day"),
        "{err}"
    );
    assert_eq!(*calls.lock().unwrap(), 4, "neither sent nor retried");
    // Once the day's charges have aged out, there is room again.
    tokio::time::advance(resets_in).await;
    send(&svc, converse(NOVA)).await.unwrap();
    assert_eq!(*calls.lock().unwrap(), 5);
}

#[tokio::test(start_paused = true)]
async fn the_account_wide_day_is_shared_across_models() {
    let cfg = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(1_000_000))
        .account_tokens_per_day(3_000)
        .build()
        .unwrap();
    let calls = Arc::new(Mutex::new(0));
    let svc = BedrockThrottleLayer::new(cfg).layer(upstream(calls.clone()));
    send(&svc, converse(NOVA)).await.unwrap(); // 1,000 charged
    send(&svc, converse(LITE)).await.unwrap(); // 2,000 charged, across both models
    let err = send(&svc, converse(NOVA)).await.unwrap_err();
    let (key, limit, used, needed, _) = daily_error(&err);
    assert_eq!((key, limit, used, needed), (None, 3_000, 2_000, 2_000));
    assert!(err.to_string().contains("account"), "{err}");
    assert_eq!(*calls.lock().unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_day_is_told_it_never_fits() {
    let cfg = ThrottleConfig::builder()
        .model_quota(
            NOVA,
            Quota::tokens_per_minute(1_000_000).with_tokens_per_day(1_500),
        )
        .build()
        .unwrap();
    let calls = Arc::new(Mutex::new(0));
    let svc = BedrockThrottleLayer::new(cfg).layer(upstream(calls.clone()));
    let err = send(&svc, converse(NOVA)).await.unwrap_err();
    assert_eq!(daily_error(&err).4, None);
    assert_eq!(*calls.lock().unwrap(), 0);
}
