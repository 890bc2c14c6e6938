//! The Redis ledger on a real Redis Cluster that each test creates (three primaries with a
//! replica each, see `common/cluster.rs`): the scripts on every primary, two processes
//! sharing one quota, and the primary that owns a key's slot killed mid-run under both
//! outage policies, or hung (SIGSTOP), until its replica takes over.
//!
//! Without `redis-server` on PATH the tests print why and pass; `scripts/test` installs it.
//! Redis keeps time with its own clock, so these tests run in real time; their bounds are
//! generous, for a busy machine.

#![cfg(all(feature = "redis", feature = "emulator"))]

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/ledger_clients.rs"]
mod ledger_clients;

use std::time::{Duration, Instant};

use bedrock_throttle::{Ask, Grant, Hold, Ledger, Limits, OutagePolicy, QuotaKey, RedisLedger};
use cluster::RedisCluster;
use ledger_clients::{client, emulator, run, Outcome};

/// Each test starts six servers: one test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start_cluster() -> Option<RedisCluster> {
    match tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap()
    {
        Ok(c) => Some(c),
        Err(why) => {
            println!("skipped: {why}; scripts/test installs redis-server");
            None
        }
    }
}

fn prefix() -> String {
    format!("bt-test-{:x}", fastrand::u64(..))
}

/// The name of a quota key's bucket hash: `{<prefix>:<model>:<region>}:b`.
fn bucket_name(prefix: &str, model: &str) -> String {
    format!("{{{prefix}:{model}:}}:b")
}

/// A model (with no region) whose keys live on primary `node`.
fn model_on(cluster: &RedisCluster, prefix: &str, node: usize) -> String {
    (0..10_000)
        .map(|i| format!("model-{i}"))
        .find(|m| cluster.owner(cluster.slot(&bucket_name(prefix, m))) == node)
        .expect("a model on every primary")
}

const HOUR: Duration = Duration::from_secs(3600);

/// 36 000 tokens an hour (10 a second): the refill during a test is small.
fn hourly() -> Limits {
    Limits {
        tokens: 36_000,
        requests: None,
        period: HOUR,
        headroom: Duration::ZERO,
    }
}

fn ask(model: &str, client: u64, hold: u64, tokens: u64) -> Ask {
    Ask::new(
        QuotaKey::new(Some(model), None),
        tokens,
        hourly(),
        client,
        hold,
    )
}

async fn held(l: &RedisLedger, a: Ask) -> Hold {
    match l.reserve(a).await.unwrap() {
        Grant::Reserved(h) => h,
        Grant::FitsIn(d) => panic!("fits in {d:?}"),
    }
}

async fn fits_in(l: &RedisLedger, a: Ask) -> Duration {
    match l.reserve(a).await.unwrap() {
        Grant::FitsIn(d) => d,
        Grant::Reserved(h) => panic!("reserved {h:?}"),
    }
}

/// `want`, less up to `slack` of refill.
fn about(got: Duration, want: Duration, slack: Duration) {
    assert!(
        got <= want && got + slack >= want,
        "{got:?}, expected {want:?} less up to {slack:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripts_run_on_the_primary_that_owns_each_key() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(cluster) = start_cluster().await else {
        return;
    };
    let p = prefix();
    let l = RedisLedger::cluster(cluster.urls()).unwrap().prefix(&p);
    for node in cluster.primaries() {
        let model = model_on(&cluster, &p, node);
        let h = held(&l, ask(&model, 1, 0, 30_000)).await;
        // 6 000 left at 10 tokens/s: 10 000 more fit after 400 s.
        let wait = fits_in(&l, ask(&model, 1, 1, 10_000)).await;
        about(wait, Duration::from_secs(400), Duration::from_secs(10));
        // Settled at 10 000: 20 000 back, once.
        l.settle(h.clone(), 10_000).await.unwrap();
        held(&l, ask(&model, 1, 1, 20_000)).await;
        l.settle(h, 0).await.unwrap();
        let wait = fits_in(&l, ask(&model, 1, 2, 10_000)).await;
        about(wait, Duration::from_secs(400), Duration::from_secs(10));
        // All three names are on that primary, in one slot.
        let b = bucket_name(&p, &model);
        let names = [b.clone(), b.replace("}:b", "}:h"), b.replace("}:b", "}:q")];
        let slots: Vec<u16> = names.iter().map(|n| cluster.slot(n)).collect();
        assert!(slots.iter().all(|&s| s == slots[0]), "{names:?}: {slots:?}");
        let here: usize = redis::cmd("EXISTS")
            .arg(&names)
            .query(&mut cluster.node(node))
            .unwrap();
        assert_eq!(here, 3, "{names:?} on node {node}");
    }
}

