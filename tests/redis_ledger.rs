//! The Redis ledger against a real `redis-server`: its scripts' arithmetic, four
//! independent clients sharing one quota over real HTTP to the emulator, and Redis killed
//! and restarted mid-run under both outage policies.
//!
//! The tests start their own `redis-server` (from PATH) on a free port, with persistence
//! off; the script tests may use `BEDROCK_THROTTLE_REDIS_URL` instead. With neither, they
//! fail: CI installs redis-server. Redis keeps time with its own clock, so these tests run
//! in real time, with a short quota period.

#![cfg(all(feature = "redis", feature = "emulator"))]

#[path = "common/ledger_clients.rs"]
mod ledger_clients;

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bedrock_throttle::{
    Alone, Ask, Grant, Hold, Ledger, Limits, OutagePolicy, Quota, QuotaKey, RedisLedger,
    ThrottleConfig,
};
use ledger_clients::{
    client, emulator, run, stack, Outcome, FIRST_TOKEN, PERIOD, PER_OUTPUT_TOKEN, RPM, SONNET_4,
    TPM,
};

/// A `redis-server` this test started, killed when dropped.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

fn redis_binary() -> String {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "redis-server is not on PATH: these tests need a real Redis (scripts/test installs it, or set BEDROCK_THROTTLE_REDIS_URL)"
    );
    "redis-server".into()
}

