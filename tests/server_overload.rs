//! `Overload::Shed` behind a real hyper server with many connections, in virtual time.
//!
//! 200 clients, each on its own keep-alive HTTP/1 connection over loopback, send InvokeModel
//! requests for two tenants (`x-team: gold`, weight 3, and `bronze`, weight 1) to a server
//! whose service is `ErrorResponseLayer` over the whole stack over a slow upstream. The
//! quota admits one request a second; the clients ask for about a hundred. What the README's
//! "In a server" promises for this combination is checked from both ends: every request is
//! answered; a refusal is a 429 `ThrottlingException` with `Retry-After`, at once when shed
//! and at `max_wait` when it timed out; no admitted request waited in the gate longer than
//! `max_wait` (by timestamps and by the crate's wait histogram); the queue stays within its
//! bound; admissions split by weight; and at the end nothing is waiting and every
//! reservation settled.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bedrock_throttle::{
    error_response::ErrorResponseLayer, estimate::TokenEstimate, BedrockThrottleLayer, Quota,
    TenantPolicy, ThrottleConfig,
};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn as hyper_service_fn};
use hyper_util::rt::TokioIo;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::{net::TcpListener, time::Instant};
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// About 60 requests of ~1 000 tokens a minute: one a second.
const TPM: u64 = 60_000;
const MAX_TOKENS: u64 = 1_000;
const MAX_WAIT: Duration = Duration::from_secs(10);
/// How long upstream takes to answer an admitted request.
const LATENCY: Duration = Duration::from_secs(2);
const CONNECTIONS: usize = 200;
/// How long each client sends for.
const RUN: Duration = Duration::from_secs(4 * 60);
/// How long a client waits after a refusal before it sends again (at most).
const BACKOFF: Duration = Duration::from_secs(2);
/// Slack over `MAX_WAIT` for the gate's measured waits: one tenth.
const SLACK: Duration = Duration::from_secs(1);
/// The response header in which the server reports how long the stack took to answer.
const ELAPSED: &str = "x-test-elapsed-us";

/// When the request entered the stack; travels in its extensions down to the upstream.
#[derive(Clone, Copy, Debug)]
struct Entered(Instant);

/// What the upstream saw: each admitted request's tenant and wait in the gate.
#[derive(Clone, Debug, Default)]
struct Upstream {
    waits: Arc<Mutex<Vec<(String, Duration)>>>,
}

/// An upstream that takes [`LATENCY`] and reports exactly the estimate as usage, so every
/// settlement charges what was reserved.
async fn upstream(
    seen: Upstream,
    request: Request<Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let entered = request
        .extensions()
        .get::<Entered>()
        .expect("set by the server")
        .0;
    let tenant = request
        .headers()
        .get("x-team")
        .map_or("", |v| v.to_str().unwrap())
        .to_owned();
    (seen.waits.lock().unwrap()).push((tenant, entered.elapsed()));
    let estimate = request.extensions().get::<TokenEstimate>().unwrap().clone();
    tokio::time::sleep(LATENCY).await;
    Ok(Response::builder()
        .header("x-amzn-bedrock-input-token-count", estimate.input_tokens())
        .header("x-amzn-bedrock-output-token-count", estimate.output_limit())
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap())
}

fn config(max_queued: usize) -> ThrottleConfig {
    ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(TPM).with_burndown(1.0))
        .headroom(Duration::ZERO)
        .max_queued(max_queued)
        .max_wait(MAX_WAIT)
        .tenant_header("x-team")
        .tenant("gold", TenantPolicy::weight(3.0))
        .tenant("bronze", TenantPolicy::weight(1.0))
        .tenant_metrics(true)
        .build()
        .unwrap()
}

/// Serves the gateway on `listener`, one task per connection; counts the connections.
async fn serve(
    listener: TcpListener,
    cfg: ThrottleConfig,
    seen: Upstream,
    accepted: Arc<AtomicU64>,
) {
    let gateway = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(BedrockThrottleLayer::new(cfg))
        .service(service_fn(move |r| upstream(seen.clone(), r)));
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        accepted.fetch_add(1, Ordering::Relaxed);
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let svc = hyper_service_fn(move |request: Request<Incoming>| {
                let gateway = gateway.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await?.to_bytes();
                    let mut request = Request::from_parts(parts, Full::new(body));
                    let entered = Instant::now();
                    request.extensions_mut().insert(Entered(entered));
                    let Ok(mut response) = gateway.oneshot(request).await;
                    let us = entered.elapsed().as_micros().to_string();
                    (response.headers_mut()).insert(ELAPSED, HeaderValue::from_str(&us).unwrap());
                    Ok::<_, hyper::Error>(response)
                }
            });
            http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
                .unwrap();
        });
    }
}

