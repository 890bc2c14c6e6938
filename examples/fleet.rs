//! A fleet of processes sharing one quota through Redis, against the emulated Bedrock.
//!
//! ```sh
//! cargo run --release --example fleet --features emulator,redis -- --outage 40,10
//! ```
//!
//! The example starts the emulator (one model, RPM 400 and TPM 300,000 per period) and a
//! `redis-server` of its own on a free port, then spawns itself `--processes` times (4) as
//! worker processes. Each worker is what one replica of a service would be: its own
//! `ThrottleConfig` with a [`RedisLedger`] on that server, its share of the callers, and its
//! share of the workload (documents of 20,000 to 60,000 characters and shorter chat
//! requests). With `--outage AT,FOR` Redis is killed `AT` seconds in and restarted `FOR`
//! seconds later, empty (`--restart empty`, no persistence) or with its data
//! (`--restart with-data`, an append-only file synced on every write). `--policy fail-open`
//! gives each worker `1 / processes` of the quota on its own while Redis is down;
//! `fail-closed` refuses with `ThrottleError::LedgerUnavailable`, and the worker's callers
//! wait the error's retry hint and send again, as an application would.
//!
//! It prints what the emulator saw: requests failed, upstream throttles, and efficiency, the
//! least time any client could push the billed work through the quota (beyond the first
//! full bucket) over the time the fleet took; and, after an outage, the share of the quota
//! the fleet drew in the period after Redis answered again.

use std::{
    collections::VecDeque,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use bedrock_throttle::{
    emulator::{EmulatedQuota, Emulator, LatencyModel, OutputLength},
    BedrockThrottleLayer, BoxError, OutagePolicy, Quota, RedisLedger, ThrottleConfig,
    ThrottleError,
};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

const MODEL: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";
const RPM: u32 = 400;
const TPM: u64 = 300_000;

/// The fleet's options (see the module docs).
#[derive(Clone, Debug)]
pub struct Options {
    pub processes: usize,
    pub requests: usize,
    pub callers: usize,
    pub period: Duration,
    pub seed: u64,
    /// Seconds after the start that Redis is killed, and for how long.
    pub outage: Option<(f64, f64)>,
    pub restart_with_data: bool,
    pub fail_closed: bool,
}

impl Options {
    pub fn parse(args: &[String]) -> Self {
        let mut o = Options {
            processes: 4,
            requests: 240,
            callers: 48,
            period: Duration::from_secs(60),
            seed: 42,
            outage: None,
            restart_with_data: false,
            fail_closed: false,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().unwrap_or_else(|| usage(flag));
            match flag.as_str() {
                "--processes" => o.processes = number(&value(), flag),
                "--requests" => o.requests = number(&value(), flag),
                "--callers" => o.callers = number(&value(), flag),
                "--period-secs" => o.period = Duration::from_secs_f64(number(&value(), flag)),
                "--seed" => o.seed = number(&value(), flag),
                "--outage" => {
                    let v = value();
                    let (at, len) = v.split_once(',').unwrap_or_else(|| usage(flag));
                    o.outage = Some((number(at, flag), number(len, flag)));
                }
                "--restart" => match value().as_str() {
                    "empty" => o.restart_with_data = false,
                    "with-data" => o.restart_with_data = true,
                    _ => usage(flag),
                },
                "--policy" => match value().as_str() {
                    "fail-open" => o.fail_closed = false,
                    "fail-closed" => o.fail_closed = true,
                    _ => usage(flag),
                },
                _ => usage(flag),
            }
        }
        if o.processes == 0 || o.callers < o.processes {
            usage("--processes");
        }
        o
    }

    /// The options again, as arguments for a worker.
    fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "--processes".into(),
            self.processes.to_string(),
            "--requests".into(),
            self.requests.to_string(),
            "--callers".into(),
            self.callers.to_string(),
            "--period-secs".into(),
            self.period.as_secs_f64().to_string(),
            "--seed".into(),
            self.seed.to_string(),
            "--policy".into(),
            if self.fail_closed {
                "fail-closed"
            } else {
                "fail-open"
            }
            .into(),
        ];
        if let Some((at, len)) = self.outage {
            a.extend(["--outage".into(), format!("{at},{len}")]);
        }
        a
    }
}

fn number<T: std::str::FromStr>(s: &str, flag: &str) -> T {
    s.parse().unwrap_or_else(|_| usage(flag))
}

fn usage(flag: &str) -> ! {
    eprintln!("bad or missing value for {flag}");
    eprintln!(
        "usage: fleet [--processes N] [--requests N] [--callers N] [--period-secs F] [--seed N] [--outage AT,FOR] [--restart empty|with-data] [--policy fail-open|fail-closed]"
    );
    std::process::exit(2)
}

