//! Property tests of the gate's quota invariants over random interleavings of requests,
//! cancellations, settlements, throttles and time steps, in virtual time.
//!
//! The upstream is a recording mock: it logs each request it receives (with the tokens the
//! gate reserved for it, read from the hand-set `TokenEstimate`) and answers only when the
//! test says, with the reply the test picks. Each caller logs what settlement gives back at
//! the instant its response (or body) completes. Together the two logs are the ledger's
//! draws, in the order they happened.
//!
//! # The invariant, precisely
//! The gate is a token bucket per quota key: capacity `C` (the quota), refill `r = C /
//! period`, never above `C`, and an admission only when the bucket holds the cost. So for
//! every admission at time `b` and every earlier point `a` of the log:
//!
//! ```text
//! drawn(a..=b) ≤ C + r × (b − a)
//! ```
//!
//! where `drawn` sums the reservations taken at admission, minus what settlement gave
//! back (a refund is negative; a charge above the reservation is a positive draw), over the
//! events from `a` to `b` inclusive. The same holds for requests with the RPM bucket
//! (requests are never given back). In a window of one period this is at most 2 × quota:
//! a full bucket plus one period of refill, the burst that Bedrock's own buckets allow.
//! Throttles (which empty the buckets and slow the refill) and headroom only lower the
//! level, so the bound holds through them.

mod common;

use std::{
    collections::HashMap,
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bedrock_throttle::{
    estimate::TokenEstimate, gate::GateLayer, BoxError, Priority, Quota, Tenant, TenantPolicy,
    ThrottleConfig, ThrottleError,
};
use bytes::Bytes;
use common::throttle;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tokio::{sync::oneshot, task::JoinHandle, time::Instant};
use tower::{Layer, Service};

/// Token quota per period.
const TPM: u64 = 10_000;
/// Request quota per period.
const RPM: u32 = 12;
const PERIOD: Duration = Duration::from_secs(60);
const MAX_WAIT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug)]
enum Reply {
    /// 200 with `x-amzn-bedrock-*-token-count` headers: settled at the head.
    Headers { input: u64, output: u64 },
    /// 200 with usage only in the JSON body: settled when the caller reads it to the end;
    /// dropped unread, the whole reservation stays.
    Json { input: u64, output: u64, read: bool },
    /// 429 ThrottlingException: refunded, and the key slows down.
    Throttle,
    /// 400: refunded.
    BadRequest,
    /// 500: the whole reservation stays.
    ServerError,
    /// The inner service fails: the whole reservation stays.
    ConnectionError,
}

#[derive(Clone, Debug)]
enum Op {
    /// A request reserving `input + output` tokens (some more than the quota), of tenant
    /// `tenant` (see [`TENANTS`]), batch or interactive.
    Send {
        input: u64,
        output: u64,
        tenant: usize,
        batch: bool,
    },
    /// Drops the response future of one caller (waiting, in flight or done).
    Cancel(usize),
    /// Answers one request the upstream holds.
    Answer(usize, Reply),
    /// Lets virtual time pass.
    Step(Duration),
}

/// One change of the ledger's level: a reservation at admission (with its request) or a
/// settlement adjustment.
#[derive(Clone, Copy, Debug)]
struct Event {
    at: Instant,
    tokens: i64,
    requests: i64,
}

type Upstream = Result<Response<Full<Bytes>>, io::Error>;

#[derive(Default)]
struct Log {
    events: Vec<Event>,
    /// Requests the upstream holds, with their id and reservation.
    held: Vec<(u64, u64, oneshot::Sender<Upstream>)>,
    /// The reply each answered request got.
    replies: HashMap<u64, Reply>,
}

/// The recording upstream.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Log>>);

