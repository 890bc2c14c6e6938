//! A SigV4 signature is valid for about five minutes: the real `aws-sdk-bedrockruntime`
//! client through `ThrottledHttpClient` never has a request resent past that window, while a
//! bearer-token API key (no window) keeps every attempt. Virtual time.

#![cfg(feature = "aws-sdk")]

mod sdk;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_sdk_bedrockruntime::config::{retry::RetryConfig, BehaviorVersion, Region, Token};
use aws_smithy_runtime_api::client::{
    http::{
        HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
    },
    orchestrator::{HttpRequest, HttpResponse},
    runtime_components::RuntimeComponents,
};
use aws_smithy_types::body::SdkBody;
use bedrock_throttle::{aws::ThrottledHttpClient, Quota, ThrottleConfig, ThrottleError};
use sdk::{anthropic_body, sdk_client, MODEL};
use tokio::time::Instant;

/// An upstream that refuses every request with Bedrock's 429 and a one-minute hint, and
/// records when each attempt came and how it was authorised.
#[derive(Clone, Debug, Default)]
struct AlwaysThrottled {
    attempts: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl HttpConnector for AlwaysThrottled {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let auth = request
            .headers()
            .get("authorization")
            .unwrap_or_default()
            .to_owned();
        self.attempts.lock().unwrap().push((Instant::now(), auth));
        let response = http::Response::builder()
            .status(429)
            .header("content-type", "application/json")
            .header(
                "x-amzn-errortype",
                "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            )
            .header("retry-after", "60")
            .body(SdkBody::from(
                r#"{"message":"Too many requests, please wait before trying again."}"#,
            ))
            .unwrap();
        HttpConnectorFuture::ready(Ok(HttpResponse::try_from(response).unwrap()))
    }
}

impl HttpClient for AlwaysThrottled {
    fn http_connector(
        &self,
        _: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

fn config() -> ThrottleConfig {
    ThrottleConfig::builder()
        .model_quota(MODEL, Quota::new(1_000, 10_000_000))
        .max_attempts(8)
        .max_retry_after(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_sigv4_request_is_never_resent_after_its_signature_window() {
    let upstream = AlwaysThrottled::default();
    let client = sdk_client(
        "http://127.0.0.1:9",
        ThrottledHttpClient::new(upstream.clone(), config()),
        RetryConfig::disabled(),
    );
    let start = Instant::now();
    let err = client
        .invoke_model()
        .model_id(MODEL)
        .body(anthropic_body("hello", 10))
        .send()
        .await
        .unwrap_err();
    // The SDK sees Bedrock's own throttle, which its retry (when on) signs anew.
    assert!(err.into_service_error().is_throttling_exception());
    let attempts = upstream.attempts.lock().unwrap().clone();
    // One minute apart: 0, 60, 120, 180, 240 s. A sixth at 300 s would be past 4.5 minutes.
    assert_eq!(attempts.len(), 5, "{attempts:?}");
    for (at, auth) in &attempts {
        assert!(auth.starts_with("AWS4-HMAC-SHA256"), "{auth}");
        assert!(*at - start <= Duration::from_secs(270));
    }
    assert!(
        attempts.iter().all(|(_, a)| *a == attempts[0].1),
        "one signature, resent"
    );
}

#[tokio::test(start_paused = true)]
async fn a_bearer_token_request_keeps_every_attempt() {
    let upstream = AlwaysThrottled::default();
    let conf = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url("http://127.0.0.1:9")
        .bearer_token(Token::new("bedrock-api-key-test", None))
        .http_client(ThrottledHttpClient::new(upstream.clone(), config()))
        .retry_config(RetryConfig::disabled())
        .build();
    let client = aws_sdk_bedrockruntime::Client::from_conf(conf);
    let err = client
        .invoke_model()
        .model_id(MODEL)
        .body(anthropic_body("hello", 10))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_throttling_exception());
    let attempts = upstream.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 8, "{attempts:?}");
    assert!(
        attempts
            .iter()
            .all(|(_, a)| a == "Bearer bedrock-api-key-test"),
        "{attempts:?}"
    );
}

/// An upstream that answers at once and reports `input` + `output` tokens used, recording
/// when each request came.
#[derive(Clone, Debug, Default)]
struct Billing {
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl HttpConnector for Billing {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        self.calls.lock().unwrap().push(Instant::now());
        let response = http::Response::builder()
            .header("content-type", "application/json")
            .header("x-amzn-bedrock-input-token-count", "100")
            .header("x-amzn-bedrock-output-token-count", "900")
            .body(SdkBody::from("{}"))
            .unwrap();
        HttpConnectorFuture::ready(Ok(HttpResponse::try_from(response).unwrap()))
    }
}

impl HttpClient for Billing {
    fn http_connector(
        &self,
        _: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn a_sigv4_request_still_waiting_when_its_signature_runs_out_is_never_sent() {
    let upstream = Billing::default();
    // 1,000 tokens a minute and each call uses all of them: call n waits about n minutes.
    let cfg = ThrottleConfig::builder()
        .model_quota(MODEL, Quota::tokens_per_minute(1_000))
        .max_wait(Duration::from_secs(600))
        .build()
        .unwrap();
    let client = sdk_client(
        "http://127.0.0.1:9",
        ThrottledHttpClient::new(upstream.clone(), cfg),
        RetryConfig::disabled(),
    );
    let start = Instant::now();
    let calls: Vec<_> = (0..7)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .invoke_model()
                    .model_id(MODEL)
                    .body(anthropic_body("hello", 880))
                    .send()
                    .await
            })
        })
        .collect();
    let (mut ok, mut expired) = (0, 0);
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                let mut found = false;
                while let Some(s) = source {
                    if let Some(t) = s.downcast_ref::<ThrottleError>() {
                        assert!(matches!(t, ThrottleError::SendDeadlinePassed { .. }), "{t}");
                        found = true;
                    }
                    source = s.source();
                }
                assert!(found, "{e:?}");
                expired += 1;
            }
        }
    }
    let sent = upstream.calls.lock().unwrap().clone();
    assert_eq!(ok, sent.len());
    println!("{ok} sent, {expired} expired");
    assert!(ok >= 4 && expired >= 1, "{ok} sent, {expired} expired");
    // Nothing left with a signature older than the window.
    assert!(
        sent.iter().all(|t| *t - start <= Duration::from_secs(270)),
        "{sent:?}"
    );
}
