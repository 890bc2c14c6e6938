//! The layer over a real hyper client, talking HTTP over loopback to the crate's Bedrock
//! emulator, in virtual time.

#![cfg(feature = "emulator")]

mod common;

use std::time::Duration;

use bedrock_throttle::{
    emulator::{EmulatedQuota, Emulator, EmulatorHandle, LatencyModel, OutputLength},
    retry::Attempts,
    BedrockThrottleLayer, BoxError, Quota, ThrottleConfig,
};
use bytes::Bytes;
use common::SONNET_4;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tower::{Service, ServiceBuilder, ServiceExt};

const RPM: u64 = 60;
const TPM: u64 = 60_000;

async fn emulator() -> EmulatorHandle {
    Emulator::builder()
        .default_quota(EmulatedQuota {
            rpm: Some(RPM),
            tpm: TPM,
            tpd: None,
            period: Duration::from_secs(60),
        })
        .latency(LatencyModel {
            first_token: Duration::from_millis(300),
            per_output_token: Duration::from_millis(5),
        })
        .chars_per_token(3.6)
        .output_tokens(OutputLength::Uniform { min: 20, max: 200 })
        .seed(7)
        .spawn()
        .await
        .unwrap()
}

fn request(base: &str, caller: usize, i: usize) -> Request<Full<Bytes>> {
    let prompt = format!(
        "Caller {caller} asks question {i}: summarise the history of the Broad Street pump and what it taught about cholera. "
    )
    .repeat(1 + (caller + i) % 5);
    let body = serde_json::json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": prompt}],
    });
    Request::post(format!(
        "{base}/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/invoke"
    ))
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(body.to_string())))
    .unwrap()
}

/// 30 callers × 8 requests each; returns (statuses seen, total attempts).
async fn run<S>(svc: S, base: &str) -> (Vec<StatusCode>, u32)
where
    S: Service<Request<Full<Bytes>>> + Clone + Send + 'static,
    S::Response: Into<http::Response<http_body_util::combinators::BoxBody<Bytes, BoxError>>>,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    let tasks: Vec<_> = (0..30)
        .map(|caller| {
            let mut svc = svc.clone();
            let base = base.to_string();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..8 {
                    let resp: http::Response<_> = svc
                        .ready()
                        .await
                        .map_err(Into::into)
                        .unwrap()
                        .call(request(&base, caller, i))
                        .await
                        .map_err(Into::into)
                        .unwrap()
                        .into();
                    let attempts = resp.extensions().get::<Attempts>().map_or(1, |a| a.0);
                    let status = resp.status();
                    resp.into_body().collect().await.unwrap();
                    out.push((status, attempts));
                }
                out
            })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut attempts = 0;
    for t in tasks {
        for (s, a) in t.await.unwrap() {
            statuses.push(s);
            attempts += a;
        }
    }
    (statuses, attempts)
}

fn boxed<B>(
    resp: http::Response<B>,
) -> http::Response<http_body_util::combinators::BoxBody<Bytes, BoxError>>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    resp.map(|b| b.map_err(Into::into).boxed())
}

#[tokio::test(start_paused = true)]
async fn the_layer_keeps_a_hyper_client_under_the_emulated_quota() {
    let emu = emulator().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let cfg = ThrottleConfig::builder()
        .model_quota(SONNET_4, Quota::new(RPM as u32, TPM))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .map_response(boxed)
        .layer(BedrockThrottleLayer::new(cfg))
        .service(client);
    let (statuses, attempts) = run(svc, &emu.endpoint_url()).await;

    let stats = emu.stats().total();
    println!("{stats:?}");
    assert_eq!(statuses.len(), 240);
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "every request succeeds"
    );
    assert_eq!(stats.admitted, 240);
    let throttled = stats.throttled_rpm + stats.throttled_tpm;
    assert_eq!(throttled, 0, "the gate kept every attempt inside the quota");
    assert_eq!(attempts, 240);
    // Settlement came from the real response headers: what was billed is what was used.
    assert!(
        stats.tokens_billed < 240 * (1_000 + 200),
        "billed {}",
        stats.tokens_billed
    );
}

#[tokio::test(start_paused = true)]
async fn without_the_layer_the_same_workload_is_throttled() {
    let emu = emulator().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = ServiceBuilder::new().map_response(boxed).service(client);
    let (statuses, _) = run(svc, &emu.endpoint_url()).await;
    let throttled = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    println!("throttled {throttled} of {}", statuses.len());
    assert!(
        throttled > 100,
        "the workload exceeds the quota: {throttled} throttles"
    );
}
