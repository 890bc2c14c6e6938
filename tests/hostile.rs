//! Hostile and broken input through the whole layer: numbers from the wire that would
//! overflow, panic or poison a key are bounded before they are used.

mod common;

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bedrock_throttle::{
    estimate::TokenEstimate, gate::GateLayer, BedrockThrottleLayer, Overload, Quota, TenantPolicy,
    ThrottleConfig, ThrottleError,
};
use bytes::Bytes;
use common::{invoke, status_kib};
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

/// An upstream that answers from a script (then plain 200s) and records when it was called.
#[derive(Clone, Default)]
struct Scripted {
    replies: Arc<Mutex<VecDeque<Response<Full<Bytes>>>>>,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl Scripted {
    fn new(replies: Vec<Response<Full<Bytes>>>) -> Self {
        Self {
            replies: Arc::new(Mutex::new(replies.into())),
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().clone()
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        let this = self.clone();
        service_fn(move |_req: Request<Full<Bytes>>| {
            this.calls.lock().unwrap().push(Instant::now());
            let reply = this.replies.lock().unwrap().pop_front().unwrap_or_else(|| {
                Response::builder()
                    .header("x-amzn-bedrock-input-token-count", "10")
                    .header("x-amzn-bedrock-output-token-count", "10")
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .unwrap()
            });
            async move { Ok::<_, Infallible>(reply) }
        })
    }
}

fn reply(status: u16, headers: &[(&str, &str)], body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn absurd_retry_after_hints_are_clamped_not_panicked_on() {
    for (name, value) in [
        ("retry-after", "99999999999999999999"),
        ("retry-after", "1e300"),
        ("x-amz-retry-after", "1e30"),
        ("retry-after-ms", "1e300"),
    ] {
        let upstream = Scripted::new(vec![
            reply(429, &[(name, value)], r#"{"message":"Too many requests"}"#),
            reply(503, &[(name, value)], ""),
        ]);
        let cfg = ThrottleConfig::builder()
            .quota(Quota::new(100, 1_000_000))
            .max_retry_after(Duration::from_secs(7))
            .build()
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(BedrockThrottleLayer::new(cfg))
            .service(upstream.service());
        let start = Instant::now();
        let response = svc.oneshot(invoke(MODEL, "hello", 100)).await.unwrap();
        assert_eq!(response.status(), 200, "{name}: {value}");
        let calls = upstream.calls();
        assert_eq!(calls.len(), 3, "{name}: {value}");
        // Each retry waited the clamp, max_retry_after, and no longer.
        assert_eq!(
            calls[1] - calls[0],
            Duration::from_secs(7),
            "{name}: {value}"
        );
        assert_eq!(
            calls[2] - calls[1],
            Duration::from_secs(7),
            "{name}: {value}"
        );
        assert!(Instant::now() - start < Duration::from_secs(15));
    }
}

/// A request body that sends its first bytes, then nothing, never ending (a client that
/// stopped sending); built from whole bytes (as the layers rebuild it) it is complete.
struct Stalling {
    data: Option<Bytes>,
    stall: bool,
}

impl From<Bytes> for Stalling {
    fn from(b: Bytes) -> Self {
        Self {
            data: Some(b),
            stall: false,
        }
    }
}

impl http_body::Body for Stalling {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        match self.data.take() {
            Some(d) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(d)))),
            None if self.stall => std::task::Poll::Pending,
            None => std::task::Poll::Ready(None),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_that_never_ends_times_out_and_gives_its_place_back() {
    let cfg = ThrottleConfig::builder()
        .quota(Quota::new(100, 1_000_000))
        .max_queued(1)
        .overload(Overload::Backpressure)
        .body_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let calls = Arc::new(Mutex::new(0u32));
    let counted = calls.clone();
    let upstream = service_fn(move |_req: Request<Stalling>| {
        *counted.lock().unwrap() += 1;
        async {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("x-amzn-bedrock-input-token-count", "10")
                    .header("x-amzn-bedrock-output-token-count", "10")
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .unwrap(),
            )
        }
    });
    let svc = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg))
        .service(upstream);
    let json: &'static [u8] = br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let body = |stall: bool| Stalling {
        data: Some(Bytes::from_static(if stall { &json[..20] } else { json })),
        stall,
    };
    let path = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke";
    let start = Instant::now();
    let stalled = tokio::spawn(
        svc.clone()
            .oneshot(Request::post(path).body(body(true)).unwrap()),
    );
    tokio::task::yield_now().await;
    // The only place is held while the first body is read; the second waits for it.
    let second = tokio::spawn(svc.oneshot(Request::post(path).body(body(false)).unwrap()));
    let err = stalled.await.unwrap().unwrap_err();
    match err.downcast_ref::<ThrottleError>() {
        Some(ThrottleError::BodyTimeout { timeout }) => {
            assert_eq!(*timeout, Duration::from_secs(10))
        }
        other => panic!("{other:?}: {err}"),
    }
    assert_eq!(Instant::now() - start, Duration::from_secs(10));
    let response = second.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        *calls.lock().unwrap(),
        1,
        "the stalled request was never sent"
    );
}