/// The workload: 30 % documents of 20,000 to 60,000 characters with `max_tokens` 1,024,
/// the rest 300 to 2,000 characters with 256 or 512.
fn workload(n: usize, seed: u64) -> Vec<Bytes> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let sentence =
        "The pump on Broad Street was the source, and removing its handle ended the outbreak. ";
    (0..n)
        .map(|_| {
            let (chars, max_tokens) = if rng.f64() < 0.3 {
                (rng.usize(20_000..60_000), 1_024)
            } else {
                (rng.usize(300..2_000), if rng.bool() { 256 } else { 512 })
            };
            let text = &sentence.repeat(chars / sentence.len() + 1)[..chars];
            let body = serde_json::json!({
                "anthropic_version": "bedrock-2023-05-31",
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": text}],
            });
            Bytes::from(body.to_string())
        })
        .collect()
}

fn latency() -> LatencyModel {
    LatencyModel {
        first_token: Duration::from_millis(50),
        per_output_token: Duration::from_micros(500),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        return run_worker(&args[1..]).await;
    }
    let exe = std::env::current_exe().expect("this example's path");
    let result = run_fleet(&Options::parse(&args), |worker_args| {
        let mut c = tokio::process::Command::new(&exe);
        c.arg("--worker").args(worker_args);
        c
    })
    .await;
    result.print();
}

/// A worker's report starts its line with this.
const REPORT: &str = "fleet-worker-report ";

/// Runs one worker: `args` are its index, the Redis URL, the emulator's URL, then the
/// fleet's options.
pub async fn run_worker(args: &[String]) {
    let index = number(&args[0], "--worker");
    worker(index, &args[1], &args[2], Options::parse(&args[3..])).await;
}

// ---------------------------------------------------------------------------------------
// A worker: one replica of the service.

/// What a worker reports, as one line on its standard output.
#[derive(Debug, Default)]
struct WorkerReport {
    completed: usize,
    failed: usize,
    /// Refusals with `LedgerUnavailable` that the caller waited out and sent again.
    ledger_refusals: usize,
    latencies_ms: Vec<u64>,
    errors: Vec<String>,
}

async fn worker(index: usize, redis: &str, base: &str, opts: Options) {
    let policy = if opts.fail_closed {
        OutagePolicy::FailClosed
    } else {
        OutagePolicy::FailOpen {
            share: 1.0 / opts.processes as f64,
        }
    };
    let cfg = ThrottleConfig::builder()
        .model_quota(MODEL, Quota::new(RPM, TPM).with_period(opts.period))
        .ledger(RedisLedger::open(redis).expect("redis url").prefix("fleet"))
        .outage(policy)
        .max_wait(Duration::from_secs(600))
        .build()
        .expect("valid config");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg))
        .service(client);
    // This worker's share of the jobs and of the callers, round-robin as a load balancer
    // would spread them.
    let jobs: VecDeque<Bytes> = workload(opts.requests, opts.seed)
        .into_iter()
        .skip(index)
        .step_by(opts.processes)
        .collect();
    let jobs = Arc::new(Mutex::new(jobs));
    let callers = (index..opts.callers).step_by(opts.processes).count();
    let uri = format!(
        "{base}/model/{}/invoke",
        percent_encoding::utf8_percent_encode(MODEL, percent_encoding::NON_ALPHANUMERIC)
    );
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (jobs, svc, uri) = (jobs.clone(), svc.clone(), uri.clone());
            tokio::spawn(async move {
                let mut report = WorkerReport::default();
                loop {
                    let Some(body) = jobs.lock().unwrap().pop_front() else {
                        break;
                    };
                    let sent = Instant::now();
                    loop {
                        let req = Request::post(&uri)
                            .header("content-type", "application/json")
                            .body(Full::new(body.clone()))
                            .expect("request");
                        match send(svc.clone(), req).await {
                            Ok(()) => {
                                report.completed += 1;
                                report.latencies_ms.push(sent.elapsed().as_millis() as u64);
                            }
                            Err(e) => match e.downcast_ref::<ThrottleError>() {
                                Some(ThrottleError::LedgerUnavailable { .. }) => {
                                    report.ledger_refusals += 1;
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                    continue;
                                }
                                _ => {
                                    report.failed += 1;
                                    report.errors.push(e.to_string());
                                }
                            },
                        }
                        break;
                    }
                }
                report
            })
        })
        .collect();
    let mut report = WorkerReport::default();
    for t in tasks {
        let r = t.await.expect("caller");
        report.completed += r.completed;
        report.failed += r.failed;
        report.ledger_refusals += r.ledger_refusals;
        report.latencies_ms.extend(r.latencies_ms);
        report.errors.extend(r.errors);
    }
    let line = serde_json::json!({
        "completed": report.completed,
        "failed": report.failed,
        "ledger_refusals": report.ledger_refusals,
        "latencies_ms": report.latencies_ms,
        "errors": report.errors,
    });
    println!("{REPORT}{line}");
}

