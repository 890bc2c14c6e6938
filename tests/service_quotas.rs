//! Loading applied quotas with the real `aws-sdk-servicequotas` client, over loopback,
//! from the emulator's `ListServiceQuotas`.

#![cfg(all(feature = "service-quotas", feature = "emulator"))]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_sdk_servicequotas::config::{
    interceptors::BeforeTransmitInterceptorContextRef, BehaviorVersion, ConfigBag, Credentials,
    Intercept, Region, RuntimeComponents,
};
use bedrock_throttle::{
    emulator::{EmulatedQuota, Emulator},
    service_quotas::{AppliedQuotas, Limit, Scope},
    BoxError, Quota, QuotaKey, ThrottleConfig,
};

const SONNET_35: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const SONNET_4_US: &str = "us.anthropic.claude-sonnet-4-20250514-v1:0";
const SONNET_4_GLOBAL: &str = "global.anthropic.claude-sonnet-4-20250514-v1:0";

/// Records the body of every request the client sends.
#[derive(Clone, Debug, Default)]
struct Bodies(Arc<Mutex<Vec<String>>>);

impl Intercept for Bodies {
    fn name(&self) -> &'static str {
        "Bodies"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let body = context.request().body().bytes().unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(body).into_owned());
        Ok(())
    }
}

fn quota(rpm: Option<u64>, tpm: u64, tpd: Option<u64>) -> EmulatedQuota {
    EmulatedQuota {
        rpm,
        tpm,
        tpd,
        period: Duration::from_secs(60),
    }
}

fn client(endpoint: &str) -> aws_sdk_servicequotas::Client {
    recording_client(endpoint, Bodies::default())
}

fn recording_client(endpoint: &str, bodies: Bodies) -> aws_sdk_servicequotas::Client {
    let conf = aws_sdk_servicequotas::Config::builder()
        .interceptor(bodies)
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    aws_sdk_servicequotas::Client::from_conf(conf)
}