impl Recorder {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.0.lock().unwrap()
    }

    fn held(&self) -> usize {
        self.log().held.len()
    }

    /// Answers the `pick`-th held request (modulo) with `reply`.
    fn answer(&self, pick: usize, reply: Reply) {
        let mut log = self.log();
        if log.held.is_empty() {
            return;
        }
        let i = pick % log.held.len();
        let (id, _, tx) = log.held.swap_remove(i);
        log.replies.insert(id, reply);
        let response = match reply {
            Reply::Headers { input, output } => Ok(Response::builder()
                .header("x-amzn-bedrock-input-token-count", input)
                .header("x-amzn-bedrock-output-token-count", output)
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap()),
            Reply::Json { input, output, .. } => Ok(Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!(
                    r#"{{"usage":{{"input_tokens":{input},"output_tokens":{output}}}}}"#
                ))))
                .unwrap()),
            Reply::Throttle => Ok(throttle(
                "Too many tokens, please wait before trying again.",
            )),
            Reply::BadRequest => Ok(status(400)),
            Reply::ServerError => Ok(status(500)),
            Reply::ConnectionError => Err(io::Error::other("connection reset")),
        };
        // The caller may have been cancelled; then nobody listens.
        let _ = tx.send(response);
    }
}

fn status(code: u16) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

impl Service<Request<Full<Bytes>>> for Recorder {
    type Response = Response<Full<Bytes>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Upstream> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let e = req.extensions().get::<TokenEstimate>().unwrap();
        let reserved = e.input_tokens() + e.output_limit();
        let id: u64 = req.headers()["x-id"].to_str().unwrap().parse().unwrap();
        let (tx, rx) = oneshot::channel();
        let mut log = self.log();
        log.events.push(Event {
            at: Instant::now(),
            tokens: reserved as i64,
            requests: 1,
        });
        log.held.push((id, reserved, tx));
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(io::Error::other("upstream dropped")))
        })
    }
}

/// No tenant (the default one), a tenant of weight 2, and one capped at half the quota.
const TENANTS: [Option<&str>; 3] = [None, Some("heavy"), Some("capped")];

fn config() -> ThrottleConfig {
    ThrottleConfig::builder()
        .quota(Quota::new(RPM, TPM).with_burndown(1.0))
        .max_wait(MAX_WAIT)
        .tenant("heavy", TenantPolicy::weight(2.0))
        .tenant("capped", TenantPolicy::weight(1.0).with_cap(0.5))
        .build()
        .unwrap()
}

fn tenant_request(
    id: u64,
    input: u64,
    output: u64,
    tenant: usize,
    batch: bool,
) -> Request<Full<Bytes>> {
    let mut req = Request::post("/model/test-model/invoke")
        .header("x-id", id)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    req.extensions_mut()
        .insert(TokenEstimate::new(input, output));
    if let Some(t) = TENANTS[tenant % TENANTS.len()] {
        req.extensions_mut().insert(Tenant::new(t));
    }
    if batch {
        req.extensions_mut().insert(Priority::Batch);
    }
    req
}

/// How a caller ended.
#[derive(Debug, PartialEq)]
enum End {
    Response,
    NeverFits,
    MaxWait,
    Upstream,
}

type Client = bedrock_throttle::gate::Gate<Recorder>;

/// Sends a request: the gate admits or queues it inside `call`, at this instant; the
/// spawned caller awaits the response, reads the body or not, and logs the settlement.
async fn send(
    client: &mut Client,
    up: &Recorder,
    id: u64,
    input: u64,
    output: u64,
) -> JoinHandle<End> {
    send_as(client, up, tenant_request(id, input, output, 0, false)).await
}

async fn send_as(
    client: &mut Client,
    up: &Recorder,
    request: Request<Full<Bytes>>,
) -> JoinHandle<End> {
    let id: u64 = request.headers()["x-id"].to_str().unwrap().parse().unwrap();
    let estimate = request.extensions().get::<TokenEstimate>().unwrap();
    let (input, output) = (estimate.input_tokens(), estimate.output_limit());
    std::future::poll_fn(|cx| client.poll_ready(cx))
        .await
        .unwrap();
    let future = client.call(request);
    let up = up.clone();
    let reserved = (input + output) as i64;
    // The gate trusts a usage report up to the most a request can cost: 4 × its reservation
    // or its reservation plus a period of the quota, whichever is larger; beyond that it
    // charges the bound (a broken upstream).
    let most = ((input + output) * 4).max(input + output + TPM);
    let charged = move |input: u64, output: u64| (input + output).min(most) as i64;
    let handle = tokio::spawn(async move {
        let result: Result<_, BoxError> = future.await;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                return match e.downcast_ref::<ThrottleError>() {
                    Some(ThrottleError::NeverFits { .. }) => End::NeverFits,
                    Some(ThrottleError::MaxWaitExceeded { .. }) => End::MaxWait,
                    Some(other) => panic!("unexpected {other}"),
                    None => End::Upstream,
                };
            }
        };
        let reply = up.log().replies[&id];
        let given_back = match reply {
            Reply::Headers { input, output } => reserved - charged(input, output),
            Reply::Json {
                input,
                output,
                read: true,
            } => {
                response.into_body().collect().await.unwrap();
                reserved - charged(input, output)
            }
            Reply::Json { read: false, .. } | Reply::ServerError => 0,
            Reply::Throttle | Reply::BadRequest => reserved,
            Reply::ConnectionError => unreachable!("an error, not a response"),
        };
        if given_back != 0 {
            up.log().events.push(Event {
                at: Instant::now(),
                tokens: -given_back,
                requests: 0,
            });
        }
        End::Response
    });
    settle_tasks().await;
    handle
}

