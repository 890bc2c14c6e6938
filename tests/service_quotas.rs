//! Loading applied quotas with the real `aws-sdk-servicequotas` client, over loopback,
//! from the emulator's `ListServiceQuotas`.

#![cfg(all(feature = "service-quotas", feature = "emulator"))]

use std::time::Duration;

use aws_sdk_servicequotas::config::{BehaviorVersion, Credentials, Region};
use bedrock_throttle::{
    emulator::{EmulatedQuota, Emulator},
    service_quotas::{AppliedQuotas, Scope},
    Quota, QuotaKey, ThrottleConfig,
};

const SONNET_35: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const SONNET_4_US: &str = "us.anthropic.claude-sonnet-4-20250514-v1:0";

fn quota(rpm: Option<u64>, tpm: u64, tpd: Option<u64>) -> EmulatedQuota {
    EmulatedQuota {
        rpm,
        tpm,
        tpd,
        period: Duration::from_secs(60),
    }
}

fn client(endpoint: &str) -> aws_sdk_servicequotas::Client {
    let conf = aws_sdk_servicequotas::Config::builder()
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
        .spawn()
        .await
        .unwrap();
    let client = client(&emu.endpoint_url());

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
    assert_eq!(pages.len(), 3, "6 quotas, 2 to a page");
    let names: Vec<String> = pages
        .iter()
        .flat_map(|p| p.quotas())
        .map(|q| q.quota_name().unwrap().to_owned())
        .collect();
    assert!(names.contains(
        &"Cross-Region InvokeModel tokens per minute for Anthropic Claude Sonnet 4".to_owned()
    ));
    let arn = pages[0].quotas()[0].quota_arn().unwrap();
    assert!(arn.starts_with("arn:aws:servicequotas:eu-west-1:"), "{arn}");

    let applied = AppliedQuotas::load(&client).await.unwrap();
    let s35 = applied
        .get("Anthropic Claude 3.5 Sonnet", Scope::OnDemand)
        .unwrap();
    assert_eq!(s35.quota(), Some(Quota::new(50, 400_000)));
    let s4 = applied
        .get("Anthropic Claude Sonnet 4", Scope::CrossRegion)
        .unwrap();
    assert_eq!(s4.quota(), Some(Quota::tokens_per_minute(200_000)));
    assert_eq!(s4.tokens_per_day, Some(288_000_000));
    // The on-demand Sonnet 4 quota is not in the account, and is not made up.
    assert!(applied
        .get("Anthropic Claude Sonnet 4", Scope::OnDemand)
        .is_none());

    let models = [
        (SONNET_35, "Anthropic Claude 3.5 Sonnet"),
        (SONNET_4_US, "Anthropic Claude Sonnet 4"),
        // The on-demand id of a model the account has only a cross-Region quota for.
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

    // What could not be mapped is reported, with why; non-inference quotas are left aside.
    let unmapped: Vec<(String, String)> = applied
        .unmapped()
        .into_iter()
        .map(|u| (u.name, u.reason))
        .collect();
    println!("{unmapped:#?}");
    let names: Vec<&str> = unmapped.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Cross-Model Max Tokens Per Day"]);
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
    assert_eq!(applied.unmapped().len(), 1);
    emu.shutdown().await;
}
