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
use common::invoke;
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
