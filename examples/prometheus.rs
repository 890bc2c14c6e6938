//! The throttle's metrics in Prometheus: `BedrockThrottleLayer` over a hyper client sends a
//! workload to the built-in emulator while `metrics-exporter-prometheus` serves `/metrics`
//! on loopback.
//!
//! ```text
//! cargo run --example prometheus --features emulator -- --port 9000 --requests 200 --hold-secs 60
//! curl -s http://127.0.0.1:9000/metrics | grep bedrock_throttle_
//! ```
//!
//! The workload: `--callers` concurrent callers (16) send `--requests` InvokeModel calls
//! (200) for one model. The gate is told a quota above the emulator's, so it meets
//! upstream throttles, slows down and waits: every counter moves. When the workload is done
//! the example prints `ThrottleConfig::stats()` and its own `/metrics` lines, then keeps
//! serving for `--hold-secs` (0) so Prometheus can scrape it.

use std::{net::SocketAddr, time::Duration};

use bedrock_throttle::{
    emulator::{EmulatedQuota, Emulator, LatencyModel, OutputLength},
    BedrockThrottleLayer, BoxError, Quota, ThrottleConfig,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use metrics_exporter_prometheus::PrometheusBuilder;
use tower::{Layer, ServiceExt};

const MODEL: &str = "us.anthropic.claude-sonnet-4-20250514-v1:0";

fn usage() -> ! {
    eprintln!("usage: prometheus [--port N] [--requests N] [--callers N] [--hold-secs N]");
    std::process::exit(2)
}

fn parse<T: std::str::FromStr>(flag: &str, value: Option<String>) -> T {
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        eprintln!("{flag} needs a valid value");
        usage()
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (mut port, mut requests, mut callers, mut hold) = (9000u16, 200usize, 16usize, 0u64);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--port" => port = parse(&flag, args.next()),
            "--requests" => requests = parse(&flag, args.next()),
            "--callers" => callers = parse(&flag, args.next()),
            "--hold-secs" => hold = parse(&flag, args.next()),
            _ => usage(),
        }
    }

    // Install the recorder before the first request: each quota key registers its metrics
    // once, with the recorder installed at that time.
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], port));
    PrometheusBuilder::new()
        .with_http_listener(metrics_addr)
        .install()?;

    // Upstream: 60,000 tokens per 6-second "minute".
    let period = Duration::from_secs(6);
    let emu = Emulator::builder()
        .default_quota(EmulatedQuota {
            rpm: None,
            tpm: 60_000,
            tpd: None,
            period,
        })
        .latency(LatencyModel {
            first_token: Duration::from_millis(200),
            per_output_token: Duration::from_millis(2),
        })
        .output_tokens(OutputLength::Uniform { min: 50, max: 400 })
        .seed(42)
        .spawn()
        .await?;
    // The gate is told twice the real quota, so it learns the real one from throttles.
    let cfg = ThrottleConfig::builder()
        .model_quota(MODEL, Quota::tokens_per_minute(120_000).with_period(period))
        .base_delay(Duration::from_millis(200))
        .max_delay(Duration::from_secs(2))
        .build()?;
    let svc = BedrockThrottleLayer::new(cfg.clone())
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let url = format!(
        "{}/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/invoke",
        emu.endpoint_url()
    );
    eprintln!("metrics on http://{metrics_addr}/metrics; sending {requests} requests");

    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let (svc, url) = (svc.clone(), url.clone());
            tokio::spawn(async move {
                let mut failed = 0;
                for i in (caller..requests).step_by(callers) {
                    let prompt = "Summarise the quota rules of Bedrock. ".repeat(1 + i % 20);
                    let body = serde_json::json!({
                        "anthropic_version": "bedrock-2023-05-31",
                        "max_tokens": 400,
                        "messages": [{"role": "user", "content": prompt}],
                    });
                    let req = http::Request::post(&url)
                        .body(Full::new(Bytes::from(body.to_string())))
                        .expect("request");
                    match svc.clone().oneshot(req).await {
                        Ok(resp) if resp.status().is_success() => {
                            let _ = resp.into_body().collect().await;
                        }
                        _ => failed += 1,
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        failed += t.await?;
    }
    eprintln!("done: {failed} of {requests} failed");

    for k in cfg.stats().keys {
        eprintln!(
            "{}: admitted {}, waited {}, throttled {}, retried {}, reserved {} / settled {} tokens, \
             input estimated {} / actual {}, effective {:?} tokens per {:?}",
            k.key,
            k.admitted,
            k.waited,
            k.throttled,
            k.retried,
            k.tokens_reserved,
            k.tokens_settled,
            k.input_tokens_estimated,
            k.input_tokens_actual,
            k.effective.map(|q| q.tokens()),
            period,
        );
    }
    // What Prometheus would scrape.
    let scrape = Client::builder(TokioExecutor::new())
        .build_http::<Empty<Bytes>>()
        .get(format!("http://{metrics_addr}/metrics").parse()?)
        .await?;
    let text = scrape.into_body().collect().await?.to_bytes();
    for line in String::from_utf8_lossy(&text).lines() {
        if line.starts_with("bedrock_throttle_") && !line.contains("quantile") {
            println!("{line}");
        }
    }
    if hold > 0 {
        eprintln!("serving /metrics for {hold} s");
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    Ok(())
}
