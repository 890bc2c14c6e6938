//! 100 concurrent callers for 10 virtual minutes against a Bedrock-style upstream.

mod common;

use std::time::Duration;

use bedrock_throttle::{BedrockThrottleLayer, Quota, ThrottleConfig};
use common::{invoke, MockBedrock, SONNET_4};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

const RPM: u32 = 600;
const TPM: u64 = 400_000;

#[tokio::test(start_paused = true)]
async fn hundred_callers_for_ten_minutes_use_the_whole_quota_without_a_throttle() {
    let upstream = MockBedrock::new(Some(RPM), TPM);
    let cfg = ThrottleConfig::builder()
        .model_quota(SONNET_4, Quota::new(RPM, TPM))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg))
        .service(upstream.clone());

    let start = Instant::now();
    let end = start + Duration::from_secs(600);
    let callers: Vec<_> = (0..100u64)
        .map(|caller| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut i = 0u64;
                while Instant::now() < end {
                    // Prompts from 200 to ~4,000 characters, max_tokens 256 to 1,024.
                    let seed = caller * 7_919 + i * 104_729;
                    let prompt = "lorem ipsum ".repeat(17 + (seed % 317) as usize);
                    let max_tokens = 256 + (seed % 769);
                    let req = invoke(SONNET_4, &prompt, max_tokens);
                    match client.ready().await.unwrap().call(req).await {
                        Ok(resp) if resp.status().is_success() => {
                            resp.into_body().collect().await.unwrap();
                            ok += 1;
                        }
                        _ => failed += 1,
                    }
                    i += 1;
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for c in callers {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed += f;
    }

    let stats = upstream.stats();
    println!("completed {ok}, failed {failed}, {stats:?}");
    assert_eq!(failed, 0, "every request completes");
    assert_eq!(stats.throttled, 0, "the upstream never throttles");
    assert_eq!(stats.admitted, ok);
    assert!(ok > 1_000, "the load is real: {ok} requests");
    // After the first minute's burst, every full minute admits the quota within 2 %: the
    // tokens drawn from the upstream's bucket (reserved at admission, less what settlement
    // returned) ...
    for (minute, drawn) in stats.drawn_per_minute.iter().enumerate().take(10).skip(1) {
        let ratio = *drawn as f64 / TPM as f64;
        assert!(
            (0.98..=1.02).contains(&ratio),
            "minute {minute}: drew {drawn} = {ratio:.4} of TPM"
        );
    }
    // ... and the tokens billed over those nine minutes (a minute's bill moves with the
    // requests that straddle its edges).
    let billed: u64 = stats.billed_per_minute[1..10].iter().sum();
    let ratio = billed as f64 / (9 * TPM) as f64;
    assert!(
        (0.98..=1.02).contains(&ratio),
        "billed {billed} = {ratio:.4} of 9 x TPM"
    );
}
