//! Tenants, priorities and back-pressure, in virtual time against an upstream that charges
//! exactly what the gate reserved.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bedrock_throttle::{
    estimate::TokenEstimate, gate::SettlingBody, BedrockThrottleLayer, BoxError, Overload,
    Priority, Quota, RefusedBy, Tenant, TenantPolicy, ThrottleConfig, ThrottleConfigBuilder,
    ThrottleError,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{service_fn, util::BoxCloneService, Service, ServiceBuilder, ServiceExt};

const TPM: u64 = 100_000;
/// Tokens per request: 1 % of the quota, 0.6 s of refill.
const TOKENS: u64 = 1_000;

type Client = BoxCloneService<Request<Full<Bytes>>, Response<SettlingBody<Full<Bytes>>>, BoxError>;

/// Tokens upstream billed per tenant, and how many calls reached it.
#[derive(Clone, Default)]
struct Upstream {
    billed: Arc<Mutex<HashMap<String, u64>>>,
    calls: Arc<AtomicU64>,
}

fn client(cfg: ThrottleConfig, upstream: &Upstream) -> Client {
    let up = upstream.clone();
    let svc = service_fn(move |req: Request<Full<Bytes>>| {
        let up = up.clone();
        async move {
            up.calls.fetch_add(1, Ordering::Relaxed);
            let tenant = req
                .extensions()
                .get::<Tenant>()
                .map(|t| t.to_string())
                .or_else(|| {
                    let h = req.headers().get("x-tenant")?;
                    Some(h.to_str().ok()?.to_owned())
                })
                .unwrap_or_default();
            let input = req
                .extensions()
                .get::<TokenEstimate>()
                .map_or(0, |e| e.input_tokens());
            *up.billed.lock().unwrap().entry(tenant).or_default() += input;
            Ok::<_, Infallible>(
                Response::builder()
                    .header("x-amzn-bedrock-input-token-count", input)
                    .header("x-amzn-bedrock-output-token-count", 0)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
        }
    });
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(BedrockThrottleLayer::new(cfg))
            .service(svc),
    )
}

fn request(tenant: Option<&str>, priority: Priority, tokens: u64) -> Request<Full<Bytes>> {
    let mut req = Request::post("https://bedrock-runtime.us-east-1.amazonaws.com/model/m/invoke")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut().insert(TokenEstimate::new(tokens, 0));
    req.extensions_mut().insert(priority);
    if let Some(t) = tenant {
        req.extensions_mut().insert(Tenant::new(t));
    }
    req
}

fn config() -> ThrottleConfigBuilder {
    ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(TPM).with_burndown(1.0))
        .headroom(Duration::ZERO)
}

/// What one stream of requests saw.
#[derive(Debug, Default)]
struct Outcome {
    ok: u64,
    tokens: u64,
    waits: Vec<Duration>,
    shed: u64,
    timed_out: u64,
}

impl Outcome {
    fn p99(&mut self) -> Duration {
        self.waits.sort();
        self.waits[(self.waits.len() * 99 / 100).min(self.waits.len() - 1)]
    }
}

/// Sends one request every `every` from `start` to `end`, each as its own task (an open
/// loop: demand does not slow down when the gate does).
async fn open_loop(
    client: Client,
    tenant: &'static str,
    priority: Priority,
    every: Duration,
    start: Instant,
    end: Instant,
) -> Outcome {
    tokio::time::sleep_until(start).await;
    let mut tasks = Vec::new();
    let mut ticks = tokio::time::interval(every);
    while Instant::now() < end {
        ticks.tick().await;
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let res = client
                .oneshot(request(Some(tenant), priority, TOKENS))
                .await;
            (res, sent.elapsed())
        }));
    }
    let mut out = Outcome::default();
    for t in tasks {
        let (res, waited) = t.await.unwrap();
        match res {
            Ok(r) => {
                assert!(r.status().is_success());
                out.ok += 1;
                out.tokens += TOKENS;
                out.waits.push(waited);
            }
            Err(e) => match e.downcast_ref::<ThrottleError>() {
                Some(ThrottleError::MaxWaitExceeded { .. }) => out.timed_out += 1,
                Some(ThrottleError::Overloaded { .. }) => out.shed += 1,
                other => panic!("unexpected error {other:?}"),
            },
        }
    }
    out
}