#[tokio::test]
async fn applied_quotas_load_through_every_page_and_configure_the_gate() {
    let emu = Emulator::builder()
        .model_quota(SONNET_35, quota(Some(50), 400_000, None))
        .quota_display_name(SONNET_35, "Anthropic Claude 3.5 Sonnet")
        .model_quota(SONNET_4_US, quota(None, 200_000, Some(288_000_000)))
        .quota_display_name(SONNET_4_US, "Anthropic Claude Sonnet 4")
        .model_quota(
            SONNET_4_GLOBAL,
            quota(Some(400), 500_000, Some(720_000_000)),
        )
        .quota_display_name(SONNET_4_GLOBAL, "Anthropic Claude Sonnet 4")
        .spawn()
        .await
        .unwrap();
    let bodies = Bodies::default();
    let client = recording_client(&emu.endpoint_url(), bodies.clone());

    // The raw listing, two to a page: the SDK's paginator follows NextToken.
    let pages: Vec<_> = client
        .list_service_quotas()
        .service_code("bedrock")
        .into_paginator()
        .page_size(2)
        .send()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(pages.len(), 5, "9 quotas, 2 to a page");
    let listed: Vec<(String, bool)> = pages
        .iter()
        .flat_map(|p| p.quotas())
        .map(|q| (q.quota_name().unwrap().to_owned(), q.adjustable()))
        .collect();
    // Named as accounts list them, adjustability kept.
    for (name, adjustable) in [
        ("Cross-region model inference tokens per minute for Anthropic Claude Sonnet 4 V1", true),
        ("Cross-region model inference tokens per day for Anthropic Claude Sonnet 4 V1", false),
        ("Global cross-region model inference requests per minute for Anthropic Claude Sonnet 4 V1", true),
        ("On-demand model inference tokens per minute for Anthropic Claude 3.5 Sonnet", true),
        ("Cross-Model Account-Level Tokens Per Day", false),
    ] {
        assert!(listed.contains(&(name.to_owned(), adjustable)), "{name}: {listed:#?}");
    }
    let arn = pages[0].quotas()[0].quota_arn().unwrap();
    assert!(arn.starts_with("arn:aws:servicequotas:eu-west-1:"), "{arn}");
    // Without a page size the API answers a small page.
    let first = client
        .list_service_quotas()
        .service_code("bedrock")
        .send()
        .await
        .unwrap();
    assert!(first.next_token().is_some());
    assert_eq!(first.quotas().len(), 8);

    bodies.0.lock().unwrap().clear();
    let applied = AppliedQuotas::load(&client).await.unwrap();
    // One call, with the largest page the API allows.
    let asked = bodies.0.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0].contains(r#""MaxResults":100"#), "{}", asked[0]);

    let s35 = applied
        .get("Anthropic Claude 3.5 Sonnet", Scope::OnDemand)
        .unwrap();
    assert_eq!(s35.quota(), Some(Quota::new(50, 400_000)));
    let s4 = applied
        .get("Anthropic Claude Sonnet 4", Scope::CrossRegion)
        .unwrap();
    assert_eq!(
        s4.quota(),
        Some(Quota::tokens_per_minute(200_000).with_tokens_per_day(288_000_000))
    );
    assert_eq!(s4.tokens_per_day, Some(288_000_000));
    // The global profile's quota is its own, and its RPM is filled where listed.
    let global = applied
        .get("Anthropic Claude Sonnet 4", Scope::Global)
        .unwrap();
    assert_eq!(
        global.quota(),
        Some(Quota::new(400, 500_000).with_tokens_per_day(720_000_000))
    );
    // The on-demand Sonnet 4 quota is not in the account, and is not made up.
    assert!(applied
        .get("Anthropic Claude Sonnet 4", Scope::OnDemand)
        .is_none());
    assert_eq!(applied.account_tokens_per_day(), Some(10_000_000_000));
    let daily = applied
        .listed()
        .iter()
        .find(|l| {
            l.parsed
                .as_ref()
                .is_some_and(|p| p.limit == Limit::TokensPerDay && p.model.is_some())
        })
        .unwrap();
    assert_eq!(daily.adjustable, Some(false));

    let models = [
        (SONNET_35, "Anthropic Claude 3.5 Sonnet"),
        (SONNET_4_US, "Anthropic Claude Sonnet 4"),
        (SONNET_4_GLOBAL, "Anthropic Claude Sonnet 4 V1"),
        // The on-demand id of a model the account has only profile quotas for.
        (
            "anthropic.claude-sonnet-4-20250514-v1:0",
            "Anthropic Claude Sonnet 4",
        ),
    ];
    assert_eq!(
        applied.missing(&models),
        ["anthropic.claude-sonnet-4-20250514-v1:0"]
    );
    let cfg = applied
        .configure(ThrottleConfig::builder(), &models)
        .build()
        .unwrap();
    let report_key = QuotaKey::new(Some(SONNET_4_US), None);
    // Configured, unused yet.
    assert_eq!(cfg.effective_quota(&report_key), None);

    // Nothing per-model is left unread; non-inference quotas are left aside.
    let unmapped: Vec<(String, String)> = applied
        .unmapped()
        .into_iter()
        .map(|u| (u.name, u.reason))
        .collect();
    assert_eq!(unmapped, []);
    assert_eq!(applied.ignored(), 1, "Batch inference job size");
    emu.shutdown().await;
}

#[tokio::test]
async fn other_services_and_operations_are_refused_as_service_quotas_would() {
    let emu = Emulator::builder().spawn().await.unwrap();
    let client = client(&emu.endpoint_url());
    let err = client
        .list_service_quotas()
        .service_code("ec2")
        .send()
        .await
        .unwrap_err();
    let err = aws_sdk_servicequotas::Error::from(err);
    assert!(
        matches!(
            err,
            aws_sdk_servicequotas::Error::NoSuchResourceException(_)
        ),
        "{err:?}"
    );
    let err = client
        .list_service_quotas()
        .service_code("bedrock")
        .next_token("not-a-token")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        aws_sdk_servicequotas::Error::from(err),
        aws_sdk_servicequotas::Error::InvalidPaginationTokenException(_)
    ),);
    // No model quotas configured: only the two account-wide ones.
    let applied = AppliedQuotas::load(&client).await.unwrap();
    assert_eq!(applied.iter().count(), 0);
    assert_eq!(applied.unmapped().len(), 0);
    assert_eq!(applied.account_tokens_per_day(), Some(10_000_000_000));
    emu.shutdown().await;
}