#[tokio::test(start_paused = true)]
async fn renaming_the_tenant_does_not_escape_the_default_cap() {
    let cfg = ThrottleConfig::builder()
        .quota(Quota::new(None, 100_000))
        .headroom(Duration::ZERO)
        .max_wait(Duration::from_secs(600))
        .tenant_header("x-tenant")
        .default_tenant(TenantPolicy::weight(1.0).with_cap(0.1))
        .tenant("paid", TenantPolicy::weight(1.0))
        .build()
        .unwrap();
    // Every answer reports the whole reservation used.
    let full = || {
        reply(
            200,
            &[
                ("x-amzn-bedrock-input-token-count", "5000"),
                ("x-amzn-bedrock-output-token-count", "0"),
            ],
            "{}",
        )
    };
    let upstream = Scripted::new((0..10).map(|_| full()).collect());
    let svc = ServiceBuilder::new()
        .layer(GateLayer::new(cfg))
        .service(upstream.service());
    let request = |tenant: &str| {
        let mut r = Request::post(format!("/model/{}/invoke", MODEL.replace(':', "%3A")))
            .header("x-tenant", tenant)
            .body(Full::new(Bytes::new()))
            .unwrap();
        r.extensions_mut().insert(TokenEstimate::new(5_000, 0));
        r
    };
    let start = Instant::now();
    // Nine requests, each under a name never seen before (and two without any name): the
    // default cap of 10,000 tokens admits two of them at once, not all.
    let mut calls = Vec::new();
    for i in 0..9 {
        calls.push(tokio::spawn(
            svc.clone().oneshot(request(&format!("rotating-{i}"))),
        ));
    }
    tokio::task::yield_now().await;
    let at_once = upstream.calls().iter().filter(|t| **t == start).count();
    assert_eq!(at_once, 2, "{:?}", upstream.calls());
    // A tenant with a policy of its own is not in that cap.
    svc.clone().oneshot(request("paid")).await.unwrap();
    assert_eq!(Instant::now(), start);
    for c in calls {
        c.await.unwrap().unwrap();
    }
    // The rest came at the cap's pace: 7 × 5,000 tokens at 10,000 a minute.
    assert!(
        Instant::now() - start >= Duration::from_secs(209),
        "{:?}",
        Instant::now() - start
    );
}

#[tokio::test(start_paused = true)]
async fn invented_host_headers_share_one_quota() {
    let cfg = ThrottleConfig::builder()
        .quota(Quota::new(None, 100_000))
        .headroom(Duration::ZERO)
        .build()
        .unwrap();
    let full = || {
        reply(
            200,
            &[
                ("x-amzn-bedrock-input-token-count", "50000"),
                ("x-amzn-bedrock-output-token-count", "0"),
            ],
            "{}",
        )
    };
    let upstream = Scripted::new((0..20).map(|_| full()).collect());
    let svc = ServiceBuilder::new()
        .layer(GateLayer::new(cfg.clone()))
        .service(upstream.service());
    let start = Instant::now();
    // Twenty requests, each naming a Region of its own in an origin-form request's Host.
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let mut r = Request::post(format!("/model/{}/invoke", MODEL.replace(':', "%3A")))
                .header("host", format!("bedrock-runtime.xx-fake-{i}.amazonaws.com"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            r.extensions_mut().insert(TokenEstimate::new(50_000, 0));
            tokio::spawn(svc.clone().oneshot(r))
        })
        .collect();
    tokio::task::yield_now().await;
    // One quota of 100,000 tokens: two of them at once, not twenty.
    let at_once = upstream.calls().iter().filter(|t| **t == start).count();
    assert_eq!(at_once, 2);
    for c in calls {
        let _ = c.await.unwrap();
    }
    assert_eq!(cfg.stats().keys.len(), 1, "{:?}", cfg.stats().keys);
}