async fn send<S, B>(svc: S, req: Request<Full<Bytes>>) -> Result<(), BoxError>
where
    S: tower::Service<Request<Full<Bytes>>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let resp = svc.oneshot(req).await.map_err(Into::into)?;
    let status = resp.status();
    resp.into_body().collect().await.map_err(Into::into)?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("upstream answered {status}").into())
    }
}

// ---------------------------------------------------------------------------------------
// The coordinator: the emulator, Redis, the workers and the figures.

/// A `redis-server` of this example's own, killed when dropped.
struct RedisServer {
    port: u16,
    dir: PathBuf,
    with_data: bool,
    child: Option<Child>,
}

impl RedisServer {
    fn start(with_data: bool) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("its address")
            .port();
        let dir = std::env::temp_dir().join(format!("bedrock-throttle-fleet-{port}"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut s = Self {
            port,
            dir,
            with_data,
            child: None,
        };
        s.start_again();
        s
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn start_again(&mut self) {
        let persistence: &[&str] = if self.with_data {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(persistence)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("url");
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
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the emulator and the workers saw of one fleet run.
#[derive(Debug)]
pub struct FleetResult {
    pub processes: usize,
    pub requests: usize,
    /// Workers that reported (a worker that crashed does not).
    pub reports: usize,
    pub completed: usize,
    pub failed: usize,
    pub ledger_refusals: usize,
    /// Requests upstream received, throttled ones included, and the throttles.
    pub attempts: u64,
    pub throttles: u64,
    /// The ideal time to push the billed work through the quota over the time it took.
    pub efficiency: f64,
    pub p50: f64,
    pub p99: f64,
    pub wall: f64,
    /// When Redis answered again, and the share of the quota drawn in the period after.
    pub back: Option<(f64, f64)>,
    /// (seconds, throttles) where upstream throttled.
    pub throttled_at: Vec<(f64, u64)>,
    pub errors: Vec<String>,
}

impl FleetResult {
    pub fn print(&self) {
        println!(
            "| processes | requests | completed | failed | ledger refusals | throttles / attempts | efficiency | p50 | p99 | wall |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {} | {} | {} | {} / {} ({:.1} %) | {:.3} | {:.2} s | {:.2} s | {:.1} s |",
            self.processes,
            self.requests,
            self.completed,
            self.failed,
            self.ledger_refusals,
            self.throttles,
            self.attempts,
            100.0 * self.throttles as f64 / self.attempts.max(1) as f64,
            self.efficiency,
            self.p50,
            self.p99,
            self.wall,
        );
        if let Some((back, share)) = self.back {
            println!(
                "after Redis answered again ({back:.1} s): {:.0} % of the quota drawn in the period after",
                100.0 * share,
            );
        }
        if !self.throttled_at.is_empty() {
            let at: Vec<String> = self
                .throttled_at
                .iter()
                .map(|(t, n)| format!("{n} at {t:.1} s"))
                .collect();
            println!("upstream throttles: {}", at.join(", "));
        }
        for e in self.errors.iter().take(5) {
            println!("error: {e}");
        }
    }
}

/// Runs the fleet: the emulator, Redis, `opts.processes` workers started by `worker` (the
/// command of a process that runs [`run_worker`] with the arguments it is given), the
/// outage.
pub async fn run_fleet(
    opts: &Options,
    worker: impl Fn(Vec<String>) -> tokio::process::Command,
) -> FleetResult {
    let emu = Emulator::builder()
        .model_quota(
            MODEL,
            EmulatedQuota {
                rpm: Some(u64::from(RPM)),
                tpm: TPM,
                tpd: None,
                period: opts.period,
            },
        )
        .latency(latency())
        .chars_per_token(3.6)
        .output_tokens(OutputLength::PercentOfLimit { min: 30, max: 100 })
        .seed(opts.seed)
        .spawn()
        .await
        .expect("emulator");
    let mut redis = RedisServer::start(opts.restart_with_data);
    let start = Instant::now();
    let workers: Vec<_> = (0..opts.processes)
        .map(|i| {
            let mut args = vec![i.to_string(), redis.url(), emu.endpoint_url()];
            args.extend(opts.to_args());
            let child = worker(args)
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn a worker");
            tokio::spawn(child.wait_with_output())
        })
        .collect();
    eprintln!(
        "{} worker processes, {} requests, {} callers, quota RPM {RPM} / TPM {TPM} per {:.0} s, outage {:?}, restart {}, policy {}",
        opts.processes,
        opts.requests,
        opts.callers,
        opts.period.as_secs_f64(),
        opts.outage,
        if opts.restart_with_data { "with data" } else { "empty" },
        if opts.fail_closed { "fail-closed" } else { "fail-open" },
    );

    // Billed tokens, sampled ten times a second; the outage on its schedule.
    let mut series: Vec<(f64, u64)> = Vec::new();
    let mut throttled_at: Vec<(f64, u64)> = Vec::new();
    let mut throttled = 0;
    let mut back_at: Option<f64> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !workers.iter().all(|w| w.is_finished()) {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64();
        if let Some((at, len)) = opts.outage {
            if t >= at && back_at.is_none() && redis.child.is_some() {
                eprintln!("{t:.1} s: Redis killed");
                redis.kill();
            } else if t >= at + len && back_at.is_none() {
                redis.start_again();
                let t = start.elapsed().as_secs_f64();
                eprintln!("{t:.1} s: Redis answers again");
                back_at = Some(t);
            }
        }
        let m = emu.stats().model(MODEL);
        let now_throttled = m.throttled_rpm + m.throttled_tpm + m.throttled_tpd;
        if now_throttled > throttled {
            throttled_at.push((t, now_throttled - throttled));
            throttled = now_throttled;
        }
        series.push((t, m.tokens_billed));
    }
    let mut report = WorkerReport::default();
    let mut reports = 0;
    for w in workers {
        let out = w.await.expect("worker task").expect("worker output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(line) = stdout.lines().find_map(|l| l.strip_prefix(REPORT)) else {
            eprintln!(
                "a worker exited with {} and no report: {stdout}",
                out.status
            );
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(line).expect("a worker's report");
        reports += 1;
        let count = |k: &str| v[k].as_u64().unwrap_or(0) as usize;
        report.completed += count("completed");
        report.failed += count("failed");
        report.ledger_refusals += count("ledger_refusals");
        if let Some(a) = v["latencies_ms"].as_array() {
            report
                .latencies_ms
                .extend(a.iter().filter_map(|x| x.as_u64()));
        }
        if let Some(a) = v["errors"].as_array() {
            report
                .errors
                .extend(a.iter().filter_map(|x| x.as_str().map(String::from)));
        }
    }
    let wall = start.elapsed();

    let m = emu.stats().model(MODEL);
    let per_sec = |n: u64| n as f64 / opts.period.as_secs_f64();
    let by_tokens = m.tokens_billed.saturating_sub(TPM) as f64 / per_sec(TPM);
    let by_requests = m.settled.saturating_sub(u64::from(RPM)) as f64 / per_sec(u64::from(RPM));
    let ideal = by_tokens.max(by_requests);
    let admitted_by = m.last_admitted.map_or(wall, |t| t - start).as_secs_f64();
    report.latencies_ms.sort_unstable();
    let pct = |p: f64| {
        let l = &report.latencies_ms;
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .map_or(0.0, |&ms| ms as f64 / 1000.0)
    };
    // The share of the quota drawn in the period after Redis answered, while work
    // remained: 1.0 is a fleet back at full speed at once.
    let back = back_at.map(|back| {
        let billed_at = |t: f64| {
            series
                .iter()
                .take_while(|(s, _)| *s <= t)
                .last()
                .map_or(0, |&(_, b)| b)
        };
        let end = (back + opts.period.as_secs_f64()).min(admitted_by);
        let drawn = billed_at(end).saturating_sub(billed_at(back)) as f64;
        (back, drawn / (per_sec(TPM) * (end - back).max(1e-9)))
    });
    emu.shutdown().await;
    FleetResult {
        processes: opts.processes,
        requests: opts.requests,
        reports,
        completed: report.completed,
        failed: report.failed,
        ledger_refusals: report.ledger_refusals,
        attempts: m.requests,
        throttles: m.throttled_rpm + m.throttled_tpm + m.throttled_tpd,
        efficiency: ideal / admitted_by.max(1e-9),
        p50: pct(0.5),
        p99: pct(0.99),
        wall: wall.as_secs_f64(),
        back,
        throttled_at,
        errors: report.errors,
    }
}