/// An InvokeModel request to `path` for `tenant`.
fn invoke(path: &str, tenant: Option<&str>, max_tokens: u64) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Summarise the history of the Broad Street pump."}],
    });
    let mut request = Request::post(path)
        .header("host", "gateway.test")
        .header("content-type", "application/json");
    if let Some(t) = tenant {
        request = request.header("x-team", t);
    }
    request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// What one client's requests came to.
#[derive(Debug, Default)]
struct Outcome {
    sent: u64,
    ok: u64,
    /// Shed: the stack's time to answer, and the `Retry-After` it gave.
    shed: Vec<(Duration, u64)>,
    /// Timed out after `max_wait`: the same.
    timed_out: Vec<(Duration, u64)>,
    /// Longest time from sending to the response's end.
    slowest: Duration,
}

/// One client on its own connection: sends, reads the answer, and after a refusal waits
/// the `Retry-After` (at most [`BACKOFF`]) before the next request, until `stop`.
async fn client(addr: SocketAddr, path: &str, tenant: &'static str, stop: Instant) -> Outcome {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut out = Outcome::default();
    while Instant::now() < stop {
        sender.ready().await.unwrap();
        let sent = Instant::now();
        out.sent += 1;
        let response = sender
            .send_request(invoke(path, Some(tenant), MAX_TOKENS))
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        out.slowest = out.slowest.max(sent.elapsed());
        let elapsed =
            Duration::from_micros(parts.headers[ELAPSED].to_str().unwrap().parse().unwrap());
        match parts.status {
            StatusCode::OK => out.ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(parts.headers["x-amzn-errortype"], "ThrottlingException");
                let after: u64 = parts.headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let message = json["message"].as_str().unwrap();
                assert!(message.contains(tenant), "{message}");
                if message.contains("is full") {
                    out.shed.push((elapsed, after));
                } else {
                    assert!(message.contains("no room"), "{message}");
                    out.timed_out.push((elapsed, after));
                }
                tokio::time::sleep(Duration::from_secs(after).min(BACKOFF)).await;
            }
            other => panic!("unexpected {other}: {body:?}"),
        }
    }
    out
}

