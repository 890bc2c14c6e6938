//! The metrics reach Prometheus: the layer runs against the emulator over loopback with
//! `metrics-exporter-prometheus` as the global recorder, and `/metrics` is scraped over
//! real HTTP twice. Its own test binary, since the recorder is process-wide.

#![cfg(feature = "emulator")]

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use bedrock_throttle::{
    emulator::{EmulatedQuota, Emulator, LatencyModel, OutputLength},
    BedrockThrottleLayer, Quota, ThrottleConfig,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use metrics_exporter_prometheus::PrometheusBuilder;
use tower::{Layer, ServiceExt};

const MODEL: &str = "us.anthropic.claude-sonnet-4-20250514-v1:0";

/// A port nobody listens on now (the exporter binds it itself).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The samples of `/metrics` whose name starts with `bedrock_throttle_`, by name and labels.
async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = client
        .get(format!("http://{addr}/metrics").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("bedrock_throttle_"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn sample(samples: &HashMap<String, f64>, name: &str) -> f64 {
    // The emulator's URL names no Region: the label is empty.
    let key = format!(r#"{name}{{model="{MODEL}",region=""}}"#);
    *samples
        .get(&key)
        .unwrap_or_else(|| panic!("{key} not in {samples:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_between_two_scrapes() {
    let addr = free_port();
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .unwrap();

    let emu = Emulator::builder()
        .default_quota(EmulatedQuota::default())
        .latency(LatencyModel::ZERO)
        .output_tokens(OutputLength::Fixed(30))
        .seed(11)
        .spawn()
        .await
        .unwrap();
    // 20 requests per minute: the first ten go at once, the next ones wait for room.
    let cfg = ThrottleConfig::builder()
        .model_quota(
            MODEL,
            Quota::new(20, 400_000).with_period(Duration::from_secs(6)),
        )
        .build()
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = BedrockThrottleLayer::new(cfg.clone()).layer(client);
    let send = |n: usize| {
        let svc = svc.clone();
        let url = format!(
            "{}/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/invoke",
            emu.endpoint_url()
        );
        async move {
            let calls = (0..n).map(|i| {
                let body = serde_json::json!({
                    "anthropic_version": "bedrock-2023-05-31",
                    "max_tokens": 100,
                    "messages": [{"role": "user", "content": format!("question {i}")}],
                });
                let req = http::Request::post(&url)
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap();
                let svc = svc.clone();
                tokio::spawn(async move {
                    let resp = svc.oneshot(req).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    resp.into_body().collect().await.unwrap();
                })
            });
            for c in calls.collect::<Vec<_>>() {
                c.await.unwrap();
            }
        }
    };

    send(5).await;
    let first = scrape(addr).await;
    assert_eq!(sample(&first, "bedrock_throttle_admitted_total"), 5.0);
    send(20).await;
    let second = scrape(addr).await;
    assert_eq!(sample(&second, "bedrock_throttle_admitted_total"), 25.0);
    // The quota held twenty per six seconds: some of them waited.
    let waited = sample(&second, "bedrock_throttle_waited_total");
    assert!(
        waited > sample(&first, "bedrock_throttle_waited_total"),
        "{waited}"
    );
    for counter in [
        "bedrock_throttle_tokens_reserved_total",
        "bedrock_throttle_tokens_settled_total",
        "bedrock_throttle_input_tokens_estimated_total",
        "bedrock_throttle_input_tokens_actual_total",
    ] {
        assert!(
            sample(&second, counter) > sample(&first, counter),
            "{counter} did not move"
        );
    }
    // Output 30 × burndown 5 plus input, for each of 25 requests.
    let settled = sample(&second, "bedrock_throttle_tokens_settled_total");
    assert!(settled > 25.0 * 150.0, "{settled}");
    assert_eq!(sample(&second, "bedrock_throttle_wait_seconds_count"), 25.0);
    assert_eq!(sample(&second, "bedrock_throttle_queue_depth"), 0.0);
    assert_eq!(
        sample(&second, "bedrock_throttle_effective_requests_per_minute"),
        200.0,
        "20 per 6 s"
    );
    assert_eq!(
        sample(&second, "bedrock_throttle_effective_tokens_per_minute"),
        4_000_000.0
    );
    assert_eq!(cfg.stats().keys[0].admitted, 25);
}