/// Requests per minute at `share` of the quota.
fn every(share: f64) -> Duration {
    Duration::from_secs_f64(60.0 / (share * TPM as f64 / TOKENS as f64))
}

#[tokio::test(start_paused = true)]
async fn a_tenant_sending_ten_times_its_share_cannot_crowd_out_a_quiet_one() {
    let upstream = Upstream::default();
    let client = client(config().build().unwrap(), &upstream);
    let start = Instant::now();
    let end = start + Duration::from_secs(20 * 60);
    // Equal weights: each tenant's share is half the quota. The noisy one asks for ten
    // times that; the quiet one for exactly its share.
    let noisy = tokio::spawn(open_loop(
        client.clone(),
        "noisy",
        Priority::Interactive,
        every(5.0),
        start,
        end,
    ));
    let mut quiet = open_loop(
        client,
        "quiet",
        Priority::Interactive,
        every(0.5),
        start,
        end,
    )
    .await;
    let noisy = noisy.await.unwrap();

    let minutes = 20.0;
    let share = 0.5 * TPM as f64 * minutes;
    let quiet_share = quiet.tokens as f64 / share;
    let p99 = quiet.p99();
    println!(
        "quiet: {} ok, {:.1} % of its share, p99 wait {p99:?}; noisy: {} ok, {} timed out",
        quiet.ok,
        100.0 * quiet_share,
        noisy.ok,
        noisy.timed_out
    );
    assert!(
        quiet_share >= 0.95,
        "quiet got {quiet_share:.3} of its share"
    );
    assert_eq!(quiet.timed_out + quiet.shed, 0);
    // A quiet request is queued right behind the request being served: it waits for that
    // one's refill and its own, 0.6 s each at this quota, plus one more of the noisy
    // tenant's when their tags tie.
    let bound = Duration::from_secs_f64(3.0 * 60.0 * TOKENS as f64 / TPM as f64);
    assert!(p99 <= bound, "quiet p99 wait {p99:?} over {bound:?}");
    // The noisy tenant used what the quiet one left: together the whole quota.
    let total = (quiet.tokens + noisy.tokens) as f64 / (TPM as f64 * minutes);
    assert!(total >= 0.98, "quota used {total:.3}");
    assert!(
        noisy.timed_out > 0,
        "the noisy tenant's excess waited out max_wait"
    );
}

#[tokio::test(start_paused = true)]
async fn weights_divide_a_saturated_quota_and_an_idle_share_is_lent_and_reclaimed() {
    let upstream = Upstream::default();
    let cfg = config()
        .tenant("gold", TenantPolicy::weight(3.0))
        .build()
        .unwrap();
    let client = client(cfg, &upstream);
    let t0 = Instant::now();
    let minute = Duration::from_secs(60);
    // Minutes 0-10: "bronze" alone, asking for twice the quota. Minutes 10-20: "gold" joins,
    // also asking for twice the quota.
    let bronze = tokio::spawn(open_loop(
        client.clone(),
        "bronze",
        Priority::Interactive,
        every(2.0),
        t0,
        t0 + 20 * minute,
    ));
    tokio::time::sleep(10 * minute).await;
    let alone = upstream.billed.lock().unwrap()["bronze"];
    let gold = open_loop(
        client,
        "gold",
        Priority::Interactive,
        every(2.0),
        t0 + 10 * minute,
        t0 + 20 * minute,
    )
    .await;
    bronze.await.unwrap();
    let billed = upstream.billed.lock().unwrap().clone();
    let shared = billed["bronze"] - alone;
    println!(
        "bronze alone {alone}, then bronze {shared} and gold {}",
        gold.tokens
    );
    // Alone, bronze borrows the whole quota (one bucket of burst on top).
    assert!(alone as f64 >= 0.98 * 10.0 * TPM as f64, "{alone}");
    // Together (until the last waiters' max_wait), three to one, and the whole quota.
    let together = (gold.tokens + shared) as f64;
    let gold_part = gold.tokens as f64 / together;
    assert!((0.74..=0.76).contains(&gold_part), "gold {gold_part:.3}");
    assert!(together >= 0.98 * 10.0 * TPM as f64, "{together}");
}