/// The most the gate's queue and any one tenant's part of it held, sampled every 100 ms.
async fn sample_queue(cfg: ThrottleConfig, stop: Instant) -> (u64, u64) {
    let (mut most, mut most_one) = (0, 0);
    while Instant::now() < stop {
        for key in cfg.stats().keys {
            most = most.max(key.queue_depth);
            for t in &key.tenants {
                most_one = most_one.max(t.waiting);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (most, most_one)
}

/// The wait-time histogram's values of `model` per `tenant` label, and the names of its
/// per-request series that lack a `tenant` label.
fn waits_by_tenant(
    snapshotter: &Snapshotter,
    model: &str,
) -> (HashMap<String, Vec<f64>>, Vec<String>) {
    let mut waits: HashMap<String, Vec<f64>> = HashMap::new();
    let mut unlabelled = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if !(key.key().labels()).any(|l| l.key() == "model" && l.value() == model) {
            continue;
        }
        let name = key.key().name().to_owned();
        let tenant = key.key().labels().find(|l| l.key() == "tenant");
        let per_request = [
            "bedrock_throttle_admitted_total",
            "bedrock_throttle_waited_total",
            "bedrock_throttle_shed_total",
            "bedrock_throttle_timed_out_total",
            "bedrock_throttle_tokens_reserved_total",
            "bedrock_throttle_tokens_settled_total",
            "bedrock_throttle_wait_seconds",
            "bedrock_throttle_queue_depth",
        ];
        if per_request.contains(&name.as_str()) && tenant.is_none() {
            unlabelled.push(name.clone());
        }
        if let (DebugValue::Histogram(values), Some(t)) = (value, tenant) {
            if name == "bedrock_throttle_wait_seconds" {
                let all = waits.entry(t.value().to_owned()).or_default();
                all.extend(values.iter().map(|v| v.into_inner()));
            }
        }
    }
    (waits, unlabelled)
}

/// What one run saw, from the clients, the upstream and the sampler.
struct Run {
    cfg: ThrottleConfig,
    sent: u64,
    gold_ok: u64,
    bronze_ok: u64,
    shed: Vec<(Duration, u64)>,
    timed_out: Vec<(Duration, u64)>,
    /// Each admitted request's tenant and wait in the gate, the warm-up's included.
    waits: Vec<(String, Duration)>,
    slowest: Duration,
    most_queued: u64,
    most_one_tenant: u64,
}

/// Serves a gateway with `max_queued` places for `model` and runs the clients against it
/// for [`RUN`]; checks what every run promises and returns the figures.
async fn run(model: &str, max_queued: usize) -> Run {
    let cfg = config(max_queued);
    let seen = Upstream::default();
    let accepted = Arc::new(AtomicU64::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, cfg.clone(), seen.clone(), accepted.clone()));
    let path: &'static str = format!(
        "/model/{}/invoke",
        percent_encoding::utf8_percent_encode(model, percent_encoding::NON_ALPHANUMERIC)
    )
    .leak();

    // One request of nearly the whole quota empties the bucket, so no first burst skews
    // the split: from here on admissions come at the quota's pace.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = (sender.send_request(invoke(path, None, TPM - 100)).await).unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();

    let t0 = Instant::now();
    let stop = t0 + RUN;
    let sampler = tokio::spawn(sample_queue(cfg.clone(), stop + MAX_WAIT + LATENCY));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let tenant = if i % 2 == 0 { "gold" } else { "bronze" };
            (tenant, tokio::spawn(client(addr, path, tenant, stop)))
        })
        .collect();
    let mut outcomes: HashMap<&str, Vec<Outcome>> = HashMap::new();
    for (tenant, c) in clients {
        // Nothing hangs: every client is done within its last request's longest path.
        let out = tokio::time::timeout_at(stop + MAX_WAIT + LATENCY + SLACK, c)
            .await
            .expect("a client hung")
            .unwrap();
        outcomes.entry(tenant).or_default().push(out);
    }
    let (most_queued, most_one_tenant) = sampler.await.unwrap();
    let elapsed = t0.elapsed();
    // The last reservations settle as their answers end; then the bucket refills.
    tokio::time::sleep(Duration::from_secs(120)).await;
    server.abort();
    assert_eq!(accepted.load(Ordering::Relaxed), 1 + CONNECTIONS as u64);

    let sum = |f: &dyn Fn(&Outcome) -> u64| -> u64 { outcomes.values().flatten().map(f).sum() };
    let of = |tenant: &str| -> u64 { outcomes[tenant].iter().map(|o| o.ok).sum() };
    let all = |f: &dyn Fn(&Outcome) -> &[(Duration, u64)]| -> Vec<(Duration, u64)> {
        outcomes.values().flatten().flat_map(f).copied().collect()
    };
    let run = Run {
        cfg,
        sent: sum(&|o| o.sent),
        gold_ok: of("gold"),
        bronze_ok: of("bronze"),
        shed: all(&|o| &o.shed),
        timed_out: all(&|o| &o.timed_out),
        waits: seen.waits.lock().unwrap().clone(),
        slowest: (outcomes.values().flatten().map(|o| o.slowest))
            .max()
            .unwrap(),
        most_queued,
        most_one_tenant,
    };
    run.report(max_queued, elapsed);
    run.check(max_queued);
    run
}

impl Run {
    fn gold_part(&self) -> f64 {
        self.gold_ok as f64 / (self.gold_ok + self.bronze_ok) as f64
    }

    fn report(&self, max_queued: usize, elapsed: Duration) {
        let after = |v: &[(Duration, u64)]| {
            let a = v.iter().map(|(_, a)| *a);
            (a.clone().min(), a.max())
        };
        let answered = |v: &[(Duration, u64)]| {
            let e = v.iter().map(|(e, _)| *e);
            (e.clone().min(), e.max())
        };
        println!(
            "max_queued {max_queued}, {CONNECTIONS} connections, {} requests in {elapsed:?}: \
             admitted gold {}, bronze {} (gold {:.3}); shed {} (answered in {:?}, Retry-After {:?} s); \
             timed out {} (answered in {:?}, Retry-After {:?} s); longest gate wait {:?}; \
             slowest answer {:?}; queue at most {} (one tenant {})",
            self.sent,
            self.gold_ok,
            self.bronze_ok,
            self.gold_part(),
            self.shed.len(),
            answered(&self.shed),
            after(&self.shed),
            self.timed_out.len(),
            answered(&self.timed_out),
            after(&self.timed_out),
            self.waits.iter().map(|(_, w)| *w).max().unwrap(),
            self.slowest,
            self.most_queued,
            self.most_one_tenant,
        );
        println!("{}", self.cfg.stats());
    }

