//! Finding the real quota from throttles, in virtual time, against the Bedrock-style mock:
//! a configured quota twice the real one, another client spending from the same quota, and
//! no configured quota at all. Run with `--nocapture` for the per-minute tables.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bedrock_throttle::{BedrockThrottleLayer, Quota, QuotaKey, ThrottleConfig};
use common::{invoke, MockBedrock, MockStats, OTHER_CLIENT, SONNET_4};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The account's real quota, unknown to the gate.
const REAL_RPM: u32 = 300;
const REAL_TPM: u64 = 200_000;

/// What 100 callers got over `minutes` virtual minutes, and the gate's effective token rate
/// averaged per minute.
struct Run {
    ok: u64,
    failed: u64,
    stats: MockStats,
    effective_tpm: Vec<f64>,
}

/// 100 callers send Sonnet 4 requests (prompts of 200 to ~4,000 characters, max_tokens 256
/// to 1,024) through the layer for `minutes`, while `other` (start, stop) minutes an
/// unprotected client spends about 30 % of the real quota from the same buckets.
async fn run(upstream: MockBedrock, quota: Quota, minutes: u64, other: Option<(u64, u64)>) -> Run {
    let cfg = ThrottleConfig::builder()
        .model_quota(SONNET_4, quota)
        .max_wait(Duration::from_secs(600))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg.clone()))
        .service(upstream.clone());

    let start = Instant::now();
    let end = start + Duration::from_secs(60 * minutes);
    let callers: Vec<_> = (0..100u64)
        .map(|caller| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut i = 0u64;
                while Instant::now() < end {
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

    // The other application: a request of 1,000 input tokens and max_tokens 500 every
    // 2.4 s (about 60,000 billed TPM), each retried every second until it succeeds.
    let other_task = other.map(|(from, to)| {
        let mut up = upstream.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(start + Duration::from_secs(60 * from)).await;
            let stop = start + Duration::from_secs(60 * to);
            let mut tick = tokio::time::interval(Duration::from_millis(2_400));
            let mut pending = Vec::new();
            while Instant::now() < stop {
                tick.tick().await;
                let mut up = up.clone();
                pending.push(tokio::spawn(async move {
                    loop {
                        let mut req = invoke(SONNET_4, &"x".repeat(4_000), 500);
                        req.headers_mut().insert(OTHER_CLIENT, "1".parse().unwrap());
                        let resp = up.ready().await.unwrap().call(req).await.unwrap();
                        if resp.status().is_success() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }));
            }
            for p in pending {
                p.await.unwrap();
            }
            let _ = up.ready().await;
        })
    });

    // The gate's effective token rate, sampled every second.
    let key = QuotaKey::new(Some(SONNET_4), None);
    let samples = Arc::new(Mutex::new(vec![Vec::new(); minutes as usize]));
    let sampler = {
        let samples = samples.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            while Instant::now() < end {
                tick.tick().await;
                let minute = ((Instant::now() - start).as_secs() / 60) as usize;
                if let (Some(q), Some(s)) = (
                    cfg.effective_quota(&key),
                    samples.lock().unwrap().get_mut(minute),
                ) {
                    s.push(q.tokens() as f64);
                }
            }
        })
    };

    let (mut ok, mut failed) = (0, 0);
    for c in callers {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed += f;
    }
    if let Some(t) = other_task {
        t.await.unwrap();
    }
    sampler.await.unwrap();
    let effective_tpm = samples
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.iter().sum::<f64>() / s.len().max(1) as f64)
        .collect();
    Run {
        ok,
        failed,
        stats: upstream.stats(),
        effective_tpm,
    }
}

fn at(v: &[u64], i: usize) -> u64 {
    v.get(i).copied().unwrap_or(0)
}

impl Run {
    /// Throttled share of this client's attempts in minute `m`.
    fn throttle_rate(&self, m: usize) -> f64 {
        let t = at(&self.stats.throttled_per_minute, m) as f64;
        let a = at(&self.stats.admitted_per_minute, m) as f64;
        t / (t + a).max(1.0)
    }

    /// This client's billed tokens in minute `m`, as a share of the real quota.
    fn goodput(&self, m: usize) -> f64 {
        at(&self.stats.billed_per_minute, m) as f64 / REAL_TPM as f64
    }

    /// Goodput at least 90 % of the real quota over `minutes`, and at least 85 % in each
    /// (a minute's bill moves with the requests that straddle its edges, as in
    /// `sustained_load`).
    fn assert_goodput(&self, minutes: std::ops::Range<usize>) {
        let n = minutes.len() as f64;
        let mean = minutes.clone().map(|m| self.goodput(m)).sum::<f64>() / n;
        assert!(
            mean >= 0.90,
            "goodput {mean:.3} of the real quota over {minutes:?}"
        );
        for m in minutes {
            assert!(
                self.goodput(m) >= 0.85,
                "minute {}: goodput {:.3}",
                m + 1,
                self.goodput(m)
            );
        }
    }

