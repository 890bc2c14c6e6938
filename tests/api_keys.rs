//! Bedrock API keys (`Authorization: Bearer …`) on every path of the throttle: the real
//! `aws-sdk-bedrockruntime` client configured with `bearer_token`, through
//! `ThrottledHttpClient`, against the emulator that insists on an `Authorization` header;
//! a plain `http` stack sending the header itself; a request that waits in the gate longer
//! than a SigV4 signature lives. Virtual time.

#![cfg(all(feature = "aws-sdk", feature = "emulator"))]

mod sdk;

use std::time::Duration;

use aws_sdk_bedrockruntime::{
    config::{retry::RetryConfig, BehaviorVersion, Region, Token},
    types::{ContentBlockDelta, ConverseStreamOutput, InferenceConfiguration},
    Client,
};
use aws_smithy_runtime_api::client::result::SdkError;
use bedrock_throttle::{
    aws::ThrottledHttpClient,
    emulator::{EmulatedQuota, Emulator, EmulatorHandle, LatencyModel, OutputLength},
    BedrockThrottleLayer, Quota, QuotaKey, ThrottleConfig, ThrottleError,
};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client as HyperClient, rt::TokioExecutor};
use sdk::{anthropic_body, config, message, sdk_client, MODEL};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

const API_KEY: &str = "ABSKQmVkcm9ja0FQSUtleS10ZXN0";

async fn emulator(output: OutputLength) -> EmulatorHandle {
    Emulator::builder()
        .default_quota(EmulatedQuota {
            rpm: None,
            tpm: 10_000_000,
            tpd: None,
            period: Duration::from_secs(60),
        })
        .latency(LatencyModel {
            first_token: Duration::from_millis(50),
            per_output_token: Duration::from_millis(1),
        })
        .output_tokens(output)
        .require_authorization(true)
        .seed(6)
        .spawn()
        .await
        .unwrap()
}

/// The SDK with a Bedrock API key instead of SigV4 credentials.
fn bearer_client(emu: &EmulatorHandle, cfg: &ThrottleConfig) -> Client {
    let inner = aws_smithy_http_client::Builder::new().build_http();
    let conf = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(emu.endpoint_url())
        .bearer_token(Token::new(API_KEY, None))
        .http_client(ThrottledHttpClient::new(inner, cfg.clone()))
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(conf)
}

#[tokio::test(start_paused = true)]
async fn the_sdk_with_an_api_key_invokes_converses_and_streams() {
    let emu = emulator(OutputLength::Fixed(20)).await;
    let cfg = config(Quota::tokens_per_minute(100_000)).build().unwrap();
    let client = bearer_client(&emu, &cfg);
    let out = client
        .invoke_model()
        .model_id(MODEL)
        .body(anthropic_body("Which pump?", 100))
        .send()
        .await
        .unwrap();
    assert!(!out.body().as_ref().is_empty());
    let out = client
        .converse()
        .model_id(MODEL)
        .messages(message("Which pump?"))
        .inference_config(InferenceConfiguration::builder().max_tokens(100).build())
        .send()
        .await
        .unwrap();
    assert_eq!(out.usage().map(|u| u.output_tokens()), Some(20));
    let mut stream = client
        .converse_stream()
        .model_id(MODEL)
        .messages(message("Which pump?"))
        .inference_config(InferenceConfiguration::builder().max_tokens(100).build())
        .send()
        .await
        .unwrap()
        .stream;
    let (mut text, mut usage) = (String::new(), None);
    while let Some(event) = stream.recv().await.unwrap() {
        match event {
            ConverseStreamOutput::ContentBlockDelta(d) => {
                if let Some(ContentBlockDelta::Text(t)) = d.delta() {
                    text.push_str(t);
                }
            }
            ConverseStreamOutput::Metadata(m) => usage = m.usage().map(|u| u.output_tokens()),
            _ => {}
        }
    }
    assert!(!text.is_empty());
    assert_eq!(usage, Some(20));
    // All three were admitted and settled from their usage: 20 output tokens each.
    let key = cfg
        .stats()
        .key(&QuotaKey::new(Some(MODEL), None))
        .unwrap()
        .clone();
    assert_eq!(key.admitted, 3);
    assert_eq!(key.tokens_settled, key.input_tokens_actual + 3 * 20);
    assert_eq!(emu.stats().model(MODEL).admitted, 3);
    emu.shutdown().await;
}