// ---------------------------------------------------------------------------------------
// Two processes.

/// The environment variable that makes [`worker_process`] a worker: node URLs, a prefix
/// and a model, separated by spaces.
const WORKER: &str = "BEDROCK_THROTTLE_CLUSTER_WORKER";

/// The entry point of the worker processes that
/// `two_processes_share_one_quota_on_the_cluster` spawns (ignored otherwise): 30 asks
/// for 1 000 tokens of an hourly quota of 36 000, printing how many were reserved.
#[tokio::test]
#[ignore = "the entry point of the worker processes that a cluster test spawns"]
async fn worker_process() {
    let args = std::env::var(WORKER).expect("started as a worker");
    let mut args: Vec<&str> = args.split(' ').collect();
    let model = args.pop().unwrap();
    let prefix = args.pop().unwrap();
    let l = RedisLedger::cluster(args).unwrap().prefix(prefix);
    let client = fastrand::u64(..);
    let mut granted = 0;
    for hold in 0..30 {
        if let Grant::Reserved(_) = l.reserve(ask(model, client, hold, 1_000)).await.unwrap() {
            granted += 1;
        }
    }
    println!("granted {granted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_quota_on_the_cluster() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(cluster) = start_cluster().await else {
        return;
    };
    let p = prefix();
    let exe = std::env::current_exe().unwrap();
    let mut args = cluster.urls();
    args.extend([p, "shared".to_string()]);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            tokio::process::Command::new(&exe)
                .args(["worker_process", "--exact", "--ignored", "--nocapture"])
                .env(WORKER, args.join(" "))
                .output()
        })
        .collect();
    let mut granted = Vec::new();
    for w in workers {
        let out = tokio::time::timeout(Duration::from_secs(120), w)
            .await
            .expect("a worker hung")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "worker failed: {stdout}");
        let n: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("granted "))
            .unwrap_or_else(|| panic!("no report: {stdout}"))
            .parse()
            .unwrap();
        granted.push(n);
    }
    println!("reserved by each process: {granted:?}");
    // 60 asks of 1 000 against one 36 000 quota: 36 granted (37 if one more refilled),
    // not 30 each as with two quotas. Each asked 30, so each got some.
    let total: u64 = granted.iter().sum();
    assert!((36..=37).contains(&total), "{granted:?}");
    assert!(granted.iter().all(|&n| n > 0), "{granted:?}");
}

// ---------------------------------------------------------------------------------------
// A failover, with clients over HTTP against the emulator.

/// The quota period: short, so a run takes seconds.
/// When the slot owner was killed and when its replica had taken over.
struct Failover {
    killed: Instant,
    taken_over: Instant,
    outcomes: Vec<Outcome>,
}

/// How the primary that owns the key's slot fails.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Failure {
    /// SIGKILL: connections to it are reset.
    Killed,
    /// SIGSTOP until its replica has taken over, then SIGCONT: calls to it go unanswered
    /// (a hung node, a network that drops packets); it comes back as a replica.
    Hung,
}

