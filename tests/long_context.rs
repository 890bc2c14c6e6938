//! The 1M-context variant of a model as a quota of its own, end to end: the account's
//! `… 1M Context Length` quota loaded with the real `aws-sdk-servicequotas` client, and
//! Converse calls of the real `aws-sdk-bedrockruntime` client through the gate, over
//! loopback against the emulator.

#![cfg(all(feature = "aws-sdk", feature = "emulator", feature = "service-quotas"))]

mod sdk;

use std::{collections::HashMap, time::Duration};

use aws_sdk_bedrockruntime::types::InferenceConfiguration;
use aws_sdk_servicequotas::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_types::Document;
use bedrock_throttle::{
    emulator::{EmulatedQuota, Emulator, OutputLength},
    service_quotas::{AppliedQuotas, Scope},
    ContextWindow, Quota, QuotaKey, ThrottleConfig, ThrottleError,
};
use sdk::{message, throttled, MODEL};

const DISPLAY: &str = "Anthropic Claude 3.5 Sonnet";

fn quota(tpm: u64) -> EmulatedQuota {
    EmulatedQuota {
        rpm: None,
        tpm,
        tpd: None,
        period: Duration::from_secs(60),
    }
}

fn quotas_client(endpoint: &str) -> aws_sdk_servicequotas::Client {
    let conf = aws_sdk_servicequotas::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    aws_sdk_servicequotas::Client::from_conf(conf)
}

/// The 1M-context beta flag, as Converse takes it.
fn beta_1m() -> Document {
    Document::Object(HashMap::from([(
        "anthropic_beta".to_owned(),
        Document::Array(vec![Document::String("context-1m-2025-08-07".to_owned())]),
    )]))
}

#[tokio::test]
async fn the_1m_context_quota_is_loaded_and_spent_apart_from_the_standard_one() {
    let emu = Emulator::builder()
        .model_quota(MODEL, quota(1_000))
        .long_context_quota(MODEL, quota(100_000))
        .quota_display_name(MODEL, DISPLAY)
        .output_tokens(OutputLength::Fixed(20))
        .spawn()
        .await
        .unwrap();
    let applied = AppliedQuotas::load(&quotas_client(&emu.endpoint_url()))
        .await
        .unwrap();
    let long = applied
        .get_context(DISPLAY, Scope::OnDemand, ContextWindow::OneMillion)
        .unwrap();
    assert_eq!(long.quota(), Some(Quota::tokens_per_minute(100_000)));
    let cfg = applied
        .configure(ThrottleConfig::builder(), &[(MODEL, DISPLAY)])
        .build()
        .unwrap();
    let client = throttled(&emu, &cfg);
    let converse = |max_tokens: i32, flagged: bool| {
        let mut call = client
            .converse()
            .model_id(MODEL)
            .messages(message("hello"))
            .inference_config(
                InferenceConfiguration::builder()
                    .max_tokens(max_tokens)
                    .build(),
            );
        if flagged {
            call = call.additional_model_request_fields(beta_1m());
        }
        call.send()
    };
    // 5,000 output tokens reserved: past the standard 1,000 TPM, within the 1M one.
    converse(5_000, true).await.unwrap();
    assert_eq!(
        emu.stats().model(&format!("{MODEL} (1M context)")).admitted,
        1
    );
    let long_key = QuotaKey::new(Some(MODEL), None).with_context(ContextWindow::OneMillion);
    assert_eq!(
        cfg.effective_quota(&long_key).map(|q| q.tokens()),
        Some(100_000)
    );
    // Without the flag the same call can never fit the standard quota: refused before
    // sending.
    let err = converse(5_000, false).await.unwrap_err();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    let mut never_fits = false;
    while let Some(e) = source {
        if let Some(t) = e.downcast_ref::<ThrottleError>() {
            never_fits = matches!(t, ThrottleError::NeverFits { .. });
        }
        source = e.source();
    }
    assert!(never_fits, "{err:?}");
    assert_eq!(emu.stats().model(MODEL).admitted, 0);
    emu.shutdown().await;
}
