//! Which limit binds: throttles of each class drive their own budget, and the capacity
//! report sizes a quota increase, against the emulator over loopback, in virtual time.

#![cfg(feature = "emulator")]

use std::time::Duration;

use bedrock_throttle::{
    diagnosis::BindingLimit,
    emulator::{EmulatedQuota, Emulator, EmulatorHandle, Faults, LatencyModel, OutputLength},
    retry::Attempts,
    BedrockThrottleLayer, Quota, QuotaKey, ThrottleConfig, ThrottleKind,
};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::json;
use tower::{Service, ServiceBuilder, ServiceExt};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Burndown 1, so the sizes below are what they say.
const RPM_MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const TPM_MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const DAILY_MODEL: &str = "meta.llama3-70b-instruct-v1:0";

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn quota(rpm: Option<u64>, tpm: u64, tpd: Option<u64>) -> EmulatedQuota {
    EmulatedQuota {
        rpm,
        tpm,
        tpd,
        period: Duration::from_secs(60),
    }
}

fn invoke(
    base: &str,
    model: &str,
    op: &str,
    prompt_chars: usize,
    max_tokens: u64,
) -> Request<Full<Bytes>> {
    let body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "x".repeat(prompt_chars)}]});
    let path = percent_encoding::utf8_percent_encode(model, percent_encoding::NON_ALPHANUMERIC);
    Request::post(format!("{base}/model/{path}/{op}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn key(model: &str) -> QuotaKey {
    QuotaKey::new(Some(model), None)
}

async fn emulator(faults: Faults) -> EmulatorHandle {
    Emulator::builder()
        .model_quota(RPM_MODEL, quota(Some(2), 1_000_000, None))
        .model_quota(TPM_MODEL, quota(None, 2_000, None))
        .model_quota(DAILY_MODEL, quota(None, 1_000_000, Some(1_000)))
        .latency(LatencyModel::ZERO)
        .chars_per_token(4.0)
        .output_tokens(OutputLength::MaxTokens)
        .faults(faults)
        .seed(3)
        .spawn()
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn each_class_of_throttle_drives_its_own_budget() {
    let emu = emulator(Faults::NONE).await;
    let url = emu.endpoint_url();
    // Every configured quota is higher than the emulated one, and one attempt each, so the
    // 429s reach the caller.
    let cfg = ThrottleConfig::builder()
        .model_quota(RPM_MODEL, Quota::new(10, 1_000_000))
        .model_quota(TPM_MODEL, Quota::new(10, 10_000))
        .model_quota(DAILY_MODEL, Quota::new(10, 1_000_000))
        .max_attempts(1)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg.clone()))
        .service(client());

    // Sends `n` requests of 100 input + 600 output tokens; returns the last response's
    // status, throttle class and body.
    let mut send = async |model: &str, n: usize| {
        let mut last = None;
        for _ in 0..n {
            let resp = svc
                .ready()
                .await
                .unwrap()
                .call(invoke(&url, model, "invoke", 400, 600))
                .await
                .unwrap();
            let status = resp.status();
            let kind = resp.extensions().get::<ThrottleKind>().copied();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            last = Some((status, kind, body));
        }
        last.unwrap()
    };

    // 2 RPM upstream: the third and fourth requests are refused for requests (the first
    // refusal empties the bucket and keeps the rate; the second, recurring, cuts it).
    let (status, kind, body) = send(RPM_MODEL, 4).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(kind, Some(ThrottleKind::Requests));
    // The caller still gets Bedrock's whole body.
    assert_eq!(
        &body[..],
        br#"{"message":"Too many requests, please wait before trying again."}"#
    );
    let q = cfg.effective_quota(&key(RPM_MODEL)).unwrap();
    assert_eq!((q.requests(), q.tokens()), (Some(7), 1_000_000));

    // 2,000 TPM upstream: the third and fifth requests of 700 are refused for tokens (the
    // fourth waited for the bucket the first refusal emptied, and fit).
    let (status, kind, _) = send(TPM_MODEL, 5).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(kind, Some(ThrottleKind::Tokens));
    let q = cfg.effective_quota(&key(TPM_MODEL)).unwrap();
    assert_eq!((q.requests(), q.tokens()), (Some(10), 7_000));

    // 1,000 tokens a day upstream: the second request is refused for the day; the
    // per-minute rates stay.
    let (status, kind, _) = send(DAILY_MODEL, 2).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(kind, Some(ThrottleKind::DailyTokens));
    let q = cfg.effective_quota(&key(DAILY_MODEL)).unwrap();
    assert_eq!((q.requests(), q.tokens()), (Some(10), 1_000_000));
    // With retries on, a daily throttle is not retried: the day's quota is gone.
    let retrying = ThrottleConfig::builder()
        .model_quota(DAILY_MODEL, Quota::new(10, 1_000_000))
        .build()
        .unwrap();
    let resp = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(retrying))
        .service(client())
        .oneshot(invoke(&url, DAILY_MODEL, "invoke", 400, 600))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.extensions().get::<Attempts>(), Some(&Attempts(1)));

    let report = cfg.capacity_report();
    println!("{report}");
    let row = |m: &str| report.row(&key(m)).unwrap().clone();
    assert_eq!(row(RPM_MODEL).throttles.requests, 2);
    assert_eq!(row(RPM_MODEL).binding, BindingLimit::Requests);
    assert_eq!(row(TPM_MODEL).throttles.tokens, 2);
    assert_eq!(row(TPM_MODEL).binding, BindingLimit::Tokens);
    assert_eq!(row(DAILY_MODEL).throttles.daily_tokens, 1);
    assert_eq!(row(DAILY_MODEL).binding, BindingLimit::DailyTokens);
    assert_eq!(row(DAILY_MODEL).recommended_tpm, 1_000_000);
    // The stats count the same classes per key.
    let stats = cfg.stats();
    let classes = |m: &str| {
        let k = stats.key(&key(m)).unwrap();
        (
            k.throttled,
            k.throttled_requests,
            k.throttled_tokens,
            k.throttled_daily_tokens,
            k.throttled_unknown,
        )
    };
    assert_eq!(classes(RPM_MODEL), (2, 2, 0, 0, 0));
    assert_eq!(classes(TPM_MODEL), (2, 0, 2, 0, 0));
    assert_eq!(classes(DAILY_MODEL), (1, 0, 0, 1, 0));
    emu.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_throttle_inside_a_stream_cuts_the_token_budget_it_names() {
    let emu = emulator(Faults {
        stream_throttle: 1.0,
        ..Faults::NONE
    })
    .await;
    let url = emu.endpoint_url();
    let cfg = ThrottleConfig::builder()
        .model_quota(RPM_MODEL, Quota::new(10, 100_000))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg.clone()))
        .service(client());
    let resp = svc
        .oneshot(invoke(
            &url,
            RPM_MODEL,
            "invoke-with-response-stream",
            400,
            400,
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    // The emulator's mid-stream throttle says "Too many tokens".
    let q = cfg.effective_quota(&key(RPM_MODEL)).unwrap();
    assert_eq!((q.requests(), q.tokens()), (Some(10), 70_000));
    let report = cfg.capacity_report();
    assert_eq!(report.rows[0].throttles.tokens, 1);
    emu.shutdown().await;
}

/// Callers arrive at 2.5 times what the TPM quota admits, for ten minutes, and the
/// request rate is a tenth of the RPM quota.
#[tokio::test(start_paused = true)]
async fn the_report_asks_for_the_tpm_the_demand_needs_and_leaves_rpm_alone() {
    const RPM: u64 = 1_000;
    const TPM: u64 = 100_000;
    let emu = Emulator::builder()
        .default_quota(quota(Some(RPM), TPM, None))
        .latency(LatencyModel {
            first_token: Duration::from_millis(300),
            per_output_token: Duration::from_millis(2),
        })
        .chars_per_token(4.0)
        .output_tokens(OutputLength::MaxTokens)
        .seed(11)
        .spawn()
        .await
        .unwrap();
    let url = emu.endpoint_url();
    let cfg = ThrottleConfig::builder()
        .quota(Quota::new(RPM as u32, TPM))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg.clone()))
        .service(client());
    // 100 requests a minute (one every 600 ms), each reserving about 500 input + 2,000
    // output tokens: 250,000 TPM of demand.
    let mut tasks = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(600));
    for _ in 0..1_000 {
        tick.tick().await;
        let svc = svc.clone();
        let req = invoke(&url, RPM_MODEL, "invoke", 2_000, 2_000);
        tasks.push(tokio::spawn(async move {
            match svc.oneshot(req).await {
                Ok(resp) => {
                    let ok = resp.status().is_success();
                    resp.into_body().collect().await.unwrap();
                    ok
                }
                Err(_) => false, // waited longer than max_wait
            }
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += u32::from(t.await.unwrap());
    }
    let report = cfg.capacity_report();
    println!("{ok} of 1,000 requests completed\n{report}");
    let row = report.row(&key(RPM_MODEL)).unwrap();
    assert_eq!(row.binding, BindingLimit::Tokens);
    assert!(
        row.demand.p95_tokens >= 5 * TPM / 2,
        "demand p95 {} TPM",
        row.demand.p95_tokens
    );
    // At most a full bucket and a minute's refill in one minute.
    assert!(row.granted.peak_tokens <= 2 * TPM, "{row:?}");
    assert!(
        row.recommended_tpm >= 5 * TPM / 2,
        "asks for {} TPM",
        row.recommended_tpm
    );
    assert_eq!(row.recommended_rpm, Some(RPM), "RPM stays");
    assert!(row.reasoning.contains("TPM binds"), "{}", row.reasoning);
    // Every request used its whole max_tokens: nothing wasted.
    assert_eq!(row.wasted_output_tokens, 0);
    emu.shutdown().await;
}

/// Through the AWS SDK wrapper, a 429 the gate read still reaches the SDK whole: it
/// surfaces as the SDK's `ThrottlingException` with Bedrock's message.
#[cfg(feature = "aws-sdk")]
#[tokio::test]
async fn the_sdk_still_reads_the_throttle_the_gate_classified() {
    use aws_sdk_bedrockruntime::{
        config::{retry::RetryConfig, BehaviorVersion, Credentials, Region},
        error::ProvideErrorMetadata,
        primitives::Blob,
    };
    use bedrock_throttle::aws::ThrottledHttpClient;

    let emu = emulator(Faults::NONE).await;
    let cfg = ThrottleConfig::builder()
        .model_quota(RPM_MODEL, Quota::new(10, 1_000_000))
        .max_attempts(1)
        .build()
        .unwrap();
    let conf = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(emu.endpoint_url())
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        .http_client(ThrottledHttpClient::new(
            aws_smithy_http_client::Builder::new().build_http(),
            cfg.clone(),
        ))
        .retry_config(RetryConfig::disabled())
        .build();
    let client = aws_sdk_bedrockruntime::Client::from_conf(conf);
    let body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100,
        "messages": [{"role": "user", "content": "hello"}]});
    let mut last = None;
    // 2 RPM upstream: the third and fourth are refused; the second refusal cuts the rate.
    for _ in 0..4 {
        last = Some(
            client
                .invoke_model()
                .model_id(RPM_MODEL)
                .body(Blob::new(body.to_string()))
                .send()
                .await,
        );
    }
    let err = last.unwrap().unwrap_err().into_service_error();
    assert!(err.is_throttling_exception(), "{err:?}");
    assert_eq!(
        err.message(),
        Some("Too many requests, please wait before trying again.")
    );
    let q = cfg.effective_quota(&key(RPM_MODEL)).unwrap();
    assert_eq!((q.requests(), q.tokens()), (Some(7), 1_000_000));
    emu.shutdown().await;
}
