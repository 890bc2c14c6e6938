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
const MAX_QUEUED: usize = 16;
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

fn config() -> ThrottleConfig {
    ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(TPM).with_burndown(1.0))
        .headroom(Duration::ZERO)
        .max_queued(MAX_QUEUED)
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

fn invoke(tenant: Option<&str>, max_tokens: u64) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Summarise the history of the Broad Street pump."}],
    });
    let mut request = Request::post("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke")
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
async fn client(addr: SocketAddr, tenant: &'static str, stop: Instant) -> Outcome {
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
            .send_request(invoke(Some(tenant), MAX_TOKENS))
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

/// The wait-time histogram's values per `tenant` label, and every series' name whose
/// per-request counts lack a `tenant` label.
fn waits_by_tenant(snapshotter: &Snapshotter) -> (HashMap<String, Vec<f64>>, Vec<String>) {
    let mut waits: HashMap<String, Vec<f64>> = HashMap::new();
    let mut unlabelled = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let name = key.key().name().to_owned();
        let tenant = key.key().labels().find(|l| l.key() == "tenant");
        let per_request = [
            "bedrock_throttle_admitted_total",
            "bedrock_throttle_waited_total",
            "bedrock_throttle_shed_total",
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

#[tokio::test(start_paused = true)]
async fn shedding_keeps_its_promises_behind_a_hyper_server_with_many_connections() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let cfg = config();
    let seen = Upstream::default();
    let accepted = Arc::new(AtomicU64::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, cfg.clone(), seen.clone(), accepted.clone()));

    // One request of nearly the whole quota empties the bucket, so no first burst skews
    // the split: from here on admissions come at the quota's pace.
    let warm_up = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let response = sender.send_request(invoke(None, TPM - 100)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    });
    warm_up.await.unwrap();

    let t0 = Instant::now();
    let stop = t0 + RUN;
    let sampler = tokio::spawn(sample_queue(cfg.clone(), stop + MAX_WAIT + LATENCY));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let tenant = if i % 2 == 0 { "gold" } else { "bronze" };
            (tenant, tokio::spawn(client(addr, tenant, stop)))
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
    assert_eq!(accepted.load(Ordering::Relaxed), 1 + CONNECTIONS as u64);

    let sum =
        |tenant: &str, f: &dyn Fn(&Outcome) -> u64| -> u64 { outcomes[tenant].iter().map(f).sum() };
    let all = |f: &dyn Fn(&Outcome) -> Vec<(Duration, u64)>| -> Vec<(Duration, u64)> {
        outcomes.values().flatten().flat_map(f).collect()
    };
    let sent = sum("gold", &|o| o.sent) + sum("bronze", &|o| o.sent);
    let (gold_ok, bronze_ok) = (sum("gold", &|o| o.ok), sum("bronze", &|o| o.ok));
    let shed = all(&|o| o.shed.clone());
    let timed_out = all(&|o| o.timed_out.clone());
    let slowest = (outcomes.values().flatten().map(|o| o.slowest))
        .max()
        .unwrap();
    let waits = seen.waits.lock().unwrap().clone();
    let longest_wait = waits.iter().map(|(_, w)| *w).max().unwrap();
    let gold_part = gold_ok as f64 / (gold_ok + bronze_ok) as f64;
    let slowest_shed = shed.iter().map(|(e, _)| *e).max().unwrap();
    let timeouts = timed_out.iter().map(|(e, _)| *e);
    let (first_timeout, last_timeout) = (timeouts.clone().min(), timeouts.max());
    let after = |v: &[(Duration, u64)]| {
        let a: Vec<u64> = v.iter().map(|(_, a)| *a).collect();
        (a.iter().min().copied(), a.iter().max().copied())
    };
    println!(
        "{CONNECTIONS} connections, {sent} requests in {elapsed:?}: admitted gold {gold_ok}, bronze {bronze_ok} \
         (gold {gold_part:.3}); shed {} (answered within {slowest_shed:?}, Retry-After {:?} s); \
         timed out {} (answered after {first_timeout:?}..{last_timeout:?}, Retry-After {:?} s); \
         longest gate wait {longest_wait:?}; slowest answer {slowest:?}; \
         queue at most {most_queued} (one tenant {most_one_tenant})",
        shed.len(),
        after(&shed),
        timed_out.len(),
        after(&timed_out),
    );

    // Every request was answered, as a 200 or a 429.
    assert_eq!(
        sent,
        gold_ok + bronze_ok + shed.len() as u64 + timed_out.len() as u64
    );
    assert!(!shed.is_empty(), "the load overflows the queue");
    // Shed at once: no refused request waited in the gate.
    assert!(slowest_shed < SLACK, "{slowest_shed:?}");
    // A timed-out request waited `max_wait`, not longer.
    if let (Some(first), Some(last)) = (first_timeout, last_timeout) {
        assert!(
            first >= MAX_WAIT && last <= MAX_WAIT + SLACK,
            "{first:?}..{last:?}"
        );
    }
    // Every 429 says when to come back.
    assert!(shed.iter().chain(&timed_out).all(|(_, a)| *a >= 1));
    // No admitted request waited in the gate longer than `max_wait`.
    assert!(longest_wait <= MAX_WAIT + SLACK, "{longest_wait:?}");
    assert!(slowest <= MAX_WAIT + LATENCY + SLACK, "{slowest:?}");
    // The queue held at most its bound (2 × max_queued while tenants compete, no tenant
    // more than max_queued).
    assert!(most_queued <= 2 * MAX_QUEUED as u64, "{most_queued}");
    assert!(most_one_tenant <= MAX_QUEUED as u64, "{most_one_tenant}");
    // The quota was used at its pace: about one admission a second after the warm-up.
    let admitted = (gold_ok + bronze_ok) as f64;
    let seconds = RUN.as_secs_f64();
    assert!(
        admitted >= 0.9 * seconds && admitted <= 1.1 * seconds + 20.0,
        "{admitted}"
    );
    // Admissions split by weight, 3 : 1, under shedding.
    assert!((0.70..=0.80).contains(&gold_part), "gold {gold_part:.3}");

    // The crate's own numbers say the same.
    let stats = cfg.stats();
    assert_eq!(stats.keys.len(), 1, "{stats}");
    let key = &stats.keys[0];
    println!("{stats}");
    assert_eq!(key.admitted, gold_ok + bronze_ok + 1);
    assert_eq!(key.admitted, waits.len() as u64);
    assert_eq!(key.shed, shed.len() as u64);
    let tenant = |name| key.tenant(Some(name)).unwrap();
    assert_eq!(tenant("gold").admitted, gold_ok);
    assert_eq!(tenant("bronze").admitted, bronze_ok);
    assert_eq!(
        tenant("gold").timed_out + tenant("bronze").timed_out,
        timed_out.len() as u64
    );
    // Nothing waits and no reservation leaked: each settled from its reported usage,
    // which was exactly what it reserved, and the bucket is full again.
    assert_eq!(key.queue_depth, 0);
    assert!(key.tenants.iter().all(|t| t.waiting == 0), "{stats}");
    assert_eq!(key.tokens_settled, key.tokens_reserved);
    for t in &key.tenants {
        assert_eq!(t.tokens_settled, t.tokens_reserved, "{:?}", t.tenant);
    }
    assert_eq!(key.tokens_available, Some(TPM as f64));

    // The wait histogram, per tenant: no admission waited longer than `max_wait`.
    let (by_tenant, unlabelled) = waits_by_tenant(&snapshotter);
    assert!(
        unlabelled.is_empty(),
        "series without a tenant label: {unlabelled:?}"
    );
    for tenant in ["gold", "bronze"] {
        let w = &by_tenant[tenant];
        let most = w.iter().copied().fold(0.0, f64::max);
        assert!(most <= (MAX_WAIT + SLACK).as_secs_f64(), "{tenant}: {most}");
    }
    server.abort();
}