impl RedisServer {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = Self { port, child: None };
        s.restart();
        s
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server (again) on its port and waits until it answers.
    fn restart(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(redis_binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        for _ in 0..500 {
            if let Ok(mut c) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server on port {} did not come up", self.port);
    }

    fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A server to talk to: the environment's, or one of our own.
fn redis_url() -> (String, Option<RedisServer>) {
    if let Ok(url) = std::env::var("BEDROCK_THROTTLE_REDIS_URL") {
        return (url, None);
    }
    let s = RedisServer::start();
    (s.url(), Some(s))
}

fn prefix() -> String {
    format!("bt-test-{:x}", fastrand::u64(..))
}

// ---------------------------------------------------------------------------------------
// The scripts' arithmetic, through the trait.

const HOUR: Duration = Duration::from_secs(3600);

fn limits() -> Limits {
    // An hour's period: the refill during a test is a few tokens at most.
    Limits {
        tokens: 36_000,
        requests: Some(3_600),
        period: HOUR,
        headroom: Duration::ZERO,
    }
}

fn ask(client: u64, hold: u64, tokens: u64) -> Ask {
    Ask {
        key: QuotaKey::new(Some("m"), Some("r")),
        tokens,
        limits: limits(),
        client,
        hold,
        start_level: 1.0,
        alone: None,
    }
}

async fn reserve(l: &RedisLedger, a: Ask) -> Grant {
    l.reserve(a).await.unwrap()
}

fn fits_in(g: Grant) -> Duration {
    match g {
        Grant::FitsIn(d) => d,
        Grant::Reserved(h) => panic!("reserved {h:?}"),
    }
}

fn held(g: Grant) -> Hold {
    match g {
        Grant::Reserved(h) => h,
        Grant::FitsIn(d) => panic!("fits in {d:?}"),
    }
}

/// `want` within the refill of `slack` at 10 tokens/s.
fn about(got: Duration, want: Duration, slack: Duration) {
    assert!(
        got <= want && got + slack >= want,
        "{got:?}, expected {want:?} less up to {slack:?}"
    );
}

#[tokio::test]
async fn reserve_takes_both_limits_and_answers_the_refill_time() {
    let (url, _server) = redis_url();
    let l = RedisLedger::open(&url).unwrap().prefix(prefix());
    let _h = held(reserve(&l, ask(1, 0, 30_000)).await);
    // 6 000 left at 10 tokens/s: 10 000 more fit after 400 s (less what refilled already).
    let wait = fits_in(reserve(&l, ask(1, 1, 10_000)).await);
    about(wait, Duration::from_secs(400), Duration::from_secs(5));
    // A request larger than the whole quota waits for a full bucket.
    let wait = fits_in(reserve(&l, ask(1, 2, 50_000)).await);
    about(wait, Duration::from_secs(3_000), Duration::from_secs(5));

    // The request limit counts too: 1 per second, capacity 3 600.
    let rl = Limits {
        tokens: 1_000_000,
        requests: Some(2),
        period: HOUR,
        headroom: Duration::ZERO,
    };
    let k = QuotaKey::new(Some("rpm"), None);
    for i in 0..2 {
        let a = Ask {
            key: k.clone(),
            tokens: 1,
            limits: rl,
            client: 1,
            hold: 10 + i,
            start_level: 1.0,
            alone: None,
        };
        held(reserve(&l, a).await);
    }
    let a = Ask {
        key: k,
        tokens: 1,
        limits: rl,
        client: 1,
        hold: 20,
        start_level: 1.0,
        alone: None,
    };
    about(
        fits_in(reserve(&l, a).await),
        Duration::from_secs(1_800),
        Duration::from_secs(5),
    );
}

#[tokio::test]
async fn settle_gives_back_the_difference_once() {
    let (url, _server) = redis_url();
    let l = RedisLedger::open(&url).unwrap().prefix(prefix());
    let h = held(reserve(&l, ask(1, 0, 36_000)).await);
    fits_in(reserve(&l, ask(1, 1, 20_000)).await);
    l.settle(h.clone(), 10_000).await.unwrap();
    // 26 000 back: 20 000 fit now.
    let h2 = held(reserve(&l, ask(1, 1, 20_000)).await);
    // Settling the first hold again gives nothing back.
    l.settle(h, 0).await.unwrap();
    let wait = fits_in(reserve(&l, ask(1, 2, 10_000)).await);
    about(wait, Duration::from_secs(400), Duration::from_secs(5));
    // A charge above the reservation is debt: 6 000 + 10 000 more, so 10 000 wait 1 000 s more.
    l.settle(h2, 30_000).await.unwrap();
    let wait = fits_in(reserve(&l, ask(1, 2, 10_000)).await);
    about(wait, Duration::from_secs(1_400), Duration::from_secs(5));
}

#[tokio::test]
async fn an_expired_hold_keeps_its_charge() {
    let (url, _server) = redis_url();
    let l = RedisLedger::open(&url)
        .unwrap()
        .prefix(prefix())
        .hold_ttl(Duration::from_millis(200));
    let h = held(reserve(&l, ask(1, 0, 36_000)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    l.settle(h, 0).await.unwrap();
    let wait = fits_in(reserve(&l, ask(1, 1, 10_000)).await);
    about(wait, Duration::from_secs(1_000), Duration::from_secs(5));
}

#[tokio::test]
async fn a_key_the_ledger_lost_starts_at_the_asked_level_and_each_spell_alone_is_taken_once() {
    let (url, _server) = redis_url();
    let l = RedisLedger::open(&url).unwrap().prefix(prefix());
    // A key a client spent from a quarter of a period ago comes back a quarter full.
    let mut a = ask(1, 0, 9_000);
    a.start_level = 0.25;
    held(reserve(&l, a).await);
    about(
        fits_in(reserve(&l, ask(1, 1, 1_000)).await),
        Duration::from_secs(100),
        Duration::from_secs(5),
    );
    // A client back from an outage in which it admitted 2 000 tokens on its own: they
    // come off the bucket, even though the answer is "not now" (3 000 short: 300 s).
    let alone = |spell, tokens| {
        Some(Alone {
            spell,
            tokens,
            requests: 1,
        })
    };
    let mut back = ask(2, 2, 1_000);
    back.alone = alone(1, 2_000);
    about(
        fits_in(reserve(&l, back).await),
        Duration::from_secs(300),
        Duration::from_secs(5),
    );
    // The same spell told again (another waiter of that client) is not taken twice ...
    let mut again = ask(2, 3, 1_000);
    again.alone = alone(1, 2_500);
    about(
        fits_in(reserve(&l, again).await),
        Duration::from_secs(300),
        Duration::from_secs(5),
    );
    // ... another client's spell is taken, and so is the first client's next spell.
    let mut other = ask(3, 0, 1_000);
    other.alone = alone(1, 1_000);
    about(
        fits_in(reserve(&l, other).await),
        Duration::from_secs(400),
        Duration::from_secs(5),
    );
    let mut next = ask(2, 4, 1_000);
    next.alone = alone(2, 1_000);
    about(
        fits_in(reserve(&l, next).await),
        Duration::from_secs(500),
        Duration::from_secs(5),
    );
}

#[tokio::test]
async fn after_lost_state_an_old_hold_gives_nothing_back() {
    // What a Redis restart without persistence does to a key: its state is gone.
    let (url, _server) = redis_url();
    let p = prefix();
    let l = RedisLedger::open(&url).unwrap().prefix(p.clone());
    let old = held(reserve(&l, ask(1, 0, 36_000)).await);
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{p}:*"))
        .query(&mut c)
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let _: i64 = redis::cmd("DEL").arg(&keys).query(&mut c).unwrap();
    // The bucket starts full again (at most one period more than upstream allows) ...
    held(reserve(&l, ask(1, 1, 36_000)).await);
    // ... and the hold made before is not refunded on top of it.
    l.settle(old, 0).await.unwrap();
    let wait = fits_in(reserve(&l, ask(1, 2, 10_000)).await);
    about(wait, Duration::from_secs(1_000), Duration::from_secs(5));
}

#[tokio::test]
async fn clients_take_turns_in_the_order_they_began_waiting() {
    let (url, _server) = redis_url();
    let l = RedisLedger::open(&url).unwrap().prefix(prefix());
    let lim = Limits {
        tokens: 1_000,
        requests: None,
        period: Duration::from_secs(10),
        headroom: Duration::ZERO,
    };
    let a = |client, hold, tokens| Ask {
        key: QuotaKey::new(Some("turns"), None),
        tokens,
        limits: lim,
        client,
        hold,
        start_level: 1.0,
        alone: None,
    };
    held(reserve(&l, a(1, 0, 1_000)).await);
    // Client 2 waits for 500 tokens (5 s); client 3, asking later for 10, waits behind it
    // although 10 tokens refill in 0.1 s.
    let w2 = fits_in(reserve(&l, a(2, 0, 500)).await);
    about(w2, Duration::from_secs(5), Duration::from_millis(500));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let w3 = fits_in(reserve(&l, a(3, 0, 10)).await);
    assert!(
        w3 > Duration::from_secs(4),
        "client 3 waits behind 2: {w3:?}"
    );
    // Client 3 asks again and again; only client 2 is served when there is room, then 3.
    let mut order = Vec::new();
    let start = Instant::now();
    while order.len() < 2 && start.elapsed() < Duration::from_secs(20) {
        for c in [3, 2] {
            if !order.contains(&c) {
                if let Grant::Reserved(_) =
                    reserve(&l, a(c, 1, if c == 2 { 500 } else { 10 })).await
                {
                    order.push(c);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(order, vec![2, 3]);
}

#[tokio::test]
async fn the_keys_of_a_model_share_one_hash_tag_and_expire() {
    let (url, _server) = redis_url();
    let p = prefix();
    let l = RedisLedger::open(&url).unwrap().prefix(p.clone());
    let lim = Limits {
        tokens: 1_000,
        requests: Some(10),
        period: Duration::from_secs(10),
        headroom: Duration::ZERO,
    };
    let key = QuotaKey::new(Some("anthropic.claude{x}"), Some("us-east-1"));
    let mk = |hold, tokens| Ask {
        key: key.clone(),
        tokens,
        limits: lim,
        client: 9,
        hold,
        start_level: 1.0,
        alone: None,
    };
    held(reserve(&l, mk(0, 1_000)).await);
    fits_in(reserve(&l, mk(1, 10)).await);
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{p}:*"))
        .query(&mut c)
        .unwrap();
    keys.sort();
    // Braces would end the hash tag early: they are percent-encoded (never mapped to a
    // character another model id could have).
    let tag = format!("{{{p}:anthropic.claude%7Bx%7D:us-east-1}}");
    assert_eq!(
        keys,
        vec![format!("{tag}:b"), format!("{tag}:h"), format!("{tag}:q")]
    );
    for k in &keys {
        let ttl: i64 = redis::cmd("PTTL").arg(k).query(&mut c).unwrap();
        assert!(ttl > 0 && ttl <= 610_000, "{k}: {ttl}");
    }
}

fn connections_received(url: &str) -> u64 {
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO").arg("stats").query(&mut c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_primary_demoted_under_the_connection_makes_the_ledger_connect_again() {
    // A failover behind a primary endpoint: the old primary becomes a replica and keeps
    // its clients' connections, answering READONLY; only a new connection (which resolves
    // the endpoint's name again) can reach the new primary.
    let a = RedisServer::start();
    let b = RedisServer::start();
    let l = RedisLedger::open(&a.url()).unwrap().prefix(prefix());
    held(reserve(&l, ask(1, 0, 1_000)).await);
    let mut admin = redis::Client::open(a.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: String = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(b.port)
        .query(&mut admin)
        .unwrap();
    let err = l.reserve(ask(1, 1, 1_000)).await.unwrap_err();
    assert!(err.to_string().contains("read only replica"), "{err}");
    let _: String = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut admin)
        .unwrap();
    // Each count opens a connection of its own; the ledger's next call opens one more.
    let before = connections_received(&a.url());
    held(reserve(&l, ask(1, 2, 1_000)).await);
    let after = connections_received(&a.url());
    assert_eq!(after, before + 2, "the ledger did not connect again");
}

// ---------------------------------------------------------------------------------------
// Clients over HTTP against the emulator, in real time.

/// The runs against the emulator measure in real time: one at a time, so they do not
/// compete for the CPU with each other.
static REAL_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    REAL_TIME.lock().await
}

/// One client's own connection to the Redis at `url`, under `prefix`.
fn ledger(url: &str, prefix: &str) -> RedisLedger {
    RedisLedger::open(url)
        .unwrap()
        .prefix(prefix)
        .timeout(Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_clients_share_one_quota_without_throttles() {
    let _one = one_at_a_time().await;
    let (url, _server) = redis_url();
    let emu = emulator().await;
    let p = prefix();
    let clients: Vec<_> = (0..4)
        .map(|_| client(ledger(&url, &p), OutagePolicy::FailClosed))
        .collect();
    let start = Instant::now();
    // 4 clients × 6 callers × 12 requests, about 4 periods of the quota's work.
    let outcomes = run(clients, &emu.endpoint_url(), 6, 12).await;
    let wall = start.elapsed();
    // No client starves: each finished at least 10 % of the requests completed in the
    // first half of the run (a fair share is 25 %).
    let half = start + wall / 2;
    let mut early = [0usize; 4];
    for (n, o) in &outcomes {
        if let Outcome::Ok { done } = o {
            if *done < half {
                early[*n] += 1;
            }
        }
    }
    let early_total: usize = early.iter().sum();
    println!("completed in the first half, by client: {early:?}");
    assert!(
        early.iter().all(|&e| e * 10 >= early_total),
        "a client starved: {early:?}"
    );
    let outcomes: Vec<Outcome> = outcomes.into_iter().map(|(_, o)| o).collect();

    let stats = emu.stats().total();
    let ok = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Ok { .. }))
        .count();
    assert_eq!(ok, outcomes.len(), "every request succeeds: {outcomes:?}");
    let throttles = stats.throttled_rpm + stats.throttled_tpm;
    // The ideal as in the load demo: the work billed beyond the first (full) period pushed
    // through the quota back to back, plus the shortest a request can take.
    let rate = TPM as f64 / PERIOD.as_secs_f64();
    let rpm_rate = RPM as f64 / PERIOD.as_secs_f64();
    let by_tokens = stats.tokens_billed.saturating_sub(TPM) as f64 / rate;
    let by_requests = stats.settled.saturating_sub(RPM) as f64 / rpm_rate;
    let shortest = FIRST_TOKEN + PER_OUTPUT_TOKEN * 20;
    let ideal = by_tokens.max(by_requests) + shortest.as_secs_f64();
    let goodput = ideal / wall.as_secs_f64();
    println!(
        "attempts {} throttled {throttles} ({:.2} %) billed {} settled {} wall {wall:?} ideal {ideal:.2} s goodput {:.1} %",
        stats.requests,
        100.0 * throttles as f64 / stats.requests as f64,
        stats.tokens_billed,
        stats.settled,
        100.0 * goodput
    );
    assert!(
        throttles as f64 <= 0.005 * stats.requests as f64,
        "{throttles} throttles of {} attempts",
        stats.requests
    );
    assert!(goodput >= 0.95, "goodput {:.1} %", 100.0 * goodput);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_clients_without_the_shared_ledger_are_throttled() {
    let _one = one_at_a_time().await;
    // The control: the same clients, each with its own in-process budget only.
    let emu = emulator().await;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let cfg = ThrottleConfig::builder()
                .model_quota(SONNET_4, Quota::new(RPM as u32, TPM).with_period(PERIOD))
                .base_delay(Duration::from_millis(100))
                .max_delay(Duration::from_secs(2))
                .build()
                .unwrap();
            stack(cfg)
        })
        .collect();
    let outcomes = run(clients, &emu.endpoint_url(), 6, 4).await;
    let stats = emu.stats().total();
    let throttles = stats.throttled_rpm + stats.throttled_tpm;
    println!(
        "{} requests, {} attempts, {throttles} throttled",
        outcomes.len(),
        stats.requests
    );
    assert!(
        throttles as f64 > 0.005 * stats.requests as f64,
        "{throttles} throttles of {}",
        stats.requests
    );
}

/// Runs two clients with `policy`, kills Redis after 4 s and restarts it 3 s later.
async fn outage(policy: OutagePolicy) -> (Vec<Outcome>, Instant, Instant, RedisServer) {
    let _one = one_at_a_time().await;
    let mut server = RedisServer::start();
    let url = server.url();
    let emu = emulator().await;
    let p = prefix();
    let clients: Vec<_> = (0..2).map(|_| client(ledger(&url, &p), policy)).collect();
    let base = emu.endpoint_url();
    let start = Instant::now();
    let work = tokio::spawn(async move { run(clients, &base, 4, 16).await });
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Taken before the kill: requests in flight fail as soon as the signal lands, which
    // can be before `kill` has reaped the process and returned.
    let killed = Instant::now();
    server.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.restart();
    let restarted = Instant::now();
    let outcomes = work.await.unwrap().into_iter().map(|(_, o)| o).collect();
    println!(
        "{policy:?}: killed at {:?}, restarted at {:?}, done at {:?}; emulator {:?}",
        killed - start,
        restarted - start,
        start.elapsed(),
        emu.stats().total()
    );
    (outcomes, killed, restarted, server)
}

fn redis_keys(server: &RedisServer) -> usize {
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_fails_open_to_a_share_of_the_quota_and_resumes() {
    let (outcomes, killed, restarted, server) = outage(OutagePolicy::FailOpen { share: 0.5 }).await;
    assert_eq!(outcomes.len(), 2 * 4 * 16);
    // No request lost: every one succeeded, also those admitted while Redis was down.
    let done: Vec<Instant> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Ok { done } => *done,
            other => panic!("{other:?}"),
        })
        .collect();
    let during = done
        .iter()
        .filter(|&&d| d > killed + Duration::from_millis(500) && d < restarted)
        .count();
    let after = done
        .iter()
        .filter(|&&d| d > restarted + Duration::from_millis(500))
        .count();
    println!("completed while down: {during}, after the restart: {after}");
    assert!(
        during > 0,
        "the fallback admitted requests while Redis was down"
    );
    assert!(after > 0, "work went on after the restart");
    // And the ledger is back in Redis.
    assert!(
        redis_keys(&server) > 0,
        "the gates resumed spending from Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_fails_closed_with_a_typed_error_and_resumes() {
    let (outcomes, killed, restarted, server) = outage(OutagePolicy::FailClosed).await;
    assert_eq!(outcomes.len(), 2 * 4 * 16);
    let mut unavailable = 0;
    let mut ok_after = 0;
    for o in &outcomes {
        match o {
            Outcome::Ok { done } => {
                if *done > restarted + Duration::from_millis(500) {
                    ok_after += 1;
                }
            }
            Outcome::Unavailable { done } => {
                assert!(*done >= killed, "failed before the outage");
                unavailable += 1;
            }
            other => panic!("neither a response nor the outage error: {other:?}"),
        }
    }
    println!("failed closed: {unavailable}, succeeded after the restart: {ok_after}");
    assert!(
        unavailable > 0,
        "requests failed closed while Redis was down"
    );
    assert!(ok_after > 0, "the gates resumed after the restart");
    assert!(
        redis_keys(&server) > 0,
        "the gates resumed spending from Redis"
    );
}