#[tokio::test(start_paused = true)]
async fn an_unmetered_call_in_flight_holds_no_back_pressure_place() {
    let cfg = ThrottleConfig::builder()
        .model_quota(MODEL, Quota::new(100, 1_000_000))
        .max_queued(1)
        .overload(Overload::Backpressure)
        .build()
        .unwrap();
    // Upstream takes ten minutes to answer.
    let upstream = service_fn(|_req: Request<Full<Bytes>>| async {
        tokio::time::sleep(Duration::from_secs(600)).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    });
    let svc = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg))
        .service(upstream);
    let start = Instant::now();
    // Free at Bedrock (CountTokens), and a model without a quota: neither is metered.
    for path in [
        format!("/model/{}/count-tokens", MODEL.replace(':', "%3A")),
        "/model/somebody.unlisted-model/invoke".to_owned(),
    ] {
        let body = Full::new(Bytes::from_static(br#"{"messages":[]}"#));
        tokio::spawn(svc.clone().oneshot(Request::post(path).body(body).unwrap()));
    }
    tokio::task::yield_now().await;
    // Both calls are in flight; the one place is free for the next caller at once.
    let mut next = svc.clone();
    tokio::time::timeout(Duration::from_secs(1), next.ready())
        .await
        .expect("poll_ready is not held up by unmetered calls in flight")
        .unwrap();
    assert_eq!(Instant::now(), start);
}

#[tokio::test(start_paused = true)]
async fn retrying_a_model_without_a_quota_keeps_no_state_for_it() {
    let cfg = ThrottleConfig::builder()
        .model_quota(MODEL, Quota::new(100, 1_000_000))
        .build()
        .unwrap();
    let upstream = Scripted::new(vec![reply(503, &[], ""), reply(503, &[], "")]);
    let svc = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg.clone()))
        .service(upstream.service());
    let response = svc
        .oneshot(invoke("somebody.unlisted-model-v1", "hello", 10))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.calls().len(), 3, "retried twice");
    assert!(cfg.stats().keys.is_empty(), "{:?}", cfg.stats().keys);
}

/// A request of `model` for `tenant`, estimated by hand at `tokens`.
fn gated(model: &str, tenant: &str, tokens: u64) -> Request<Full<Bytes>> {
    let mut r = Request::post(format!(
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/{model}/invoke"
    ))
    .header("x-tenant", tenant)
    .body(Full::new(Bytes::new()))
    .unwrap();
    r.extensions_mut().insert(TokenEstimate::new(tokens, 0));
    r
}

/// Bedrock's answer to a model id it does not know.
fn unknown_model() -> Response<Full<Bytes>> {
    reply(
        404,
        &[("x-amzn-errortype", "ValidationException")],
        r#"{"message":"The provided model identifier is invalid."}"#,
    )
}