/// Lets every ready task run, without time passing.
async fn settle_tasks() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// Checks the window bound for every admission and every earlier point of the log.
fn check_windows(events: &[Event]) -> Result<(), TestCaseError> {
    let tokens_per_sec = TPM as f64 / PERIOD.as_secs_f64();
    let requests_per_sec = f64::from(RPM) / PERIOD.as_secs_f64();
    for (j, end) in events.iter().enumerate() {
        if end.requests == 0 {
            continue; // windows that end in an admission are the ones the gate decides
        }
        let (mut tokens, mut requests) = (0i64, 0i64);
        for start in events[..=j].iter().rev() {
            tokens += start.tokens;
            requests += start.requests;
            let secs = (end.at - start.at).as_secs_f64();
            let token_bound = TPM as f64 + tokens_per_sec * secs + 1e-6;
            let request_bound = f64::from(RPM) + requests_per_sec * secs + 1e-6;
            prop_assert!(
                tokens as f64 <= token_bound,
                "{tokens} tokens drawn in {secs} s (bound {token_bound})"
            );
            prop_assert!(
                requests as f64 <= request_bound,
                "{requests} requests in {secs} s (bound {request_bound})"
            );
        }
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

fn reply() -> impl Strategy<Value = Reply> {
    let usage = 0..8_000u64;
    prop_oneof![
        4 => (usage.clone(), usage.clone()).prop_map(|(input, output)| Reply::Headers { input, output }),
        2 => (usage.clone(), usage, any::<bool>())
            .prop_map(|(input, output, read)| Reply::Json { input, output, read }),
        2 => Just(Reply::Throttle),
        1 => Just(Reply::BadRequest),
        1 => Just(Reply::ServerError),
        1 => Just(Reply::ConnectionError),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Up to 12,000 tokens: about one in six is larger than the 10,000 quota.
        5 => (0..6_000u64, 0..6_000u64, 0..TENANTS.len(), any::<bool>())
            .prop_map(|(input, output, tenant, batch)| Op::Send { input, output, tenant, batch }),
        1 => any::<usize>().prop_map(Op::Cancel),
        4 => (any::<usize>(), reply()).prop_map(|(i, r)| Op::Answer(i, r)),
        3 => (0..40_000u64).prop_map(|ms| Op::Step(Duration::from_millis(ms))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// No window over quota, no hung caller, no leaked reservation or queue place.
    #[test]
    fn random_interleavings_keep_the_quota_and_leak_nothing(ops in prop::collection::vec(op(), 1..60)) {
        runtime().block_on(async move {
            let up = Recorder::default();
            let mut client = GateLayer::new(config()).layer(up.clone());
            let mut callers: Vec<(JoinHandle<End>, u64)> = Vec::new();
            let mut next_id = 0;
            for op in &ops {
                match *op {
                    Op::Send { input, output, tenant, batch } => {
                        let request = tenant_request(next_id, input, output, tenant, batch);
                        let h = send_as(&mut client, &up, request).await;
                        callers.push((h, input + output));
                        next_id += 1;
                    }
                    Op::Cancel(i) => {
                        if !callers.is_empty() {
                            let n = callers.len();
                            callers[i % n].0.abort();
                            settle_tasks().await;
                        }
                    }
                    Op::Answer(i, r) => {
                        up.answer(i, r);
                        settle_tasks().await;
                    }
                    Op::Step(d) => {
                        tokio::time::sleep(d).await;
                        settle_tasks().await;
                    }
                }
            }

            // Answer whatever the upstream holds until every caller has ended: waiting
            // ones end by max_wait at the latest.
            let last = Instant::now();
            while callers.iter().any(|(h, _)| !h.is_finished()) {
                prop_assert!(
                    Instant::now() - last <= MAX_WAIT + Duration::from_secs(2),
                    "a caller still runs {:?} after the last operation",
                    Instant::now() - last
                );
                while up.held() > 0 {
                    up.answer(0, Reply::Headers { input: 100, output: 100 });
                }
                settle_tasks().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                settle_tasks().await;
            }
            for (h, tokens) in callers {
                match h.await {
                    Ok(end) => prop_assert_eq!(
                        end == End::NeverFits,
                        tokens > TPM,
                        "NeverFits exactly for requests over the quota"
                    ),
                    Err(e) => prop_assert!(e.is_cancelled()),
                }
            }

            check_windows(&up.log().events)?;

            // Nothing leaked: once the debts (charges above reservations) have refilled
            // and the rate has recovered from throttles, a request of the whole quota is
            // admitted at once.
            let debt: i64 = up.log().events.iter().filter(|e| e.requests == 0 && e.tokens > 0).map(|e| e.tokens).sum();
            // The slowest recovery is from the rate floor (1 % of the quota): the curve
            // m(t) = m0 (1 + 0.3 (t/K − 1)³) with K = 1.5 periods is back at 1 after
            // K (1 + cbrt((1/0.01 − 1) / 0.3)) ≈ 11.9 periods.
            let periods = 13 + debt as u64 / TPM;
            tokio::time::sleep(PERIOD * periods as u32 + Duration::from_secs(1)).await;
            let before = up.log().events.len();
            let probe = send(&mut client, &up, u64::MAX, TPM, 0).await;
            prop_assert_eq!(up.log().events.len(), before + 1, "the whole quota is admitted at once");
            // (Requests of cancelled callers may still be held; nobody hears their answer.)
            while up.held() > 0 {
                up.answer(0, Reply::Headers { input: 1, output: 1 });
            }
            settle_tasks().await;
            prop_assert!(probe.is_finished());
            // Nor did the capped tenant's cap leak: after a period, its whole cap at once.
            tokio::time::sleep(PERIOD + Duration::from_secs(1)).await;
            let before = up.log().events.len();
            let capped = tenant_request(u64::MAX - 1, TPM / 2, 0, 2, false);
            let probe = send_as(&mut client, &up, capped).await;
            prop_assert_eq!(up.log().events.len(), before + 1, "the whole cap is admitted at once");
            while up.held() > 0 {
                up.answer(0, Reply::Headers { input: 1, output: 1 });
            }
            settle_tasks().await;
            prop_assert!(probe.is_finished());
            Ok(())
        })?;
    }

    /// Waiters that are dropped give their queue place back: a later request is admitted
    /// exactly when it would have been had they never queued.
    #[test]
    fn dropped_waiters_do_not_delay_later_requests(
        first in (TPM / 2)..=TPM,
        ghosts in 1..20usize,
        ghost_tokens in prop::collection::vec(1..=TPM, 20),
        wait_ms in 0..20_000u64,
        probe in 1..=TPM,
    ) {
        let admitted_at = |with_ghosts: bool| {
            runtime().block_on(async {
                let up = Recorder::default();
                let mut client = GateLayer::new(config()).layer(up.clone());
                let start = Instant::now();
                let _first = send(&mut client, &up, 0, first, 0).await;
                let mut queued = Vec::new();
                if with_ghosts {
                    // The head ghost wants the whole quota, so it cannot be admitted
                    // within `wait_ms` (the bucket is at most half full); the rest queue
                    // behind it.
                    for (i, &t) in ghost_tokens.iter().take(ghosts).enumerate() {
                        let tokens = if i == 0 { TPM } else { t };
                        queued.push(send(&mut client, &up, 1 + i as u64, tokens, 0).await);
                    }
                }
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                for g in &queued {
                    g.abort();
                }
                settle_tasks().await;
                let _probe = send(&mut client, &up, 100, probe, 0).await;
                tokio::time::sleep(PERIOD * 2).await;
                let log = up.log();
                assert_eq!(log.events.len(), 2, "only the first request and the probe reach upstream");
                log.events[1].at - start
            })
        };
        prop_assert_eq!(admitted_at(true), admitted_at(false));
    }
}
