//! Soak: 10,000 concurrent callers for one virtual hour through the whole layer against
//! the Bedrock-style mock. Every request ends, the mock never throttles, no minute draws
//! more than the quota allows, and memory stays bounded.
//!
//! Alone in its binary so that the process's peak RSS is this test's.

mod common;

use std::time::Duration;

use bedrock_throttle::{BedrockThrottleLayer, Quota, ThrottleConfig, ThrottleError};
use common::{invoke, status_kib, MockBedrock, SONNET_4};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

const CALLERS: u64 = 10_000;
const RPM: u32 = 800;
const TPM: u64 = 2_000_000;
const HOUR: Duration = Duration::from_secs(3_600);

#[tokio::test(start_paused = true)]
async fn ten_thousand_callers_for_an_hour_end_within_quota_in_bounded_memory() {
    let rss_before = status_kib("VmRSS");
    let upstream = MockBedrock::new(Some(RPM), TPM);
    // 10,000 callers queue for about 10,000 / RPM = 12.5 minutes before each admission.
    let cfg = ThrottleConfig::builder()
        .model_quota(SONNET_4, Quota::new(RPM, TPM))
        .max_wait(Duration::from_secs(20 * 60))
        // Every caller waits in the one key's queue: more than the default bound.
        .max_queued(CALLERS as usize)
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg))
        .service(upstream.clone());

    let start = Instant::now();
    let end = start + HOUR;
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let (mut ok, mut timed_out) = (0u64, 0u64);
                let mut i = 0u64;
                while Instant::now() < end {
                    let seed = caller * 7_919 + i * 104_729;
                    let prompt = "lorem ipsum ".repeat(4 + (seed % 97) as usize);
                    let req = invoke(SONNET_4, &prompt, 32 + seed % 97);
                    match client.ready().await.unwrap().call(req).await {
                        Ok(resp) => {
                            assert!(resp.status().is_success(), "{}", resp.status());
                            resp.into_body().collect().await.unwrap();
                            ok += 1;
                        }
                        Err(e) => match e.downcast_ref::<ThrottleError>() {
                            Some(ThrottleError::MaxWaitExceeded { .. }) => timed_out += 1,
                            _ => panic!("unexpected error: {e}"),
                        },
                    }
                    i += 1;
                }
                (ok, timed_out)
            })
        })
        .collect();

    // RSS sampled every 5 virtual minutes: after the first 10 minutes every caller has a
    // request in the queue or in flight, so later growth would be a leak.
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_secs(300)).await;
            samples.push(status_kib("VmRSS"));
        }
        samples
    });

    let (mut ok, mut timed_out) = (0, 0);
    for c in callers {
        let (o, t) = c.await.expect("every caller ends");
        ok += o;
        timed_out += t;
    }
    let finished = Instant::now() - start;
    let samples = sampler.await.unwrap();
    let peak = status_kib("VmHWM");
    let stats = upstream.stats();
    println!(
        "{ok} requests completed, {timed_out} timed out, in {finished:?} virtual; \
         throttled {}; RSS before {rss_before} KiB, every 5 min {samples:?} KiB, peak {peak} KiB",
        stats.throttled
    );

    assert_eq!(stats.throttled, 0, "the upstream never throttles");
    assert_eq!(timed_out, 0, "the queue moves within max_wait");
    assert_eq!(
        stats.admitted, ok,
        "every admitted request ended with its response"
    );
    // The RPM binds: a full bucket plus refill until the last caller ended (callers queued
    // at the hour's end still go through), within 2 %.
    let expected = f64::from(RPM) * (1.0 + finished.as_secs_f64() / 60.0);
    assert!(
        ok as f64 >= 0.98 * expected && ok as f64 <= expected + 1.0,
        "{ok} requests, expected about {expected}"
    );
    // No minute draws more tokens than its refill (the first: plus the full bucket).
    for (minute, drawn) in stats.drawn_per_minute.iter().enumerate() {
        let bound = if minute == 0 { 2 * TPM } else { TPM } as f64 * 1.02;
        assert!(*drawn as f64 <= bound, "minute {minute}: drew {drawn}");
    }
    // Memory: bounded by the callers, not by the requests. From 10 to 60 minutes the run
    // makes 40,000 more requests; RSS may move by allocator noise only.
    let settled = samples[1];
    let last = *samples.last().unwrap();
    assert!(
        last <= settled + 16 * 1024,
        "RSS grew from {settled} KiB to {last} KiB after the queue filled"
    );
    // 10,000 queued callers, each a task holding a request, its estimate, a retry and a
    // gate future, and a queue place: well under 16 KiB each.
    let per_caller = peak.saturating_sub(rss_before) * 1024 / CALLERS;
    assert!(per_caller < 16 * 1024, "{per_caller} bytes per caller");
}