    /// What every run promises.
    fn check(&self, max_queued: usize) {
        let (shed, timed_out) = (&self.shed, &self.timed_out);
        // Every request was answered, as a 200 or a 429.
        let answered = self.gold_ok + self.bronze_ok + shed.len() as u64;
        assert_eq!(self.sent, answered + timed_out.len() as u64);
        assert!(!shed.is_empty(), "the load overflows the queue");
        // Shed at once: no shed request waited in the gate.
        let slowest_shed = shed.iter().map(|(e, _)| *e).max().unwrap();
        assert!(slowest_shed < SLACK, "{slowest_shed:?}");
        // A timed-out request waited `max_wait`, not longer.
        for (e, _) in timed_out {
            assert!(*e >= MAX_WAIT && *e <= MAX_WAIT + SLACK, "{e:?}");
        }
        // Every 429 says when to come back.
        assert!(shed.iter().chain(timed_out).all(|(_, a)| *a >= 1));
        // No admitted request waited in the gate longer than `max_wait`.
        let longest_wait = self.waits.iter().map(|(_, w)| *w).max().unwrap();
        assert!(longest_wait <= MAX_WAIT + SLACK, "{longest_wait:?}");
        assert!(
            self.slowest <= MAX_WAIT + LATENCY + SLACK,
            "{:?}",
            self.slowest
        );
        // The queue held at most its bound: 2 × max_queued while tenants compete, no
        // tenant more than max_queued.
        assert!(self.most_queued <= 2 * max_queued as u64);
        assert!(self.most_one_tenant <= max_queued as u64);
        // The quota was used at its pace: about one admission a second after the warm-up.
        let admitted = (self.gold_ok + self.bronze_ok) as f64;
        let seconds = RUN.as_secs_f64();
        assert!(
            admitted >= 0.9 * seconds && admitted <= 1.1 * seconds + 20.0,
            "{admitted}"
        );
        // Admissions split by weight, 3 : 1, under shedding.
        let gold = self.gold_part();
        assert!((0.70..=0.80).contains(&gold), "gold {gold:.3}");

        // The crate's own numbers say the same.
        let stats = self.cfg.stats();
        assert_eq!(stats.keys.len(), 1, "{stats}");
        let key = &stats.keys[0];
        assert_eq!(key.admitted, self.gold_ok + self.bronze_ok + 1);
        assert_eq!(key.admitted, self.waits.len() as u64);
        assert_eq!(key.shed, shed.len() as u64);
        let tenant = |name| key.tenant(Some(name)).unwrap();
        assert_eq!(tenant("gold").admitted, self.gold_ok);
        assert_eq!(tenant("bronze").admitted, self.bronze_ok);
        let stats_timed_out = tenant("gold").timed_out + tenant("bronze").timed_out;
        assert_eq!(stats_timed_out, timed_out.len() as u64);
        assert_eq!(key.timed_out, timed_out.len() as u64);
        // Nothing waits and no reservation leaked: each settled from its reported usage,
        // which was exactly what it reserved, and the bucket is full again.
        assert_eq!(key.queue_depth, 0);
        assert!(key.tenants.iter().all(|t| t.waiting == 0), "{stats}");
        assert_eq!(key.tokens_settled, key.tokens_reserved);
        for t in &key.tenants {
            assert_eq!(t.tokens_settled, t.tokens_reserved, "{:?}", t.tenant);
        }
        assert_eq!(key.tokens_available, Some(TPM as f64));
    }
}

/// A queue that takes longer than `max_wait` to drain (16 to 32 places at one admission a
/// second, against 10 s): some requests time out, each after `max_wait` exactly, and the
/// crate's wait histogram agrees with the timestamps.
#[tokio::test(start_paused = true)]
async fn shedding_keeps_its_promises_behind_a_hyper_server_with_many_connections() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let model = "anthropic.claude-3-5-sonnet-20240620-v1:0";

    let run = run(model, 16).await;
    assert!(!run.timed_out.is_empty(), "some wait longer than max_wait");

    // The wait histogram, per tenant: no admission waited longer than `max_wait`; and
    // every per-request series carries the tenant.
    let (by_tenant, unlabelled) = waits_by_tenant(&snapshotter, model);
    assert!(
        unlabelled.is_empty(),
        "without a tenant label: {unlabelled:?}"
    );
    for tenant in ["gold", "bronze"] {
        let most = by_tenant[tenant].iter().copied().fold(0.0, f64::max);
        assert!(most <= (MAX_WAIT + SLACK).as_secs_f64(), "{tenant}: {most}");
    }
}

/// A queue sized to what `max_wait` drains (5 places, up to 10 while tenants compete, at
/// one admission a second against 10 s): nearly every refusal is a shed, answered at once.
#[tokio::test(start_paused = true)]
async fn a_queue_sized_to_max_wait_refuses_at_once() {
    let run = run("anthropic.claude-3-haiku-20240307-v1:0", 5).await;
    let admitted = run.gold_ok + run.bronze_ok;
    assert!(
        run.timed_out.len() as u64 * 20 <= admitted,
        "{} timed out",
        run.timed_out.len()
    );
}