/// A full queue sheds the tenants above their weighted share of its places first: a
/// tenant flooding the key cannot take every place, so under overload admissions still
/// split by weight (3 : 1 : 1 here, the capped tenant's cap being its weighted share).
#[tokio::test(start_paused = true)]
async fn under_overload_with_few_places_admissions_still_split_by_weight() {
    let upstream = Upstream::default();
    let cfg = config()
        .max_queued(20)
        .tenant("gold", TenantPolicy::weight(3.0))
        .tenant("capped", TenantPolicy::weight(1.0).with_cap(0.2))
        .build()
        .unwrap();
    let client = client(cfg, &upstream);
    // One request of the whole quota empties the bucket, so no burst skews the split.
    let warm_up = request(None, Priority::Interactive, TPM);
    client.clone().oneshot(warm_up).await.unwrap();
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(10 * 60);
    // Gold floods at ten times the quota; the others ask for half of it each, more than
    // their share but far less than gold.
    let gold = tokio::spawn(open_loop(
        client.clone(),
        "gold",
        Priority::Interactive,
        every(10.0),
        t0,
        end,
    ));
    let capped = tokio::spawn(open_loop(
        client.clone(),
        "capped",
        Priority::Interactive,
        every(0.5),
        t0,
        end,
    ));
    let bronze = open_loop(client, "bronze", Priority::Interactive, every(0.5), t0, end).await;
    let (gold, capped) = (gold.await.unwrap(), capped.await.unwrap());
    let total = (gold.ok + capped.ok + bronze.ok) as f64;
    let part = |o: &Outcome| o.ok as f64 / total;
    println!(
        "admitted: gold {} ({:.3}), bronze {} ({:.3}), capped {} ({:.3}); shed: gold {}, bronze {}, capped {}",
        gold.ok,
        part(&gold),
        bronze.ok,
        part(&bronze),
        capped.ok,
        part(&capped),
        gold.shed,
        bronze.shed,
        capped.shed
    );
    assert!(
        (0.57..=0.63).contains(&part(&gold)),
        "gold {:.3}",
        part(&gold)
    );
    assert!(
        (0.18..=0.22).contains(&part(&bronze)),
        "bronze {:.3}",
        part(&bronze)
    );
    assert!(
        (0.18..=0.22).contains(&part(&capped)),
        "capped {:.3}",
        part(&capped)
    );
    // The whole quota was used.
    assert!(total >= 0.98 * 10.0 * 100.0, "{total}");
}