/// Two clients with `policy` send 2 × 4 × 16 requests; 3 s in, the primary that owns the
/// quota key's slot fails. Checks that every request ended within a generous bound,
/// that the promoted replica serves the ledger afterwards, and that the two clients share
/// one quota through it again.
async fn failover(policy: OutagePolicy, failure: Failure) -> Option<Failover> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut cluster = start_cluster().await?;
    let emu = emulator().await;
    let p = prefix();
    let ledgers: Vec<RedisLedger> = (0..2)
        .map(|_| {
            RedisLedger::cluster(cluster.urls())
                .unwrap()
                .prefix(&p)
                .timeout(Duration::from_millis(200))
        })
        .collect();
    let clients: Vec<_> = ledgers.iter().map(|l| client(l.clone(), policy)).collect();
    let base = emu.endpoint_url();
    let work = tokio::spawn(async move { run(clients, &base, 4, 16).await });
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The quota key's bucket, wherever the gate put it.
    let (owner, key) = cluster
        .primaries()
        .into_iter()
        .find_map(|i| {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{{{p}:*:b"))
                .query(&mut cluster.node(i))
                .unwrap();
            keys.into_iter().next().map(|k| (i, k))
        })
        .expect("the gates spent from the cluster before the failover");
    let slot = cluster.slot(&key);
    let replica = cluster.replica_of(owner);
    let killed = Instant::now();
    match failure {
        Failure::Killed => cluster.kill(owner),
        Failure::Hung => cluster.pause(owner),
    }
    let cluster = tokio::task::spawn_blocking(move || {
        let new = cluster.wait_for_failover(slot, owner, Duration::from_secs(60));
        assert_eq!(new, replica, "the replica of the failed primary took over");
        if failure == Failure::Hung {
            cluster.resume(owner);
        }
        cluster
    })
    .await
    .unwrap();
    let taken_over = Instant::now();
    println!(
        "{policy:?}: {key} (slot {slot}) on node {owner}; {failure:?} {:?} after start, replica {replica} took over {:?} later",
        Duration::from_secs(3),
        taken_over - killed
    );

    // None hung: every request ends, in far less than this.
    let outcomes = tokio::time::timeout(Duration::from_secs(300), work)
        .await
        .expect("requests hung after the failover")
        .unwrap();
    assert_eq!(outcomes.len(), 2 * 4 * 16, "a request was lost");
    println!("emulator: {:?}", emu.stats().total());

    // The promoted replica serves the ledger: it ran scripts (it had run none as a
    // replica: they replicate as their writes) and holds the key.
    assert!(
        cluster.script_calls(replica) > 0,
        "no script ran on the new primary"
    );
    println!(
        "scripts sent whole (EVAL) to the new primary: {}",
        cluster.eval_calls(replica)
    );
    let exists: usize = redis::cmd("EXISTS")
        .arg(&key)
        .query(&mut cluster.node(replica))
        .unwrap();
    assert_eq!(exists, 1, "{key} on the new primary");

    // And the two clients' ledgers (the very connections that lived through the
    // failover) share one quota there again: what one takes, the other waits for.
    let probe = model_on(&cluster, &p, replica);
    held(&ledgers[0], ask(&probe, 1, 0, 36_000)).await;
    let wait = fits_in(&ledgers[1], ask(&probe, 2, 0, 1_000)).await;
    about(wait, Duration::from_secs(100), Duration::from_secs(10));

    Some(Failover {
        killed,
        taken_over,
        outcomes: outcomes.into_iter().map(|(_, o)| o).collect(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_of_the_slot_owner_fails_open_and_resumes_on_the_replica() {
    fails_open(Failure::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_slot_owner_fails_open_and_resumes_on_the_replica() {
    fails_open(Failure::Hung).await;
}

async fn fails_open(failure: Failure) {
    let Some(f) = failover(OutagePolicy::FailOpen { share: 0.5 }, failure).await else {
        return;
    };
    // Failing open, every request succeeded: none refused, none lost.
    let done: Vec<Instant> = f
        .outcomes
        .iter()
        .map(|o| match o {
            Outcome::Ok { done } => *done,
            other => panic!("{other:?}"),
        })
        .collect();
    let after = done.iter().filter(|&&t| t > f.taken_over).count();
    println!(
        "completed while the slot had no primary: {}, after the takeover: {after}",
        done.iter()
            .filter(|&&t| t > f.killed && t < f.taken_over)
            .count()
    );
    assert!(after > 0, "work went on after the takeover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_of_the_slot_owner_fails_closed_and_resumes_on_the_replica() {
    let Some(f) = failover(OutagePolicy::FailClosed, Failure::Killed).await else {
        return;
    };
    // Failing closed, a request either succeeded or was refused with the typed error
    // during the failover; none failed otherwise.
    let mut refused = 0;
    let mut after = 0;
    for o in &f.outcomes {
        match o {
            Outcome::Ok { done } => after += usize::from(*done > f.taken_over),
            Outcome::Unavailable { done } => {
                assert!(*done >= f.killed, "refused before the failover");
                refused += 1;
            }
            other => panic!("neither a response nor the outage error: {other:?}"),
        }
    }
    let last = |refusal: bool| {
        f.outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Unavailable { done } if refusal => Some(*done),
                Outcome::Ok { done } if !refusal => Some(*done),
                _ => None,
            })
            .max()
    };
    println!(
        "refused during the failover: {refused} (the last {:?} after the takeover), succeeded after the takeover: {after}",
        last(true).map(|t| t.saturating_duration_since(f.taken_over))
    );
    // The refusals ended: the gates went back to the cluster.
    assert!(last(true) < last(false), "refused to the end");
    assert!(
        refused > 0,
        "nothing was refused while the slot had no primary"
    );
    assert!(after > 0, "work went on after the takeover");
}
