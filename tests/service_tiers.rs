//! Bedrock's service tiers through the real `aws-sdk-bedrockruntime` client: the SDK writes
//! the tier (InvokeModel's `X-Amzn-Bedrock-Service-Tier` header, Converse's `serviceTier`
//! body member), the throttle orders waiting requests by it, and `reserved` spends a quota of
//! its own, at the throttle and at the emulator. Real time, short quota periods.

#![cfg(all(feature = "aws-sdk", feature = "emulator"))]

mod sdk;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_sdk_bedrockruntime::{
    types::{InferenceConfiguration, ServiceTier, ServiceTierType},
    Client,
};
use bedrock_throttle::{
    emulator::{EmulatedQuota, Emulator, EmulatorHandle, LatencyModel, OutputLength},
    Quota, QuotaKey,
};
use sdk::{anthropic_body, config, message, throttled, MODEL};
use tokio::time::{sleep, timeout};

const DEADLINE: Duration = Duration::from_secs(30);

async fn emulator(reserved_tpm: u64, output: OutputLength) -> EmulatorHandle {
    let quota = |tpm| EmulatedQuota {
        rpm: None,
        tpm,
        tpd: None,
        period: Duration::from_secs(60),
    };
    Emulator::builder()
        .default_quota(quota(1_000_000))
        .reserved_quota(MODEL, quota(reserved_tpm))
        .latency(LatencyModel {
            first_token: Duration::from_millis(5),
            per_output_token: Duration::ZERO,
        })
        .chars_per_token(4.0)
        .output_tokens(output)
        .seed(5)
        .spawn()
        .await
        .unwrap()
}

async fn invoke(client: &Client, tier: Option<ServiceTierType>, max_tokens: u64) {
    let out = client
        .invoke_model()
        .model_id(MODEL)
        .body(anthropic_body("Which pump?", max_tokens))
        .set_service_tier(tier.clone())
        .send()
        .await
        .unwrap();
    // The emulator echoes the tier, and the SDK reads it back.
    assert_eq!(out.service_tier(), tier.as_ref());
}

async fn converse(client: &Client, tier: ServiceTierType, max_tokens: i32) {
    let out = client
        .converse()
        .model_id(MODEL)
        .messages(message("Which pump?"))
        .inference_config(
            InferenceConfiguration::builder()
                .max_tokens(max_tokens)
                .build(),
        )
        .service_tier(ServiceTier::builder().r#type(tier.clone()).build().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(out.service_tier().map(|t| t.r#type()), Some(&tier));
}

#[tokio::test]
async fn reserved_requests_spend_the_reserved_quota_only() {
    let emu = emulator(50_000, OutputLength::Fixed(20)).await;
    let cfg = config(Quota::tokens_per_minute(100_000))
        .reserved_quota(MODEL, Quota::tokens_per_minute(50_000))
        .build()
        .unwrap();
    let client = throttled(&emu, &cfg);
    timeout(DEADLINE, async {
        invoke(&client, Some(ServiceTierType::Reserved), 300).await;
        converse(&client, ServiceTierType::Reserved, 300).await;
        invoke(&client, Some(ServiceTierType::Flex), 300).await;
        invoke(&client, None, 300).await;
    })
    .await
    .unwrap();

    let stats = cfg.stats();
    let on_demand = stats.key(&QuotaKey::new(Some(MODEL), None)).unwrap();
    let reserved = stats
        .key(&QuotaKey::new(Some(MODEL), None).reserved())
        .unwrap();
    assert_eq!((on_demand.admitted, reserved.admitted), (2, 2));
    assert_eq!(reserved.quota.unwrap().tokens(), 50_000);
    assert_eq!(on_demand.quota.unwrap().tokens(), 100_000);
    // At the emulator too: two on the model, two on its reserved capacity.
    let emu_stats = emu.stats();
    assert_eq!(emu_stats.model(MODEL).admitted, 2);
    assert_eq!(emu_stats.model(&format!("{MODEL} (reserved)")).admitted, 2);
    emu.shutdown().await;
}

/// One quota period holds one request. A request fills it; then three `flex` Converse calls
/// and, a moment later, two `priority` InvokeModel calls wait. The priority ones go first,
/// though they came last; the flex ones still all run.
#[tokio::test]
async fn priority_waits_before_flex() {
    // Every answer uses its whole output limit, so nothing comes back at settlement: about
    // 1,000 tokens a request (~10 input + 990 output) against 1,100 per 600 ms.
    let emu = emulator(1_000_000, OutputLength::MaxTokens).await;
    let period = Duration::from_millis(600);
    let cfg = config(Quota::tokens_per_minute(1_100).with_period(period))
        .build()
        .unwrap();
    let client = throttled(&emu, &cfg);
    let order = Arc::new(Mutex::new(Vec::new()));
    timeout(DEADLINE, async {
        invoke(&client, None, 990).await;
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (client, order) = (client.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                converse(&client, ServiceTierType::Flex, 990).await;
                order.lock().unwrap().push(format!("flex{i}"));
            }));
            sleep(Duration::from_millis(10)).await;
        }
        for i in 0..2 {
            let (client, order) = (client.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                invoke(&client, Some(ServiceTierType::Priority), 990).await;
                order.lock().unwrap().push(format!("priority{i}"));
            }));
            sleep(Duration::from_millis(10)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .unwrap();
    let order = order.lock().unwrap().clone();
    assert_eq!(
        order,
        ["priority0", "priority1", "flex0", "flex1", "flex2"],
        "admission order"
    );
    emu.shutdown().await;
}