#[tokio::test(start_paused = true)]
async fn a_capped_tenant_stays_under_its_cap_even_when_the_quota_is_idle() {
    let upstream = Upstream::default();
    let cfg = config()
        .tenant("trial", TenantPolicy::weight(1.0).with_cap(0.25))
        .build()
        .unwrap();
    let client = client(cfg, &upstream);
    let t0 = Instant::now();
    let trial = open_loop(
        client.clone(),
        "trial",
        Priority::Interactive,
        every(0.5),
        t0,
        t0 + Duration::from_secs(600),
    )
    .await;
    // Admissions go on until the last waiter's max_wait: a quarter of the quota per minute
    // until then, plus the cap's first full bucket.
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    let cap = 0.25 * TPM as f64 * (minutes + 1.0);
    println!(
        "trial: {} tokens in {minutes:.2} min, cap {cap}",
        trial.tokens
    );
    assert!(trial.tokens as f64 <= cap, "{}", trial.tokens);
    assert!(trial.tokens as f64 >= 0.95 * 0.25 * TPM as f64 * 10.0);
    // The rest of the quota is there for others at once.
    let t1 = Instant::now();
    let other = client
        .clone()
        .oneshot(request(Some("other"), Priority::Interactive, 50 * TOKENS))
        .await
        .unwrap();
    assert!(other.status().is_success());
    assert_eq!(t1.elapsed(), Duration::ZERO);
    // Nothing of the cap leaked: after a period idle the trial tenant gets a full cap again.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let t2 = Instant::now();
    for _ in 0..25 {
        let r = client
            .clone()
            .oneshot(request(Some("trial"), Priority::Interactive, TOKENS))
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    assert_eq!(t2.elapsed(), Duration::ZERO);
}

/// Interactive and batch requests of one tenant, asking for `interactive` and `batch`
/// shares of the quota for ten minutes.
async fn mixed(interactive: f64, batch: f64) -> (Outcome, Outcome) {
    let upstream = Upstream::default();
    let client = client(config().build().unwrap(), &upstream);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(600);
    let b = tokio::spawn(open_loop(
        client.clone(),
        "t",
        Priority::Batch,
        every(batch),
        t0,
        end,
    ));
    let i = open_loop(
        client,
        "t",
        Priority::Interactive,
        every(interactive),
        t0,
        end,
    )
    .await;
    (i, b.await.unwrap())
}

#[tokio::test(start_paused = true)]
async fn interactive_goes_before_batch() {
    let (mut interactive, mut batch) = mixed(0.6, 1.0).await;
    let (ip99, bp99) = (interactive.p99(), batch.p99());
    println!(
        "interactive {} ok, p99 {ip99:?}; batch {} ok, p99 {bp99:?}, {} timed out",
        interactive.ok, batch.ok, batch.timed_out
    );
    // Interactive asks for less than its three in four and gets all of it, quickly; batch
    // takes the rest and waits.
    assert_eq!(interactive.timed_out, 0);
    assert!(ip99 <= Duration::from_secs(3), "{ip99:?}");
    assert!(bp99 > 10 * ip99, "{bp99:?} vs {ip99:?}");
    let used = (interactive.tokens + batch.tokens) as f64 / (10.0 * TPM as f64);
    assert!(used >= 0.98, "{used}");
}

#[tokio::test(start_paused = true)]
async fn batch_is_slowed_but_never_starved() {
    // Interactive alone asks for one and a half quotas.
    let (interactive, batch) = mixed(1.5, 1.0).await;
    let batch_part = batch.ok as f64 / (batch.ok + interactive.ok) as f64;
    println!("batch got {batch_part:.3} of the admissions");
    assert!(batch_part >= 0.24, "batch got {batch_part:.3}");
    assert!(batch_part <= 0.30, "batch got {batch_part:.3}");
}

#[tokio::test(start_paused = true)]
async fn the_queue_bound_holds_under_ten_thousand_callers_and_shed_requests_never_go_upstream() {
    let upstream = Upstream::default();
    let cfg = config().max_queued(100).build().unwrap();
    let client = client(cfg.clone(), &upstream);
    let waiting = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..10_000)
        .map(|_| {
            let client = client.clone();
            let (waiting, most) = (waiting.clone(), most.clone());
            tokio::spawn(async move {
                let n = waiting.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                let res = client
                    .oneshot(request(None, Priority::Interactive, TOKENS))
                    .await;
                waiting.fetch_sub(1, Ordering::SeqCst);
                res
            })
        })
        .collect();
    let (mut ok, mut shed) = (0u64, 0u64);
    let mut hints = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => match e.downcast_ref::<ThrottleError>() {
                Some(ThrottleError::Overloaded {
                    queued,
                    retry_after,
                    ..
                }) => {
                    assert_eq!(*queued, 100);
                    hints.push(*retry_after);
                    shed += 1;
                }
                other => panic!("unexpected {other:?}"),
            },
        }
    }
    // Tasks run one at a time here: each either passes at once (counted, then uncounted, in
    // one poll), waits (at most 100), or is shed: at most the 100 waiters and the one
    // arriving are counted at once.
    assert!(most.load(Ordering::SeqCst) <= 101, "{most:?}");
    // The first bucket (100 requests) passes, 100 wait, the rest is shed.
    assert_eq!(ok, 200);
    assert_eq!(shed, 9_800);
    assert_eq!(upstream.calls.load(Ordering::Relaxed), ok);
    // The stats and the metrics count them.
    let stats = cfg.stats();
    assert_eq!(stats.keys.len(), 1);
    assert_eq!(stats.keys[0].shed, 9_800);
    assert_eq!(stats.keys[0].admitted, 200);
    assert_eq!(stats.keys[0].queue_depth, 0);
    // The hint is the time the 100 waiters take at 100 requests per minute.
    assert!(
        hints
            .iter()
            .all(|h| h.abs_diff(Duration::from_secs(60)) < Duration::from_millis(1)),
        "{:?}",
        &hints[..3]
    );
}

