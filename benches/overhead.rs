//! What the throttle costs per request, in CPU, when its quota never binds.
//!
//! `cargo bench --bench overhead -- --warm-up-time 1 --measurement-time 3`
//!
//! - `per_request/*`: one InvokeModel call and its body, one after another on a
//!   current-thread runtime, against the Bedrock-style mock of the tests (zero latency, a
//!   quota that never binds): the bare mock; the mock under `BedrockThrottleLayer` (estimate
//!   → retry → gate); the mock under tower's `RateLimit` over `Retry` (a fixed-rate limit
//!   that never binds and a retry-on-429 policy), the nearest stack tower offers; and the
//!   gate alone, with the estimate set by hand (what the estimate and retry layers add is
//!   the difference). Requests are built before the clock starts.
//! - `admission/threads_{1,2}`: throughput of the whole layer on a multi-thread runtime of
//!   1 and 2 workers, 64 callers sharing one quota key (one ledger lock).
//! - `queued_10k/*`: one request that queues behind 0 or 10,000 waiters, is polled once
//!   (registers its waker and timer) and is cancelled: the cost a waiter adds to the queue.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    convert::Infallible,
    future::{ready, Ready},
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use bedrock_throttle::{
    estimate::TokenEstimate, gate::GateLayer, BedrockThrottleLayer, Quota, ThrottleConfig,
};
use bytes::Bytes;
use common::{invoke, MockBedrock, SONNET_4};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

/// The mock of the tests with no latency and a quota that never binds.
fn mock() -> MockBedrock {
    let mut m = MockBedrock::new(None, u64::MAX / 4);
    m.base_latency = Duration::ZERO;
    m.per_token = Duration::ZERO;
    m
}

fn unbounded() -> ThrottleConfig {
    ThrottleConfig::builder()
        .model_quota(SONNET_4, Quota::new(None, u64::MAX / 4))
        .build()
        .unwrap()
}

fn requests(n: u64) -> Vec<Request<Full<Bytes>>> {
    (0..n)
        .map(|_| invoke(SONNET_4, "Summarise the quota rules in one line.", 256))
        .collect()
}

/// Requests that carry their estimate, as the estimate layer leaves them.
fn estimated(n: u64) -> Vec<Request<Full<Bytes>>> {
    let mut reqs = requests(n);
    for r in &mut reqs {
        r.extensions_mut().insert(TokenEstimate::new(12, 256));
    }
    reqs
}

/// Retry on 429 (never taken here): what a tower user would write.
#[derive(Clone)]
struct RetryThrottled(u32);

impl<E> tower::retry::Policy<Request<Full<Bytes>>, Response<Full<Bytes>>, E> for RetryThrottled {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _: &mut Request<Full<Bytes>>,
        result: &mut Result<Response<Full<Bytes>>, E>,
    ) -> Option<Ready<()>> {
        match result {
            Ok(r) if r.status() == 429 && self.0 > 0 => {
                self.0 -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        let mut r = Request::new(req.body().clone());
        *r.method_mut() = req.method().clone();
        *r.uri_mut() = req.uri().clone();
        *r.headers_mut() = req.headers().clone();
        Some(r)
    }
}

/// Calls `svc` once per prepared request, reading each body; the time of the calls only.
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

fn per_request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("per_request");
    group.throughput(Throughput::Elements(1));
    group.bench_function("bare_mock", |b| {
        let mut svc = mock();
        b.iter_custom(|iters| run(&rt, &mut svc, requests(iters)))
    });
    group.bench_function("bedrock_throttle_layer", |b| {
        let mut svc = BedrockThrottleLayer::new(unbounded()).layer(mock());
        b.iter_custom(|iters| run(&rt, &mut svc, requests(iters)))
    });
    group.bench_function("gate_only", |b| {
        let mut svc = GateLayer::new(unbounded()).layer(mock());
        b.iter_custom(|iters| run(&rt, &mut svc, estimated(iters)))
    });
    group.bench_function("tower_rate_limit_retry", |b| {
        let _guard = rt.enter();
        let mut svc = ServiceBuilder::new()
            .rate_limit(1 << 40, Duration::from_secs(1))
            .retry(RetryThrottled(3))
            .service(mock());
        b.iter_custom(|iters| run(&rt, &mut svc, requests(iters)))
    });
    group.finish();
}

fn admission(c: &mut Criterion) {
    const CALLERS: u64 = 64;
    let mut group = c.benchmark_group("admission");
    group.throughput(Throughput::Elements(1));
    for threads in [1, 2] {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap();
        let svc = BedrockThrottleLayer::new(unbounded()).layer(mock());
        group.bench_function(BenchmarkId::new("threads", threads), |b| {
            b.iter_custom(|iters| {
                let per_caller = iters.div_ceil(CALLERS);
                let batches: Vec<_> = (0..CALLERS).map(|_| requests(per_caller)).collect();
                rt.block_on(async {
                    let start = Instant::now();
                    let tasks: Vec<_> = batches
                        .into_iter()
                        .map(|reqs| {
                            let mut svc = svc.clone();
                            tokio::spawn(async move {
                                for req in reqs {
                                    let resp = svc.ready().await.unwrap().call(req).await.unwrap();
                                    black_box(resp.into_body().collect().await.unwrap());
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                    // Per request, as criterion counts `iters`.
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per_caller * CALLERS) as f64)
                })
            })
        });
    }
    group.finish();
}

fn queued(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("queued_10k");
    for waiters in [0usize, 10_000] {
        // A quota of 1,000 tokens a year, spent by the first request: everything after it
        // queues.
        let cfg = ThrottleConfig::builder()
            .quota(Quota::new(None, 1_000).with_period(Duration::from_secs(365 * 86_400)))
            .build()
            .unwrap();
        let mut gate = GateLayer::new(cfg).layer(service_fn(|_: Request<Full<Bytes>>| {
            ready(Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))))
        }));
        let request = |tokens: u64| {
            let mut r = Request::post("/model/m/invoke")
                .body(Full::new(Bytes::new()))
                .unwrap();
            r.extensions_mut().insert(TokenEstimate::new(tokens, 0));
            r
        };
        let first = gate.call(request(1_000));
        let mut queue: Vec<_> = (0..waiters)
            .map(|_| tokio_test::task::spawn(gate.call(request(1))))
            .collect();
        for w in &mut queue {
            assert!(w.poll().is_pending());
        }
        let queue = Arc::new(queue);
        group.bench_function(BenchmarkId::new("enqueue_poll_cancel", waiters), |b| {
            b.iter(|| {
                let mut w = tokio_test::task::spawn(gate.call(request(1)));
                assert!(w.poll().is_pending());
                drop(w);
            })
        });
        drop(queue);
        drop(first);
    }
    group.finish();
}

criterion_group!(benches, per_request, admission, queued);
criterion_main!(benches);
