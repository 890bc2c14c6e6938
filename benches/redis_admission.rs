//! What an admission costs through the Redis ledger on loopback, against the in-process
//! ledger.
//!
//! `cargo bench --all-features --bench redis_admission -- --warm-up-time 1 --measurement-time 3`
//!
//! Starts its own `redis-server` (from PATH, persistence off) on a free port, or uses
//! `BEDROCK_THROTTLE_REDIS_URL`; without either it prints a message and measures nothing.
//!
//! - `per_request/in_process`: one InvokeModel call and its body through
//!   `BedrockThrottleLayer` over the zero-latency Bedrock mock of the tests, a quota that
//!   never binds, the in-process ledger only (as the `overhead` bench).
//! - `per_request/redis`: the same with a `RedisLedger`: the reserve script before the
//!   call, the settle script after it (sent without waiting for its answer).
//! - `per_request/redis_cluster`: the same with `RedisLedger::cluster` on a local Redis
//!   Cluster of three primaries with a replica each, which it creates (as the tests do,
//!   see `tests/common/cluster.rs`); skipped with a message without redis-server.
//! - `script/reserve_settle`: the two scripts alone, one after the other.
//!
//! Before measuring it counts Redis round trips per admission from `INFO commandstats`.

#[path = "../tests/common/mod.rs"]
mod common;

#[path = "../tests/common/cluster.rs"]
mod cluster;

use std::{
    hint::black_box,
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use cluster::RedisCluster;

use bedrock_throttle::{
    Ask, BedrockThrottleLayer, Grant, Ledger, Limits, Quota, QuotaKey, RedisLedger, ThrottleConfig,
};
use bytes::Bytes;
use common::{invoke, MockBedrock, SONNET_4};
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};

const TOKENS: u64 = 10_000_000_000;

struct Server(Option<Child>, String);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn server() -> Option<Server> {
    if let Ok(url) = std::env::var("BEDROCK_THROTTLE_REDIS_URL") {
        return Some(Server(None, url));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let s = Server(Some(child), format!("redis://127.0.0.1:{port}/"));
    let client = redis::Client::open(s.1.as_str()).ok()?;
    for _ in 0..500 {
        if let Ok(mut c) = client.get_connection() {
            if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                return Some(s);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn mock() -> MockBedrock {
    let mut m = MockBedrock::new(None, u64::MAX / 4);
    m.base_latency = Duration::ZERO;
    m.per_token = Duration::ZERO;
    m
}

fn ledger(l: RedisLedger) -> RedisLedger {
    l.prefix(format!("bench-{:x}", fastrand::u64(..)))
}

fn config(ledger: Option<RedisLedger>) -> ThrottleConfig {
    let b = ThrottleConfig::builder().model_quota(SONNET_4, Quota::new(None, TOKENS));
    match ledger {
        Some(l) => b.ledger(l).build().unwrap(),
        None => b.build().unwrap(),
    }
}

fn requests(n: u64) -> Vec<Request<Full<Bytes>>> {
    (0..n)
        .map(|_| invoke(SONNET_4, "Summarise the quota rules in one line.", 256))
        .collect()
}

fn run<S, B>(rt: &tokio::runtime::Runtime, svc: &mut S, reqs: Vec<Request<Full<Bytes>>>) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for req in reqs {
            let resp = svc.ready().await.unwrap().call(req).await.unwrap();
            black_box(resp.into_body().collect().await.unwrap());
        }
        start.elapsed()
    })
}

/// Script calls the server has answered so far (EVALSHA, EVAL, SCRIPT).
fn script_calls(url: &str) -> u64 {
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .unwrap();
    info.lines()
        .filter(|l| {
            l.starts_with("cmdstat_evalsha:")
                || l.starts_with("cmdstat_eval:")
                || l.starts_with("cmdstat_script")
        })
        .filter_map(|l| {
            let calls = l.split("calls=").nth(1)?;
            calls.split(',').next()?.parse::<u64>().ok()
        })
        .sum()
}

fn bench(c: &mut Criterion) {
    let Some(server) = server() else {
        println!(
            "redis_admission: skipped, no redis-server on PATH and no BEDROCK_THROTTLE_REDIS_URL"
        );
        return;
    };
    let url = server.1.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Round trips per admission.
    let mut svc = BedrockThrottleLayer::new(config(Some(ledger(RedisLedger::open(&url).unwrap()))))
        .layer(mock());
    run(&rt, &mut svc, requests(10)); // connect, load the scripts
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    let before = script_calls(&url);
    let n = 1_000;
    run(&rt, &mut svc, requests(n));
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await }); // the last settles
    let after = script_calls(&url);
    println!(
        "redis_admission: {:.2} script round trips per request ({} for {n} requests)",
        (after - before) as f64 / n as f64,
        after - before
    );

    // The cluster: the same admissions through the cluster client.
    let cluster = match RedisCluster::start() {
        Ok(c) => Some(c),
        Err(why) => {
            println!("redis_admission: no cluster row, {why}");
            None
        }
    };
    if let Some(cluster) = &cluster {
        let l = ledger(RedisLedger::cluster(cluster.urls()).unwrap());
        let mut svc = BedrockThrottleLayer::new(config(Some(l))).layer(mock());
        run(&rt, &mut svc, requests(10));
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
        let calls = || -> u64 { (0..6).map(|i| cluster.script_calls(i)).sum() };
        let before = calls();
        run(&rt, &mut svc, requests(n));
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
        println!(
            "redis_admission: {:.2} script round trips per request on the cluster",
            (calls() - before) as f64 / n as f64
        );
    }

    let mut g = c.benchmark_group("per_request");
    let mut rows = vec![
        ("in_process", None),
        ("redis", Some(RedisLedger::open(&url).unwrap())),
    ];
    if let Some(cluster) = &cluster {
        rows.push((
            "redis_cluster",
            Some(RedisLedger::cluster(cluster.urls()).unwrap()),
        ));
    }
    for (name, l) in rows {
        let mut svc = BedrockThrottleLayer::new(config(l.map(ledger))).layer(mock());
        run(&rt, &mut svc, requests(10));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| run(&rt, &mut svc, requests(iters)))
        });
    }
    g.finish();

    let ledger = RedisLedger::open(&url)
        .unwrap()
        .prefix(format!("bench-{:x}", fastrand::u64(..)));
    let limits = Limits {
        tokens: TOKENS,
        requests: None,
        period: Duration::from_secs(60),
        headroom: Duration::ZERO,
    };
    let mut hold = 0u64;
    c.bench_function("script/reserve_settle", |b| {
        b.iter(|| {
            hold += 1;
            rt.block_on(async {
                let ask = Ask {
                    key: QuotaKey::new(Some(SONNET_4), None),
                    tokens: 1_000,
                    limits,
                    client: 1,
                    hold,
                    start_level: 1.0,
                    alone: None,
                };
                match ledger.reserve(ask).await.unwrap() {
                    Grant::Reserved(h) => ledger.settle(h, 500).await.unwrap(),
                    Grant::FitsIn(d) => panic!("a quota that never binds waits {d:?}"),
                }
            })
        })
    });
    drop(cluster);
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
