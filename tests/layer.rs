//! Behaviour of the whole layer, in virtual time.

mod common;

use std::{
    collections::VecDeque,
    convert::Infallible,
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use bedrock_throttle::{
    estimate::TokenEstimate,
    retry::{Attempts, RetryLayer},
    BedrockThrottleLayer, BoxError, ContextWindow, Quota, QuotaKey, RefusedBy, RetryBudget,
    ThrottleConfig, ThrottleError, ThrottleKind,
};
use bytes::Bytes;
use common::{invoke, throttle, MockBedrock, SONNET_4};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

type Reply = Result<Response<Full<Bytes>>, io::Error>;

/// An upstream that answers from a script (then 200s) and records when it was called.
#[derive(Clone)]
struct Scripted {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl Scripted {
    fn new(replies: Vec<Reply>) -> Self {
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
        Error = io::Error,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        let this = self.clone();
        service_fn(move |_req: Request<Full<Bytes>>| {
            this.calls.lock().unwrap().push(Instant::now());
            let reply = this
                .replies
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Ok(ok()));
            async move { reply }
        })
    }
}

fn ok() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(b"{}")))
}

fn status(code: u16) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn with_header(
    mut r: Response<Full<Bytes>>,
    name: &'static str,
    value: &str,
) -> Response<Full<Bytes>> {
    r.headers_mut().insert(name, value.parse().unwrap());
    r
}

fn config() -> bedrock_throttle::ThrottleConfigBuilder {
    ThrottleConfig::builder().quota(Quota::tokens_per_minute(1_000_000))
}

/// A request with a hand-set estimate of `tokens` input and no output.
fn manual(tokens: u64) -> Request<Full<Bytes>> {
    let mut req = invoke(SONNET_4, "hi", 10);
    req.extensions_mut().insert(TokenEstimate::new(tokens, 0));
    req
}

fn throttle_error(e: &BoxError) -> &ThrottleError {
    e.downcast_ref::<ThrottleError>()
        .unwrap_or_else(|| panic!("not a ThrottleError: {e}"))
}