#[tokio::test(start_paused = true)]
async fn a_capped_tenants_queue_is_bounded_too() {
    let upstream = Upstream::default();
    let cfg = config()
        .max_queued(10)
        .tenant("capped", TenantPolicy::weight(1.0).with_cap(0.1))
        .build()
        .unwrap();
    let client = client(cfg.clone(), &upstream);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .oneshot(request(Some("capped"), Priority::Interactive, TOKENS))
                    .await
            })
        })
        .collect();
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => match e.downcast_ref::<ThrottleError>() {
                Some(ThrottleError::Overloaded {
                    queued,
                    tenant,
                    refused_by,
                    ..
                }) => {
                    assert_eq!(*queued, 1);
                    assert_eq!(tenant.as_ref().map(Tenant::as_str), Some("capped"));
                    assert_eq!(*refused_by, RefusedBy::TenantQueue);
                    let message = e.to_string();
                    assert!(message.contains("tenant capped under its cap"), "{message}");
                    shed += 1;
                }
                other => panic!("unexpected {other:?}"),
            },
        }
    }
    // The cap's bucket (10 requests) passes; max_queued × cap = 1 waits under the cap (as
    // many as the cap admits while the key's full queue of 10 drains); the rest is shed.
    assert_eq!((ok, shed), (11, 89));
    assert_eq!(upstream.calls.load(Ordering::Relaxed), 11);
    assert_eq!(cfg.stats().keys[0].shed, 89);
}

#[tokio::test(start_paused = true)]
async fn backpressure_holds_callers_in_poll_ready_and_loses_none() {
    let upstream = Upstream::default();
    let cfg = config()
        .max_queued(100)
        .overload(Overload::Backpressure)
        .max_wait(Duration::from_secs(3_600))
        .build()
        .unwrap();
    let client = client(cfg, &upstream);
    let waiting = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..10_000)
        .map(|_| {
            let mut client = client.clone();
            let (waiting, most) = (waiting.clone(), most.clone());
            tokio::spawn(async move {
                // Ready: a place among the waiters is ours (or the gate admits at once).
                client.ready().await.unwrap();
                let n = waiting.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                let res = client
                    .call(request(None, Priority::Interactive, TOKENS))
                    .await;
                waiting.fetch_sub(1, Ordering::SeqCst);
                res
            })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert!(r.status().is_success());
    }
    assert!(most.load(Ordering::SeqCst) <= 100, "{most:?}");
    assert_eq!(upstream.calls.load(Ordering::Relaxed), 10_000);
    // All of it at the quota's pace: 100 per minute after the first bucket.
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    assert!((98.0..=100.0).contains(&minutes), "{minutes}");
}

#[tokio::test(start_paused = true)]
async fn the_tenant_header_names_a_tenant() {
    let upstream = Upstream::default();
    let cfg = config()
        .tenant_header("x-tenant")
        .tenant("capped", TenantPolicy::weight(1.0).with_cap(0.1))
        .build()
        .unwrap();
    let client = client(cfg, &upstream);
    let t0 = Instant::now();
    for _ in 0..11 {
        let mut req = request(None, Priority::Interactive, TOKENS);
        req.headers_mut()
            .insert("x-tenant", "capped".parse().unwrap());
        client.clone().oneshot(req).await.unwrap();
    }
    // The 11th request waited for the cap (10 requests' worth per minute).
    let waited = t0.elapsed();
    assert!(
        (Duration::from_secs(6)..Duration::from_millis(6_010)).contains(&waited),
        "{waited:?}"
    );
    assert_eq!(upstream.billed.lock().unwrap()["capped"], 11 * TOKENS);
}