/// A million requests, each with a model id and a tenant never seen before, through one
/// gate against an upstream that refuses unknown ids as Bedrock does: every one ends, the
/// state and the metric series stay bounded, and the invented ids together never hold more
/// than one default quota at upstream.
#[test]
fn a_million_invented_model_ids_hold_bounded_state_and_one_quota() {
    const REQUESTS: u64 = 1_000_000;
    const WORKERS: u64 = 256;
    const QUOTA: u64 = 100_000;
    const TOKENS: u64 = 1_000;
    let real = "amazon.nova-micro-v1:0";
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let cfg = ThrottleConfig::builder()
        .quota(Quota::new(None, QUOTA))
        .tenant_header("x-tenant")
        .build()
        .unwrap();
    // Tokens the upstream holds for invented ids at once, and the most it ever held.
    let held = Arc::new(Mutex::new((0u64, 0u64)));
    let upstream = {
        let held = held.clone();
        service_fn(move |req: Request<Full<Bytes>>| {
            let invented = !req.uri().path().contains(real);
            let held = held.clone();
            async move {
                if !invented {
                    return Ok::<_, Infallible>(reply(
                        200,
                        &[
                            ("x-amzn-bedrock-input-token-count", "10"),
                            ("x-amzn-bedrock-output-token-count", "10"),
                        ],
                        "{}",
                    ));
                }
                {
                    let mut h = held.lock().unwrap();
                    h.0 += TOKENS;
                    h.1 = h.1.max(h.0);
                }
                // Answer after the other callers have had their turn, so requests overlap.
                tokio::task::yield_now().await;
                held.lock().unwrap().0 -= TOKENS;
                Ok(unknown_model())
            }
        })
    };
    let svc = ServiceBuilder::new()
        .layer(GateLayer::new(cfg.clone()))
        .service(upstream);
    let rss_before = status_kib("VmRSS");
    let started = std::time::Instant::now();
    let (ended, rss_peak) = metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let workers: Vec<_> = (0..WORKERS)
                .map(|w| {
                    let svc = svc.clone();
                    tokio::spawn(async move {
                        let (mut ended, mut peak) = (0u64, 0u64);
                        for i in (w..REQUESTS).step_by(WORKERS as usize) {
                            // Now and then a real model, which upstream answers.
                            let model = if i % 10_000 == 0 {
                                real.to_owned()
                            } else {
                                format!("invented.model-{i}-v1%3A0")
                            };
                            let r = svc
                                .clone()
                                .oneshot(gated(&model, &format!("tenant-{i}"), TOKENS))
                                .await
                                .unwrap();
                            assert!(matches!(r.status().as_u16(), 200 | 404), "{r:?}");
                            ended += 1;
                            if w == 0 && i % 100_000 == 0 {
                                peak = peak.max(status_kib("VmRSS"));
                            }
                        }
                        (ended, peak)
                    })
                })
                .collect();
            let mut total = (0, 0);
            for w in workers {
                let (ended, peak) = w.await.unwrap();
                total = (total.0 + ended, total.1.max(peak));
            }
            total
        })
    });
    let elapsed = started.elapsed();
    let rss_after = status_kib("VmRSS");
    assert_eq!(ended, REQUESTS, "every request ended");

    // The invented ids waited in their Region's one stage of unproven models: never more
    // than one quota's worth at upstream at once (256 callers would hold 256,000 tokens).
    let most_held = held.lock().unwrap().1;
    assert!(most_held <= QUOTA, "{most_held} tokens held at once");
    assert!(
        most_held >= QUOTA / 2,
        "the stage was the limit: {most_held}"
    );

    // State: at most `max_keys` (1,024) invented ids hold a key, the rest share `(other)`;
    // the real model has its own.
    let stats = cfg.stats();
    assert!(stats.keys.len() <= 1_026, "{} keys", stats.keys.len());
    let other = stats
        .key(&bedrock_throttle::QuotaKey::new(
            Some("(other)"),
            Some("us-east-1"),
        ))
        .expect("the overflow key");
    assert!(other.admitted > 900_000, "{other:?}");
    assert!(stats
        .key(&bedrock_throttle::QuotaKey::new(
            Some(real),
            Some("us-east-1")
        ))
        .is_some());

    // Metric series: one set per key that holds state, so at most 1,026 model labels.
    let labels: std::collections::HashSet<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(k, _, _, _)| {
            k.key()
                .labels()
                .find(|l| l.key() == "model")
                .map(|l| l.value().to_owned())
        })
        .collect();
    assert!(labels.len() <= 1_026, "{} model labels", labels.len());
    assert!(labels.contains("(other)") && labels.contains(real));

    // Memory: 1,026 keys of about 4 KiB, their ~15,000 series in the debugging recorder,
    // the bounded sets of names and idle tenants: a few MiB (measured: about 21 MiB with
    // the allocator's slack, the test's own tasks and the other tests of this binary).
    // Unbounded, each id kept about 10 KiB here: some 10 GiB for a million.
    let grown_kib = rss_after.max(rss_peak).saturating_sub(rss_before);
    eprintln!(
        "{REQUESTS} requests in {elapsed:?}; RSS {rss_before} KiB before, {rss_peak} KiB peak sampled, {rss_after} KiB after; {} keys, {} model labels, {most_held} tokens held at most",
        stats.keys.len(),
        labels.len()
    );
    assert!(grown_kib < 64 * 1024, "RSS grew by {grown_kib} KiB");
}