/// The emulator refuses a request without `Authorization` as AWS does, and the gate gives
/// the reservation back (403 is refused before running): the keyed request that follows
/// needs the whole bucket again and gets it at once.
#[tokio::test(start_paused = true)]
async fn without_a_key_the_emulator_refuses_and_nothing_is_charged() {
    let emu = emulator(OutputLength::Fixed(20)).await;
    let cfg = ThrottleConfig::builder()
        .model_quota(MODEL, Quota::tokens_per_minute(1_000))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg.clone()))
        .service(HyperClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let body = serde_json::json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 900,
        "messages": [{"role": "user", "content": "Which pump?"}],
    })
    .to_string();
    let url = format!(
        "{}/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke",
        emu.endpoint_url()
    );
    let request = |auth: Option<&str>| {
        let mut r = http::Request::post(&url).header("content-type", "application/json");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.body(Full::new(Bytes::from(body.clone()))).unwrap()
    };
    let resp = svc.clone().oneshot(request(None)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        resp.headers()["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .split(':')
            .next(),
        Some("MissingAuthenticationTokenException")
    );
    let key = QuotaKey::new(Some(MODEL), None);
    // The same request with a Bedrock API key, on the plain `http` stack.
    let resp = svc
        .oneshot(request(Some(&format!("Bearer {API_KEY}"))))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let usage: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(usage["usage"]["output_tokens"], 20);
    let stats = cfg.stats().key(&key).unwrap().clone();
    assert_eq!((stats.admitted, stats.waited), (2, 0), "{stats:?}");
    emu.shutdown().await;
}

/// A request that must wait longer than a SigV4 signature lives: with SigV4 it fails with
/// `SendDeadlinePassed` rather than leave with an expired signature; with an API key, which
/// has no such window, it waits its turn and succeeds.
#[tokio::test(start_paused = true)]
async fn an_api_key_request_may_wait_past_the_sigv4_window() {
    // Answers use their whole output limit, so a request's ~1,000 tokens stay spent: they
    // fill the bucket, which refills in 10 minutes.
    let emu = emulator(OutputLength::MaxTokens).await;
    let cfg = config(Quota::tokens_per_minute(1_000).with_period(Duration::from_secs(600)))
        .max_wait(Duration::from_secs(900))
        .build()
        .unwrap();
    let inner = aws_smithy_http_client::Builder::new().build_http();
    let sigv4 = sdk_client(
        &emu.endpoint_url(),
        ThrottledHttpClient::new(inner, cfg.clone()),
        RetryConfig::disabled(),
    );
    let bearer = bearer_client(&emu, &cfg);
    let fill = |client: Client| async move {
        client
            .invoke_model()
            .model_id(MODEL)
            .body(anthropic_body("Which pump?", 980))
            .send()
            .await
    };
    fill(bearer.clone()).await.unwrap();
    let start = Instant::now();
    let err = fill(sigv4).await.unwrap_err();
    let SdkError::DispatchFailure(failure) = &err else {
        panic!("{err:?}")
    };
    let source = std::error::Error::source(failure.as_connector_error().unwrap()).unwrap();
    assert!(
        matches!(
            source.downcast_ref::<ThrottleError>(),
            Some(ThrottleError::SendDeadlinePassed { .. })
        ),
        "{source:?}"
    );
    assert!(start.elapsed() <= Duration::from_secs(270));
    let start = Instant::now();
    fill(bearer).await.unwrap();
    let waited = start.elapsed();
    assert!(waited > Duration::from_secs(270), "{waited:?}");
    emu.shutdown().await;
}