    fn other_goodput(&self, m: usize) -> f64 {
        at(&self.stats.other.billed_per_minute, m) as f64 / REAL_TPM as f64
    }

    fn print(&self, title: &str) {
        println!("{title}: completed {}, failed {}", self.ok, self.failed);
        println!("throttles at {:.1?}", self.stats.throttled_at);
        println!("| minute | attempts | throttled | throttle rate | goodput / real TPM | other's goodput | other's throttles | gate's TPM |");
        println!("|---|---|---|---|---|---|---|---|");
        for m in 0..self.effective_tpm.len() {
            println!(
                "| {} | {} | {} | {:.2} % | {:.1} % | {:.1} % | {} | {:.0} |",
                m + 1,
                at(&self.stats.admitted_per_minute, m) + at(&self.stats.throttled_per_minute, m),
                at(&self.stats.throttled_per_minute, m),
                100.0 * self.throttle_rate(m),
                100.0 * self.goodput(m),
                100.0 * self.other_goodput(m),
                at(&self.stats.other.throttled_per_minute, m),
                self.effective_tpm[m],
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_quota_configured_twice_too_high_is_found_within_two_minutes() {
    let upstream = MockBedrock::new(Some(REAL_RPM), REAL_TPM);
    let r = run(upstream, Quota::new(2 * REAL_RPM, 2 * REAL_TPM), 10, None).await;
    r.print("configured 600 RPM / 400,000 TPM, real 300 / 200,000");
    assert_eq!(r.failed, 0, "no request is lost");
    for m in 2..10 {
        assert!(
            r.throttle_rate(m) < 0.02,
            "minute {}: throttle rate {:.3}",
            m + 1,
            r.throttle_rate(m)
        );
    }
    r.assert_goodput(2..10);
}

#[tokio::test(start_paused = true)]
async fn another_client_takes_a_share_and_gives_it_back() {
    let upstream = MockBedrock::new(None, REAL_TPM);
    // The configured quota is right until the other client starts at minute 3; it stops
    // at minute 7.
    let r = run(
        upstream,
        Quota::tokens_per_minute(REAL_TPM),
        11,
        Some((3, 7)),
    )
    .await;
    r.print("configured = real 200,000 TPM; another client minutes 4-7");
    assert_eq!(r.failed, 0, "no request of ours is lost");
    // While the other client spends, this one leaves it room and the two together still
    // use the quota.
    for m in 4..7 {
        let both = r.goodput(m) + r.other_goodput(m);
        assert!(both >= 0.90, "minute {}: both use {both:.3}", m + 1);
        assert!(
            r.other_goodput(m) >= 0.25,
            "minute {}: the other gets its share",
            m + 1
        );
        assert!(r.throttle_rate(m) < 0.05, "minute {}", m + 1);
    }
    // Two minutes after it stops, this one takes the whole quota again.
    r.assert_goodput(8..11);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_quota_is_discovered_within_five_minutes() {
    let upstream = MockBedrock::new(None, REAL_TPM);
    let r = run(upstream, Quota::discover(), 8, None).await;
    r.print("Quota::discover(), real 200,000 TPM");
    assert_eq!(r.failed, 0, "no request is lost");
    // The gate's rate swings between 0.7 x and a little above what it found, so it is
    // judged over minutes 5 to 8.
    let found = r.effective_tpm[4..8].iter().sum::<f64>() / 4.0 / REAL_TPM as f64;
    assert!(
        (0.9..=1.1).contains(&found),
        "the gate's rate averages {found:.3} of the real quota in minutes 5-8"
    );
    r.assert_goodput(4..8);
}

#[tokio::test(start_paused = true)]
async fn a_discovered_quota_finds_a_request_limit_from_request_throttles() {
    // The account's binding limit is 60 requests per minute; its tokens would allow far more.
    let upstream = MockBedrock::new(Some(60), 2_000_000);
    let r = run(upstream, Quota::discover(), 8, None).await;
    r.print("Quota::discover(), real 60 RPM / 2,000,000 TPM");
    assert_eq!(r.failed, 0, "no request is lost");
    // The request rate is found from "Too many requests": in minutes 3 to 8 the callers get
    // the real RPM, and few attempts are refused.
    for m in 2..8 {
        let admitted = at(&r.stats.admitted_per_minute, m);
        assert!(
            admitted >= 54,
            "minute {}: {admitted} requests admitted of 60",
            m + 1
        );
        assert!(r.throttle_rate(m) < 0.05, "minute {}", m + 1);
    }
}