/// Invented ids that upstream charges (a 500 keeps the whole reservation) spend from their
/// Region's one stage of unproven models, at the pace of one default quota; a real model,
/// once upstream has answered it, has its own key and is not held back by them.
#[tokio::test(start_paused = true)]
async fn invented_ids_spend_one_quota_and_a_proven_model_is_not_held_back() {
    const QUOTA: u64 = 10_000;
    let real = "amazon.nova-micro-v1:0";
    let cfg = ThrottleConfig::builder()
        .quota(Quota::new(None, QUOTA))
        .headroom(Duration::ZERO)
        .max_wait(Duration::from_secs(3_600))
        .build()
        .unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let upstream = {
        let calls = calls.clone();
        service_fn(move |req: Request<Full<Bytes>>| {
            let invented = !req.uri().path().contains(real);
            if invented {
                calls.lock().unwrap().push(Instant::now());
            }
            async move {
                Ok::<_, Infallible>(if invented {
                    reply(
                        500,
                        &[("x-amzn-errortype", "InternalServerException")],
                        "{}",
                    )
                } else {
                    reply(
                        200,
                        &[
                            ("x-amzn-bedrock-input-token-count", "1000"),
                            ("x-amzn-bedrock-output-token-count", "0"),
                        ],
                        "{}",
                    )
                })
            }
        })
    };
    let svc = ServiceBuilder::new()
        .layer(GateLayer::new(cfg.clone()))
        .service(upstream);
    // The real model's first answer proves it.
    let r = svc.clone().oneshot(gated(real, "a", 1_000)).await.unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::advance(Duration::from_secs(60)).await;

    let start = Instant::now();
    let invented: Vec<_> = (0..100)
        .map(|i| {
            let req = gated(&format!("invented-{i}"), "b", 1_000);
            tokio::spawn(svc.clone().oneshot(req))
        })
        .collect();
    tokio::task::yield_now().await;
    // Each id alone would fit its own fresh key: together they got one quota's bucket.
    assert_eq!(calls.lock().unwrap().len(), 10);
    // The proven model is admitted at once, at its own key, while they wait.
    for _ in 0..9 {
        let r = svc.clone().oneshot(gated(real, "a", 1_000)).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(Instant::now(), start);
    for c in invented {
        assert_eq!(c.await.unwrap().unwrap().status(), 500);
    }
    // 100 × 1,000 tokens at 10,000 a minute, after the first full bucket: nine minutes,
    // and no minute's window saw more than a bucket plus a minute's refill.
    let calls = calls.lock().unwrap().clone();
    assert!(Instant::now() - start >= Duration::from_secs(539));
    for (i, t) in calls.iter().enumerate() {
        let in_window = calls[i..]
            .iter()
            .take_while(|u| **u - *t < Duration::from_secs(60))
            .count() as u64;
        assert!(
            in_window * 1_000 <= 2 * QUOTA,
            "{in_window} calls in a minute"
        );
    }
    // Sustained, one quota a minute: the first bucket, then its refill.
    let span = (*calls.last().unwrap() - calls[0]).as_secs_f64();
    let spent = calls.len() as f64 * 1_000.0;
    assert!(
        spent <= QUOTA as f64 * (1.0 + span / 60.0),
        "{spent} in {span} s"
    );
    let stats = cfg.stats();
    let key = |m: &str| bedrock_throttle::QuotaKey::new(Some(m), Some("us-east-1"));
    assert_eq!(stats.key(&key(real)).unwrap().admitted, 10);
    assert_eq!(stats.key(&key("invented-7")).unwrap().admitted, 1);
}

/// Past `max_keys` a new model spends from the overflow key until an idle key at rest can
/// be evicted; then it gets a key of its own and the evicted ones are gone from the stats.
#[tokio::test(start_paused = true)]
async fn idle_keys_at_rest_make_room_for_a_new_model() {
    let cfg = ThrottleConfig::builder()
        .quota(Quota::new(None, 10_000))
        .max_keys(2)
        .build()
        .unwrap();
    // `a` and `b` are real models; `x` is invented.
    let ok = || {
        reply(
            200,
            &[
                ("x-amzn-bedrock-input-token-count", "10"),
                ("x-amzn-bedrock-output-token-count", "10"),
            ],
            "{}",
        )
    };
    let upstream = Scripted::new(vec![ok(), unknown_model()]);
    let svc = ServiceBuilder::new()
        .layer(GateLayer::new(cfg.clone()))
        .service(upstream.service());
    let models = |cfg: &ThrottleConfig| -> Vec<String> {
        let stats = cfg.stats();
        stats
            .keys
            .iter()
            .map(|k| k.key.model().unwrap_or_default().to_owned())
            .collect()
    };
    for model in ["a", "x", "b"] {
        svc.clone().oneshot(gated(model, "t", 100)).await.unwrap();
    }
    // `a` and `x` hold the two places; `b` (proven by its answer) spent from the overflow key.
    assert_eq!(models(&cfg), ["(other)", "a", "x"]);
    tokio::time::advance(Duration::from_secs(601)).await;
    svc.clone().oneshot(gated("b", "t", 100)).await.unwrap();
    assert_eq!(models(&cfg), ["(other)", "b"]);
}
