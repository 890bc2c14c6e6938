//! A fleet of real OS processes sharing one quota through Redis, through a Redis outage:
//! this test binary spawns itself as the workers of `examples/fleet.rs` (whose code it
//! includes), against the emulator and a redis-server of its own, in real time with a
//! 20 s quota period (about 25 s a run; the runs take turns).

#![cfg(all(feature = "emulator", feature = "redis"))]

#[path = "../examples/fleet.rs"]
#[allow(dead_code)]
mod fleet;

use std::time::Duration;

use fleet::{run_fleet, FleetResult, Options};

/// The environment variable that makes [`worker_process`] a worker.
const WORKER_ARGS: &str = "BEDROCK_THROTTLE_FLEET_WORKER";

/// The entry point of the spawned workers, not a test of its own: it runs only when this
/// binary was started as a worker (ignored otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the entry point of the worker processes that the fleet tests spawn"]
async fn worker_process() {
    let args = std::env::var(WORKER_ARGS).expect("started as a worker");
    let args: Vec<String> = args.split('\u{1f}').map(String::from).collect();
    fleet::run_worker(&args).await;
}

/// The runs take turns, so that they do not compete for the CPU with each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs the fleet with this binary as its workers.
async fn run(opts: Options) -> FleetResult {
    let _turn = ONE_AT_A_TIME.lock().await;
    let exe = std::env::current_exe().expect("this test's path");
    // The worker's arguments travel in the environment: the test harness owns argv.
    let result = run_fleet(&opts, |worker_args| {
        let mut c = tokio::process::Command::new(&exe);
        c.args(["worker_process", "--exact", "--ignored", "--nocapture"])
            .env(WORKER_ARGS, worker_args.join("\u{1f}"));
        c
    })
    .await;
    result.print();
    result
}

fn options(outage: Option<(f64, f64)>) -> Options {
    Options {
        processes: 4,
        requests: 160,
        callers: 16,
        period: Duration::from_secs(20),
        seed: 7,
        outage,
        restart_with_data: false,
        fail_closed: false,
    }
}

/// Every worker reported and every request ended in a response: none lost.
fn nothing_lost(r: &FleetResult) {
    assert_eq!(r.reports, r.processes, "a worker process did not report");
    assert_eq!(r.failed, 0, "failed requests: {:?}", r.errors);
    assert_eq!(r.completed, r.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_one_quota() {
    let r = run(options(None)).await;
    nothing_lost(&r);
    // One quota, not four: the emulator would refuse much of a fleet that spent four.
    assert!(
        r.throttles * 10 <= r.attempts,
        "{} throttles in {} attempts",
        r.throttles,
        r.attempts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_redis_restart_without_its_data_failing_open() {
    let r = run(options(Some((6.0, 3.0)))).await;
    nothing_lost(&r);
    assert!(r.back.is_some(), "Redis was restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_redis_restart_with_its_data_failing_open() {
    let r = run(Options {
        restart_with_data: true,
        ..options(Some((6.0, 3.0)))
    })
    .await;
    nothing_lost(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_redis_outage_failing_closed() {
    let r = run(Options {
        fail_closed: true,
        ..options(Some((6.0, 3.0)))
    })
    .await;
    // Refused with the typed error while Redis was down, sent again after: none lost.
    nothing_lost(&r);
    assert!(
        r.ledger_refusals > 0,
        "nothing was refused during the outage"
    );
}