#[tokio::test(start_paused = true)]
async fn two_throttles_then_success_is_one_call_of_three_attempts() {
    let up = Scripted::new(vec![
        Ok(throttle(
            "Too many tokens, please wait before trying again.",
        )),
        Ok(throttle("x")),
        Ok(ok()),
    ]);
    let svc = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(config().build().unwrap()))
        .service(up.service());
    let resp = svc.oneshot(invoke(SONNET_4, "hello", 100)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.extensions().get::<Attempts>(), Some(&Attempts(3)));
    assert_eq!(up.calls().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_validation_error_is_not_retried() {
    let up = Scripted::new(vec![Ok(with_header(
        status(400),
        "x-amzn-errortype",
        "ValidationException:http://x/",
    ))]);
    let svc = BedrockThrottleLayer::new(config().build().unwrap()).layer(up.service());
    let resp = svc.oneshot(invoke(SONNET_4, "hello", 100)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.extensions().get::<Attempts>(), Some(&Attempts(1)));
    assert_eq!(up.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn when_attempts_run_out_the_last_response_comes_back_as_it_came() {
    let replies = (0..3)
        .map(|_| Ok(with_header(status(503), "x-test", "last")))
        .collect();
    let up = Scripted::new(replies);
    let svc =
        BedrockThrottleLayer::new(config().max_attempts(3).build().unwrap()).layer(up.service());
    let resp = svc.oneshot(invoke(SONNET_4, "hello", 100)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["x-test"], "last");
    assert_eq!(resp.extensions().get::<Attempts>(), Some(&Attempts(3)));
    assert_eq!(up.calls().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn every_retry_after_form_sets_the_exact_wait() {
    for (header, value, expect) in [
        ("retry-after", "7", Duration::from_secs(7)),
        ("x-amz-retry-after", "2500", Duration::from_millis(2_500)),
        ("retry-after-ms", "1200", Duration::from_millis(1_200)),
    ] {
        let up = Scripted::new(vec![Ok(with_header(status(503), header, value))]);
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new(config().build().unwrap()))
            .service(up.service());
        let resp = svc.oneshot(invoke(SONNET_4, "hello", 100)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let calls = up.calls();
        assert_eq!(calls[1] - calls[0], expect, "{header}: {value}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_throttle_with_retry_after_waits_at_least_the_hint_through_the_whole_layer() {
    let up = Scripted::new(vec![Ok(with_header(
        throttle("Too many requests, please wait before trying again."),
        "retry-after",
        "5",
    ))]);
    let svc = BedrockThrottleLayer::new(config().build().unwrap()).layer(up.service());
    let resp = svc.oneshot(invoke(SONNET_4, "hello", 100)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let calls = up.calls();
    assert!(calls[1] - calls[0] >= Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn connection_errors_are_retried_and_end_as_a_typed_error() {
    let refused = || Err(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
    let up = Scripted::new(vec![refused(), refused()]);
    let svc = BedrockThrottleLayer::new(config().build().unwrap()).layer(up.service());
    let resp = svc.oneshot(invoke(SONNET_4, "hello", 100)).await.unwrap();
    assert_eq!(resp.extensions().get::<Attempts>(), Some(&Attempts(3)));

    let up = Scripted::new((0..4).map(|_| refused()).collect());
    let svc =
        BedrockThrottleLayer::new(config().max_attempts(4).build().unwrap()).layer(up.service());
    let err = svc
        .oneshot(invoke(SONNET_4, "hello", 100))
        .await
        .unwrap_err();
    match throttle_error(&err) {
        ThrottleError::Upstream { attempts, source } => {
            assert_eq!(*attempts, 4);
            assert!(source.to_string().contains("refused"));
        }
        other => panic!("{other}"),
    }
    assert_eq!(up.calls().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn an_empty_retry_budget_stops_retrying() {
    // 12 units, 5 per retry: two retries in all, shared by every request of the config.
    let cfg = config()
        .retry_budget(RetryBudget::new(12, 5))
        .build()
        .unwrap();
    let up = Scripted::new((0..10).map(|_| Ok(status(500))).collect());
    let svc = BedrockThrottleLayer::new(cfg).layer(up.service());
    let first = svc
        .clone()
        .oneshot(invoke(SONNET_4, "a", 10))
        .await
        .unwrap();
    assert_eq!(first.extensions().get::<Attempts>(), Some(&Attempts(3)));
    let second = svc.oneshot(invoke(SONNET_4, "b", 10)).await.unwrap();
    assert_eq!(second.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(second.extensions().get::<Attempts>(), Some(&Attempts(1)));
    assert_eq!(up.calls().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn waiting_past_max_wait_fails_before_sending() {
    let cfg = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(1_000))
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let up = Scripted::new(vec![]);
    let svc = BedrockThrottleLayer::new(cfg).layer(up.service());
    svc.clone().oneshot(manual(900)).await.unwrap();
    let start = Instant::now();
    let err = svc.oneshot(manual(900)).await.unwrap_err();
    match throttle_error(&err) {
        ThrottleError::MaxWaitExceeded {
            waited,
            key,
            retry_after,
            tenant,
            refused_by,
        } => {
            assert_eq!(*tenant, None);
            assert_eq!(*refused_by, RefusedBy::ModelQuota);
            assert_eq!(*waited, Duration::from_secs(10));
            // 900 tokens of a 1 000-token minute queued: 54 s to drain.
            assert!(
                (retry_after.as_secs_f64() - 54.0).abs() < 0.01,
                "{retry_after:?}"
            );
            assert_eq!(throttle_error(&err).retry_after(), Some(*retry_after));
            assert_eq!(key.model(), Some(SONNET_4));
        }
        other => panic!("{other}"),
    }
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(up.calls().len(), 1, "the waiting request was never sent");
}

#[tokio::test(start_paused = true)]
async fn an_oversize_body_fails_at_once_and_is_not_sent() {
    let up = Scripted::new(vec![]);
    let svc =
        BedrockThrottleLayer::new(config().body_limit(1_000).build().unwrap()).layer(up.service());
    let start = Instant::now();
    let err = svc
        .oneshot(invoke(SONNET_4, &"x".repeat(2_000), 10))
        .await
        .unwrap_err();
    assert!(matches!(
        throttle_error(&err),
        ThrottleError::BodyTooLarge { limit: 1_000 }
    ));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(up.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_quota_fails_at_once_naming_both() {
    let cfg = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(50_000))
        .build()
        .unwrap();
    let up = Scripted::new(vec![]);
    let svc = BedrockThrottleLayer::new(cfg).layer(up.service());
    // Sonnet 4 burns output 5x: 20,000 max_tokens reserve 100,000 quota tokens.
    let err = svc
        .oneshot(invoke(SONNET_4, "hello", 20_000))
        .await
        .unwrap_err();
    match throttle_error(&err) {
        ThrottleError::NeverFits {
            tokens,
            quota_tokens,
            ..
        } => {
            assert!(*tokens > 100_000);
            assert_eq!(*quota_tokens, 50_000);
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("50000 tokens per period"), "{err}");
    assert!(up.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_gives_its_place_back() {
    let cfg = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(1_000))
        .build()
        .unwrap();
    let up = Scripted::new(vec![]);
    let svc = BedrockThrottleLayer::new(cfg).layer(up.service());
    svc.clone().oneshot(manual(1_000)).await.unwrap(); // the bucket is empty now
    let start = Instant::now();
    // The big request queues first and would be admitted after 54 s; the small one behind it.
    let big = tokio::spawn(svc.clone().oneshot(manual(900)));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let small = tokio::spawn(svc.clone().oneshot(manual(50)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    big.abort();
    small.await.unwrap().unwrap();
    // 50 tokens refill in 3 s: the small request did not wait for the big one's 54 s.
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert_eq!(up.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_large_request_at_the_head_is_not_overtaken_by_small_ones() {
    let cfg = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(6_000))
        .build()
        .unwrap();
    let up = Scripted::new(vec![]);
    let svc = BedrockThrottleLayer::new(cfg).layer(up.service());
    svc.clone().oneshot(manual(6_000)).await.unwrap();
    let start = Instant::now();
    let big = tokio::spawn(svc.clone().oneshot(manual(5_000)));
    // A stream of small requests, each of which would fit long before the big one.
    let mut smalls = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        smalls.push(tokio::spawn(svc.clone().oneshot(manual(10))));
    }
    big.await.unwrap().unwrap();
    // 5,000 tokens (plus 100 ms of headroom) at 100/s: admitted at 50.1 s, not after the small ones.
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(50) && waited < Duration::from_millis(50_200),
        "{waited:?}"
    );
    for s in smalls {
        s.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn layers_and_clones_from_one_config_share_one_budget() {
    let cfg = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(1_000))
        .build()
        .unwrap();
    let up = Scripted::new(vec![]);
    let a = BedrockThrottleLayer::new(cfg.clone()).layer(up.service());
    let b = BedrockThrottleLayer::new(cfg).layer(up.service());
    a.clone().oneshot(manual(900)).await.unwrap();
    let start = Instant::now();
    b.oneshot(manual(900)).await.unwrap();
    // The second layer saw the first one's spending: 800 tokens at 1,000/min.
    assert!(
        start.elapsed() >= Duration::from_secs(48),
        "{:?}",
        start.elapsed()
    );

    // A separately built config is a separate budget.
    let other = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(1_000))
        .build()
        .unwrap();
    let c = BedrockThrottleLayer::new(other).layer(up.service());
    let start = Instant::now();
    c.oneshot(manual(900)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
}

/// An upstream that answers like Converse: usage only in the JSON body.
fn converse_upstream(
    calls: Arc<Mutex<u32>>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |_req: Request<Full<Bytes>>| {
        *calls.lock().unwrap() += 1;
        async {
            Ok(Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},"stopReason":"end_turn","usage":{"inputTokens":900,"outputTokens":100,"totalTokens":1000}}"#,
                )))
                .unwrap())
        }
    })
}

fn converse_request(max_tokens: u64) -> Request<Full<Bytes>> {
    let mut req = Request::post("/model/amazon.nova-pro-v1%3A0/converse")
        .body(Full::new(Bytes::from(format!(
            r#"{{"inferenceConfig":{{"maxTokens":{max_tokens}}}}}"#
        ))))
        .unwrap();
    req.extensions_mut()
        .insert(TokenEstimate::new(1_000, max_tokens));
    req
}

#[tokio::test(start_paused = true)]
async fn a_converse_body_settles_the_reservation_when_read() {
    let cfg = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(10_000))
        .build()
        .unwrap();
    let calls = Arc::new(Mutex::new(0));
    let svc = BedrockThrottleLayer::new(cfg).layer(converse_upstream(calls.clone()));
    // Reserves 1,000 + 8,000; uses 1,000.
    let resp = svc.clone().oneshot(converse_request(8_000)).await.unwrap();
    resp.into_body().collect().await.unwrap();
    let start = Instant::now();
    svc.oneshot(converse_request(8_000)).await.unwrap();
    // 9,000 left after settlement: the second needs 0 s of refill, not 48 s.
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn an_unread_body_keeps_the_whole_reservation() {
    let cfg = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(10_000))
        .build()
        .unwrap();
    let calls = Arc::new(Mutex::new(0));
    let svc = BedrockThrottleLayer::new(cfg).layer(converse_upstream(calls.clone()));
    drop(svc.clone().oneshot(converse_request(8_000)).await.unwrap());
    let start = Instant::now();
    svc.oneshot(converse_request(8_000)).await.unwrap();
    // 1,000 left; 8,000 more take 48 s at 10,000/min.
    assert!(
        start.elapsed() >= Duration::from_secs(48),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn usage_headers_settle_at_the_response_head() {
    // The mock reports usage in headers; a thousand requests of 5,000 reserved tokens each
    // pass a 60,000-token quota in far less time than their reservations would allow.
    let mut upstream = MockBedrock::new(None, 60_000);
    upstream.base_latency = Duration::ZERO;
    upstream.per_token = Duration::ZERO;
    let cfg = ThrottleConfig::builder()
        .model_quota(SONNET_4, Quota::tokens_per_minute(60_000))
        .build()
        .unwrap();
    let mut svc = BedrockThrottleLayer::new(cfg).layer(upstream.clone());
    let start = Instant::now();
    for _ in 0..20 {
        let resp = svc
            .ready()
            .await
            .unwrap()
            .call(invoke(SONNET_4, "hi", 1_000))
            .await
            .unwrap();
        drop(resp); // headers settled already: the body need not be read
    }
    let stats = upstream.stats();
    let billed: u64 = stats.billed_per_minute.iter().sum();
    // Without settlement 20 × 5,001 tokens would need 40 s of refill past the first 60,000.
    let reserved_time = Duration::from_secs_f64((20.0 * 5_001.0 - 60_000.0) / 1_000.0);
    assert!(start.elapsed() < reserved_time, "{:?}", start.elapsed());
    assert!(billed < 20 * 5_001);
    assert_eq!(stats.throttled, 0);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_throttle_slows_the_gate_down() {
    // The upstream throttles once; the retried attempt must wait for its tokens to refill
    // at the cut rate, since the bucket the gate believed in was wrong.
    let cfg = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(60_000))
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(1))
        .build()
        .unwrap();
    let up = Scripted::new(vec![Ok(throttle(
        "Too many tokens, please wait before trying again.",
    ))]);
    let svc = BedrockThrottleLayer::new(cfg).layer(up.service());
    svc.oneshot(manual(7_000)).await.unwrap();
    let calls = up.calls();
    // 7,000 tokens at 1,000/s × 0.7 (rising): at least 7 s.
    assert!(
        calls[1] - calls[0] >= Duration::from_secs(7),
        "{:?}",
        calls[1] - calls[0]
    );
}

#[tokio::test(start_paused = true)]
async fn count_tokens_is_free() {
    let cfg = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(100))
        .build()
        .unwrap();
    let up = Scripted::new(vec![]);
    let svc = BedrockThrottleLayer::new(cfg).layer(up.service());
    let start = Instant::now();
    for _ in 0..10 {
        let req = Request::post("/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/count-tokens")
            .body(Full::new(Bytes::from("x".repeat(4_000))))
            .unwrap();
        svc.clone().oneshot(req).await.unwrap();
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_hand_set_estimate_skips_body_parsing() {
    let cfg = config().build().unwrap();
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let svc = BedrockThrottleLayer::new(cfg).layer(service_fn(move |req: Request<Full<Bytes>>| {
        *seen2.lock().unwrap() = req.extensions().get::<TokenEstimate>().cloned();
        async { Ok::<_, Infallible>(ok()) }
    }));
    let mut req = Request::post("/model/m/invoke")
        .body(Full::new(Bytes::from_static(b"\xff not json")))
        .unwrap();
    req.extensions_mut().insert(TokenEstimate::new(123, 45));
    svc.oneshot(req).await.unwrap();
    let e = seen.lock().unwrap().clone().unwrap();
    assert_eq!((e.input_tokens(), e.output_limit()), (123, 45));
    assert_eq!(e.key().and_then(|k| k.model()), Some("m"));
}

#[tokio::test(start_paused = true)]
async fn composes_with_tower_buffer_concurrency_limit_and_timeout() {
    let upstream = MockBedrock::new(Some(100), 200_000);
    let cfg = ThrottleConfig::builder()
        .quota(Quota::new(100, 200_000))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .buffer(256)
        .layer(BedrockThrottleLayer::new(cfg))
        .concurrency_limit(8)
        .timeout(Duration::from_secs(30))
        .service(upstream.clone());
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let resp = svc
                    .oneshot(invoke(SONNET_4, &"word ".repeat(100 + i), 300))
                    .await?;
                let status = resp.status();
                resp.into_body().collect().await?;
                Ok::<_, BoxError>(status)
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), StatusCode::OK);
    }
    let stats = upstream.stats();
    assert_eq!(stats.admitted, 200);
    assert_eq!(stats.throttled, 0);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_below_the_gate_is_retried_then_reported() {
    let slow = service_fn(|_req: Request<Full<Bytes>>| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, Infallible>(ok())
    });
    let cfg = config().max_attempts(2).build().unwrap();
    let svc = ServiceBuilder::new()
        .layer(BedrockThrottleLayer::new(cfg))
        .timeout(Duration::from_secs(5))
        .service(slow);
    let err = svc.oneshot(invoke(SONNET_4, "hi", 10)).await.unwrap_err();
    match throttle_error(&err) {
        ThrottleError::Upstream { attempts, source } => {
            assert_eq!(*attempts, 2);
            assert!(source.is::<tower::timeout::error::Elapsed>());
        }
        other => panic!("{other}"),
    }
}

/// An error response with a JSON body, and an `x-amzn-errortype` when given.
fn json_error(code: u16, error_type: Option<&str>, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    if let Some(t) = error_type {
        r = with_header(r, "x-amzn-errortype", t);
    }
    r
}

/// The layer of [`an_upstream_throttle_slows_the_gate_down`], over `up`.
fn slowed_by_throttles(
    up: &Scripted,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<impl http_body::Body>,
    Error = BoxError,
    Future = impl Send,
> {
    let cfg = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(60_000))
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(1))
        .build()
        .unwrap();
    BedrockThrottleLayer::new(cfg).layer(up.service())
}

#[tokio::test(start_paused = true)]
async fn a_context_length_error_about_too_many_tokens_is_no_throttle() {
    let up = Scripted::new(vec![Ok(json_error(
        400,
        Some("ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        r#"{"message":"Too many tokens, please wait before trying again."}"#,
    ))]);
    let resp = slowed_by_throttles(&up)
        .oneshot(manual(7_000))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.extensions().get::<ThrottleKind>(), None);
    assert_eq!(up.calls().len(), 1, "a validation error is final");
}

#[tokio::test(start_paused = true)]
async fn a_model_not_ready_429_is_retried_without_slowing_the_gate() {
    let up = Scripted::new(vec![Ok(json_error(
        429,
        Some("ModelNotReadyException"),
        r#"{"message":"Model is not ready for inference. Too many requests"}"#,
    ))]);
    let resp = slowed_by_throttles(&up)
        .oneshot(manual(7_000))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let calls = up.calls();
    assert_eq!(calls.len(), 2);
    // Its reservation came back and no budget was cut: the retry waits only its backoff.
    assert!(
        calls[1] - calls[0] < Duration::from_secs(1),
        "{:?}",
        calls[1] - calls[0]
    );
}

#[tokio::test(start_paused = true)]
async fn a_throttle_named_only_in_its_body_slows_the_gate_and_is_retried() {
    // No header: the body's `__type` names the throttle, as the AWS SDK reads it.
    let up = Scripted::new(vec![Ok(json_error(
        400,
        None,
        r#"{"__type":"com.amazon.coral#ThrottlingException","message":"Too many tokens, please wait before trying again."}"#,
    ))]);
    slowed_by_throttles(&up)
        .oneshot(manual(7_000))
        .await
        .unwrap();
    let calls = up.calls();
    assert_eq!(calls.len(), 2);
    assert!(
        calls[1] - calls[0] >= Duration::from_secs(7),
        "{:?}",
        calls[1] - calls[0]
    );
}

/// Sonnet 4's cross-Region profile with a small standard quota and a large 1M-context one.
fn sonnet_with_long_context() -> ThrottleConfig {
    ThrottleConfig::builder()
        .model_quota(SONNET_4, Quota::tokens_per_minute(60_000))
        .long_context_quota(SONNET_4, Quota::tokens_per_minute(1_200_000))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_request_over_200k_input_tokens_spends_the_1m_context_quota() {
    let cfg = sonnet_with_long_context();
    let up = Scripted::new(vec![]);
    let svc = BedrockThrottleLayer::new(cfg.clone()).layer(up.service());
    let start = Instant::now();
    // 250K input tokens never fit the standard 60K quota; they fit the 1M-context one.
    svc.clone().oneshot(manual(250_000)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    let long = QuotaKey::new(Some(SONNET_4), None).with_context(ContextWindow::OneMillion);
    assert_eq!(
        cfg.effective_quota(&long).map(|q| q.tokens()),
        Some(1_200_000)
    );
    let standard = QuotaKey::new(Some(SONNET_4), None);
    assert_eq!(
        cfg.effective_quota(&standard),
        None,
        "the standard key was never used"
    );
}

#[tokio::test(start_paused = true)]
async fn the_1m_beta_flag_spends_its_own_bucket_while_the_standard_one_is_empty() {
    let cfg = sonnet_with_long_context();
    let up = Scripted::new(vec![]);
    let svc = BedrockThrottleLayer::new(cfg.clone()).layer(up.service());
    // Empty the standard bucket.
    svc.clone().oneshot(manual(60_000)).await.unwrap();
    let start = Instant::now();
    let body = serde_json::json!({
        "anthropic_version": "bedrock-2023-05-31",
        "anthropic_beta": ["context-1m-2025-08-07"],
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hello"}],
    });
    let mut flagged = invoke(SONNET_4, "", 100);
    *flagged.body_mut() = Full::new(Bytes::from(body.to_string()));
    svc.clone().oneshot(flagged).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "the 1M bucket was full");
    // The same request without the flag waits for the standard bucket to refill.
    svc.clone()
        .oneshot(invoke(SONNET_4, "hello", 100))
        .await
        .unwrap();
    assert!(start.elapsed() > Duration::ZERO);
    let keys: Vec<_> = cfg
        .stats()
        .keys
        .into_iter()
        .map(|k| k.key.context())
        .collect();
    assert!(keys.contains(&ContextWindow::OneMillion), "{keys:?}");
    assert!(keys.contains(&ContextWindow::Standard), "{keys:?}");
}