#[test]
fn impossible_tenant_settings_are_refused() {
    let err = |b: ThrottleConfigBuilder| b.build().unwrap_err().to_string();
    assert!(err(config().tenant("a", TenantPolicy::weight(0.0))).contains("weight"));
    assert!(err(config().tenant("a", TenantPolicy::weight(1.0).with_cap(1.5))).contains("cap"));
    assert!(err(config().tenant_header("bad header")).contains("header"));
    assert!(err(config().max_queued(0).overload(Overload::Backpressure)).contains("max_queued"));
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_while_it_waits_for_its_key_gives_its_cap_back() {
    let upstream = Upstream::default();
    let cfg = config()
        .tenant("capped", TenantPolicy::weight(1.0).with_cap(0.5))
        .build()
        .unwrap();
    let client = client(cfg, &upstream);
    // Another tenant takes the whole key.
    let all = request(Some("other"), Priority::Interactive, TPM);
    client.clone().oneshot(all).await.unwrap();
    // Half the quota: the cap admits it at once, the key makes it wait 30 s; it is dropped
    // after 1 s.
    let half = request(Some("capped"), Priority::Interactive, TPM / 2);
    let dropped = tokio::time::timeout(Duration::from_secs(1), client.clone().oneshot(half)).await;
    assert!(dropped.is_err(), "it was still waiting");
    // At 30 s the key has half a quota again; the cap is full only if the dropped request
    // gave its half back (refill alone would give a quarter).
    tokio::time::sleep(Duration::from_secs(29)).await;
    let t = Instant::now();
    let again = request(Some("capped"), Priority::Interactive, TPM / 2);
    client.clone().oneshot(again).await.unwrap();
    assert_eq!(t.elapsed(), Duration::ZERO);
    assert_eq!(upstream.calls.load(Ordering::Relaxed), 2);
}

/// A request that waits past `max_wait` names its tenant and whether its cap or its
/// model's quota had no room.
#[tokio::test(start_paused = true)]
async fn a_timeout_names_the_tenant_and_the_limit_it_waited_for() {
    let upstream = Upstream::default();
    let cfg = config()
        .max_wait(Duration::from_secs(5))
        .tenant("trial", TenantPolicy::weight(1.0).with_cap(0.01))
        .build()
        .unwrap();
    let client = client(cfg, &upstream);
    let refusal = |res: Result<_, BoxError>| {
        let e = res.unwrap_err();
        match e.downcast_ref::<ThrottleError>() {
            Some(ThrottleError::MaxWaitExceeded {
                tenant, refused_by, ..
            }) => (tenant.clone(), *refused_by, e.to_string()),
            other => panic!("unexpected {other:?}"),
        }
    };
    // The cap (1 % of the quota: one request a minute) had no room.
    let trial = || request(Some("trial"), Priority::Interactive, TOKENS);
    client.clone().oneshot(trial()).await.unwrap();
    let (tenant, by, message) = refusal(client.clone().oneshot(trial()).await);
    assert_eq!(tenant, Some(Tenant::new("trial")));
    assert_eq!(by, RefusedBy::TenantCap);
    assert!(message.contains("cap of tenant trial"), "{message}");
    // The model's quota had no room: it is empty, and 10 % of it takes 6 s to refill.
    let whole = request(Some("acme"), Priority::Interactive, TPM);
    client.clone().oneshot(whole).await.unwrap();
    let acme = request(Some("acme"), Priority::Interactive, 10 * TOKENS);
    let (tenant, by, message) = refusal(client.oneshot(acme).await);
    assert_eq!(tenant, Some(Tenant::new("acme")));
    assert_eq!(by, RefusedBy::ModelQuota);
    assert!(message.contains("for tenant acme"), "{message}");
}

/// `stats()` counts per tenant: configured tenants by name, every other tenant together
/// under the default one, so made-up names never add entries.
#[tokio::test(start_paused = true)]
async fn stats_count_admissions_sheds_timeouts_and_waiters_per_tenant() {
    let upstream = Upstream::default();
    let cfg = config()
        .max_queued(1)
        .max_wait(Duration::from_secs(5))
        .tenant("gold", TenantPolicy::weight(3.0))
        .build()
        .unwrap();
    let client = client(cfg.clone(), &upstream);
    // The whole quota at once: the bucket is empty, and 1,000 tokens take 0.6 s to refill.
    let whole = request(Some("gold"), Priority::Interactive, TPM);
    client.clone().oneshot(whole).await.unwrap();
    let send = |tenant: &'static str| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .oneshot(request(Some(tenant), Priority::Interactive, TOKENS))
                .await
        })
    };
    // gold queues; walk-in-a still finds its share of the places; walk-in-b finds the
    // queue at twice its bound and is shed.
    let gold = send("gold");
    tokio::task::yield_now().await;
    let a = send("walk-in-a");
    tokio::task::yield_now().await;
    let b = send("walk-in-b");
    tokio::task::yield_now().await;
    let shed = b.await.unwrap().unwrap_err();
    assert!(matches!(
        shed.downcast_ref::<ThrottleError>(),
        Some(ThrottleError::Overloaded { .. })
    ));
    let stats = cfg.stats();
    let key = &stats.keys[0];
    let names: Vec<_> = key.tenants.iter().map(|t| t.tenant.clone()).collect();
    assert_eq!(names, [Some(Tenant::new("gold")), None]);
    let (g, other) = (key.tenant(Some("gold")).unwrap(), key.tenant(None).unwrap());
    assert_eq!((g.admitted, g.waiting, g.shed), (1, 1, 0));
    assert_eq!((other.admitted, other.waiting, other.shed), (0, 1, 1));
    assert_eq!(key.queue_depth, 2);

    gold.await.unwrap().unwrap();
    a.await.unwrap().unwrap();
    // Now a request the quota cannot refill within max_wait.
    let too_big = request(Some("gold"), Priority::Interactive, TPM);
    let timed_out = client.clone().oneshot(too_big).await.unwrap_err();
    assert!(matches!(
        timed_out.downcast_ref::<ThrottleError>(),
        Some(ThrottleError::MaxWaitExceeded { .. })
    ));

    let stats = cfg.stats();
    let key = &stats.keys[0];
    let g = key.tenant(Some("gold")).unwrap();
    assert_eq!((g.admitted, g.shed, g.timed_out, g.waiting), (2, 0, 1, 0));
    assert_eq!(
        (g.tokens_reserved, g.tokens_settled),
        (TPM + TOKENS, TPM + TOKENS)
    );
    let other = key.tenant(None).unwrap();
    assert_eq!((other.admitted, other.shed, other.timed_out), (1, 1, 0));
    assert_eq!(
        (other.tokens_reserved, other.tokens_settled),
        (TOKENS, TOKENS)
    );
    // The tenants add up to the key.
    let sum = |f: fn(&bedrock_throttle::TenantStats) -> u64| key.tenants.iter().map(f).sum::<u64>();
    assert_eq!(sum(|t| t.admitted), key.admitted);
    assert_eq!(sum(|t| t.shed), key.shed);
    assert_eq!(sum(|t| t.tokens_reserved), key.tokens_reserved);
    assert_eq!(
        key.tenants.len(),
        2,
        "walk-ins fold into the default tenant"
    );

    // The Display: a table of keys, then one of their tenants.
    let text = stats.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let fields = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        fields(lines[0]),
        "key quota TPM effective TPM tokens now waiting admitted waited shed timed out throttled retried reserved settled calibration"
            .split(' ')
            .collect::<Vec<_>>()
    );
    let row = fields(lines[1]);
    assert_eq!(
        row[..5],
        ["m", "in", "us-east-1", "100,000", "100,000"],
        "quota and effective TPM, then the tokens the bucket holds now"
    );
    assert_eq!(
        row[6..15],
        ["0", "3", "3", "1", "1", "0", "0", "102,000", "102,000"],
        "{text}"
    );
    assert_eq!(
        lines[3..],
        [
            "key             tenant     waiting  admitted  shed  timed out  reserved  settled",
            "m in us-east-1  gold             0         2     0          1   101,000  101,000",
            "m in us-east-1  (default)        0         1     1          0     1,000    1,000",
        ],
        "{text}"
    );
    // A key's own Display is its row and its tenants'.
    assert_eq!(key.to_string(), text);

    // For a /debug endpoint: the same numbers as JSON, and the capacity report's.
    #[cfg(feature = "serde")]
    {
        let json = serde_json::to_value(&stats).unwrap();
        let k = &json["keys"][0];
        assert_eq!(k["key"]["model"], "m");
        assert_eq!(k["key"]["region"], "us-east-1");
        assert_eq!(k["quota"]["tokens"], TPM);
        assert_eq!(k["quota"]["period_seconds"], 60.0);
        assert_eq!(
            (k["admitted"].as_u64(), k["shed"].as_u64()),
            (Some(3), Some(1))
        );
        let tenants = k["tenants"].as_array().unwrap();
        assert_eq!(tenants.len(), 2);
        assert_eq!(tenants[0]["tenant"], "gold");
        assert_eq!(tenants[0]["timed_out"], 1);
        assert_eq!(tenants[0]["tokens_settled"], TPM + TOKENS);
        assert!(tenants[1]["tenant"].is_null(), "the default tenant");
        assert_eq!(tenants[1]["shed"], 1);

        let report = serde_json::to_value(cfg.capacity_report()).unwrap();
        let row = &report["rows"][0];
        assert_eq!(row["key"]["model"], "m");
        assert_eq!(row["quota"]["tokens"], TPM);
        // Five requests asked for 203,000 tokens in the minute; 102,000 were granted.
        assert_eq!(row["binding"], "tokens", "{row}");
        assert_eq!(row["demand"]["peak_tokens"], 203_000);
        assert_eq!(row["granted"]["peak_tokens"], 102_000);
        assert_eq!(row["recommended_tpm"], 250_000);
        assert!(row["recommended_rpm"].is_null());
    }
}