/// Sends three small requests for `model` through a gate configured from `applied`, and
/// returns when the last one was sent, from the start.
async fn third_request_after(applied: &AppliedQuotas, model: &str, display: &str) -> Duration {
    use bedrock_throttle::{estimate::TokenEstimate, BedrockThrottleLayer};
    use tower::{service_fn, Layer, ServiceExt};

    let cfg = applied
        .configure(ThrottleConfig::builder(), &[(model, display)])
        .build()
        .unwrap();
    type Body = http_body_util::Full<bytes::Bytes>;
    let svc = BedrockThrottleLayer::new(cfg).layer(service_fn(|_req: http::Request<Body>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Body::default()))
    }));
    let start = tokio::time::Instant::now();
    for _ in 0..3 {
        let path = format!("/model/{model}/invoke");
        let mut req = http::Request::post(path).body(Body::default()).unwrap();
        req.extensions_mut().insert(TokenEstimate::new(10, 10));
        svc.clone().oneshot(req).await.unwrap();
    }
    start.elapsed()
}

#[tokio::test(start_paused = true)]
async fn the_loader_fills_the_daily_quotas_and_the_gate_enforces_them() {
    use bedrock_throttle::{estimate::TokenEstimate, BedrockThrottleLayer, ThrottleError};
    use tower::{service_fn, Layer, ServiceExt};

    type Body = http_body_util::Full<bytes::Bytes>;
    let (pro, lite) = ("amazon.nova-pro-v1:0", "amazon.nova-lite-v1:0");
    let applied = AppliedQuotas::from_entries([
        (
            "On-demand model inference tokens per minute for Amazon Nova Pro".to_owned(),
            1_000_000.0,
        ),
        (
            "On-demand model inference tokens per day for Amazon Nova Pro".to_owned(),
            50.0,
        ),
        (
            "On-demand model inference tokens per minute for Amazon Nova Lite".to_owned(),
            1_000_000.0,
        ),
        ("Cross-Model Account-Level Tokens Per Day".to_owned(), 70.0),
    ]);
    let cfg = applied
        .configure(
            ThrottleConfig::builder(),
            &[(pro, "Amazon Nova Pro"), (lite, "Amazon Nova Lite")],
        )
        .build()
        .unwrap();
    let svc = BedrockThrottleLayer::new(cfg).layer(service_fn(|_req: http::Request<Body>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Body::default()))
    }));
    // Each request reserves 20 tokens; an unread body keeps them charged.
    let send = |model: &str| {
        let mut req = http::Request::post(format!("/model/{model}/invoke"))
            .body(Body::default())
            .unwrap();
        req.extensions_mut().insert(TokenEstimate::new(10, 10));
        svc.clone().oneshot(req)
    };
    let daily_key = |e: bedrock_throttle::BoxError| match e.downcast_ref::<ThrottleError>() {
        Some(ThrottleError::DailyQuotaExhausted { key, .. }) => {
            key.as_ref().map(|k| k.model().unwrap().to_owned())
        }
        _ => panic!("{e}"),
    };
    send(pro).await.unwrap();
    send(pro).await.unwrap();
    // Nova Pro's own day (50) is full at 40 + 20.
    assert_eq!(
        daily_key(send(pro).await.unwrap_err()),
        Some(pro.to_owned())
    );
    send(lite).await.unwrap();
    // The account's day (70) is full at 60 + 20, for every model.
    assert_eq!(daily_key(send(lite).await.unwrap_err()), None);
}

#[tokio::test(start_paused = true)]
async fn the_loader_fills_rpm_where_the_account_lists_it_and_only_there() {
    let display = "Amazon Nova Pro";
    let tpm = (
        "On-demand model inference tokens per minute for Amazon Nova Pro".to_owned(),
        1_000_000.0,
    );
    let rpm = (
        "On-demand model inference requests per minute for Amazon Nova Pro".to_owned(),
        2.0,
    );
    let model = "amazon.nova-pro-v1:0";
    // Two requests a minute listed: the third waits for the request bucket (30 s a request).
    let with_rpm = AppliedQuotas::from_entries([tpm.clone(), rpm]);
    let waited = third_request_after(&with_rpm, model, display).await;
    assert!(waited >= Duration::from_secs(29), "{waited:?}");
    // Only TPM listed: no request limit is made up.
    let tpm_only = AppliedQuotas::from_entries([tpm]);
    assert_eq!(
        third_request_after(&tpm_only, model, display).await,
        Duration::ZERO
    );
}
