//! The fuzz targets' bodies, shared by the cargo-fuzz binaries (`fuzz/fuzz_targets/`) and
//! the stable-Rust replay of the corpus (`tests/fuzz_corpus.rs`). Each takes arbitrary
//! bytes and panics only on a bug.

pub mod script;

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::ready,
    sync::{Arc, Mutex},
    time::Duration,
};

use bedrock_throttle::{
    estimate::{HeuristicEstimator, Operation, RequestInfo, TokenEstimate, TokenEstimator},
    gate::GateLayer,
    BedrockThrottleLayer, BoxError, Quota, QuotaKey, TenantPolicy, ThrottleConfig,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use script::{Call, Input, Reply, SLOW_MODEL, TENANT_HEADER};
use tokio::time::{timeout, Instant};
use tower::{service_fn, Layer, Service, ServiceExt};

/// Model ids the first byte of an estimator input picks from; 255 and above take the id
/// from the input itself.
pub const MODELS: &[&str] = &[
    "anthropic.claude-sonnet-4-20250514-v1:0",
    "us.anthropic.claude-3-5-haiku-20241022-v1:0",
    "anthropic.claude-v2:1",
    "amazon.titan-text-express-v1",
    "amazon.titan-embed-text-v2:0",
    "eu.amazon.nova-pro-v1:0",
    "meta.llama3-1-70b-instruct-v1:0",
    "mistral.mistral-large-2407-v1:0",
    "cohere.command-r-plus-v1:0",
    "cohere.embed-multilingual-v3",
    "ai21.jamba-1-5-mini-v1:0",
    "arn%3Aaws%3Abedrock%3Aus-west-2%3A%3Afoundation-model%2Fmeta.llama3-8b-instruct-v1%3A0",
];

const OPERATIONS: &[Operation] = &[
    Operation::Invoke,
    Operation::InvokeStream,
    Operation::Converse,
    Operation::ConverseStream,
    Operation::CountTokens,
    Operation::Other,
];

/// The body estimator. Input: a model byte (an index into [`MODELS`], or, past its end, a
/// model id up to the first newline of the rest), an operation byte, then the body.
pub fn estimate(data: &[u8]) {
    let [model, op, rest @ ..] = data else {
        return;
    };
    let (model, body) = match MODELS.get(usize::from(*model)) {
        Some(m) => (Some((*m).to_owned()), rest),
        None => {
            let (id, body) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            (Some(String::from_utf8_lossy(id).into_owned()), body)
        }
    };
    let operation = OPERATIONS[usize::from(*op) % OPERATIONS.len()];
    let info = RequestInfo {
        model: model.as_deref(),
        operation,
        body,
    };
    let e = HeuristicEstimator::new().estimate(&info);
    if operation == Operation::CountTokens {
        assert_eq!(
            (e.input_tokens, e.output_limit),
            (0, 0),
            "CountTokens is free"
        );
    }
    // The path form of the same request parses too.
    let path = format!("/model/{}/invoke", model.unwrap_or_default());
    let from_path = RequestInfo::from_path(&path, body);
    HeuristicEstimator::new().estimate(&from_path);
}

/// The model id / operation parser. Input: a path, optionally a newline and a Host header.
pub fn path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (path, host) = match text.split_once('\n') {
        Some((p, h)) => (p, Some(h)),
        None => (&*text, None),
    };
    // Every string parses as a `RequestInfo` path.
    let info = RequestInfo::from_path(path, b"{}");
    if let Some(m) = info.model {
        assert!(path.contains(m), "the model id is a part of the path");
    }
    // A key comes from any request `http` accepts.
    let mut builder = Request::post(path);
    if let Some(h) = host {
        builder = builder.header("host", h);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (key, _operation) = QuotaKey::from_request(&request);
    let _ = key.to_string();
    if let Some(m) = key.model() {
        assert!(!m.is_empty(), "no empty model id");
    }
}

/// The event-stream reader, through the gate: an InvokeModelWithResponseStream answer of
/// arbitrary bytes. Input: a chunk-size byte, then the body, delivered in chunks of that
/// size (plus one). The bytes reach the caller unchanged; when the first frame turned the
/// response into an error, its body is a prefix of them.
pub fn event_stream(data: &[u8]) {
    let [chunk, body @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk) + 1;
    let input = Bytes::copy_from_slice(body);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = ThrottleConfig::builder()
            .quota(Quota::new(None, 1_000_000))
            .build()
            .unwrap();
        let upstream_body = input.clone();
        let gate = GateLayer::new(cfg).layer(service_fn(move |_: Request<Full<Bytes>>| {
            let chunks = upstream_body
                .chunks(chunk)
                .map(Bytes::copy_from_slice)
                .collect();
            ready(Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/vnd.amazon.eventstream")
                    .body(Chunks(chunks))
                    .unwrap(),
            ))
        }));
        let mut req = Request::post(
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke-with-response-stream",
        )
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
        req.extensions_mut().insert(TokenEstimate::new(100, 100));
        let response = gate.oneshot(req).await.expect("the upstream never fails");
        let status = response.status();
        let out = response.into_body().collect().await.unwrap().to_bytes();
        if status.is_success() {
            assert_eq!(out, input, "the stream passes unchanged");
        } else {
            assert!(
                [429, 500, 503].contains(&status.as_u16()),
                "only a first-frame exception becomes an error: {status}"
            );
            assert!(input.starts_with(&out), "the exception frame as it came");
        }
    });
}

/// A body that yields its chunks one per poll, as a server flushes frames.
struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// Longest a request may take, in virtual time, before it counts as hung: every attempt's
/// `max_wait`, latency and retry wait many times over.
pub const HANG: Duration = Duration::from_secs(30 * 60);
/// How long a caller reads a response body before it gives up on it (a stalled body is
/// the upstream's fault, not the throttle's).
pub const BODY_READ: Duration = Duration::from_secs(60);

/// The config of the `response` target: small quotas, few quick retries, a tenant header
/// with a capped tenant, and one model whose refill is under a token a second.
pub fn response_config() -> ThrottleConfig {
    config(Quota::new(60, 100_000))
}

/// [`response_config`] with `quota` for every model but [`SLOW_MODEL`].
pub fn config(quota: Quota) -> ThrottleConfig {
    ThrottleConfig::builder()
        .quota(quota)
        .model_quota(
            SLOW_MODEL,
            Quota::new(10, 2_000).with_period(Duration::from_secs(3_600)),
        )
        .max_attempts(3)
        .base_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(100))
        .max_retry_after(Duration::from_secs(3))
        .max_wait(Duration::from_secs(120))
        .tenant_header(TENANT_HEADER)
        .tenant("capped", TenantPolicy::weight(2.0).with_cap(0.5))
        .build()
        .unwrap()
}

/// Whole responses through the layer: statuses, every header the throttle reads, bodies
/// (JSON usage, throttle messages, event streams, garbage) delivered in chunks, broken off
/// or stalled. Input: a mode byte (bit 0: the gate alone, estimating from Content-Length),
/// a count byte (1 to 4 requests), four bytes per request ([`Call::decode`]), then the
/// upstream's replies ([`Reply::decode`]) until the input ends; after them the upstream is
/// healthy.
///
/// The requests run in sequence in paused virtual time. A panic, a request that does not
/// end within [`HANG`], or a key whose ledger is not back to full once the traffic has
/// stopped long enough ([`assert_back_to_full`]) is a bug.
pub fn response(data: &[u8]) {
    let mut input = Input::new(data);
    let gate_only = input.byte() & 1 == 1;
    let calls: Vec<Call> = (0..=input.byte() % 4)
        .map(|_| Call::decode(&mut input))
        .collect();
    let mut replies = VecDeque::new();
    while !input.is_empty() && replies.len() < 16 {
        replies.push_back(Reply::decode(&mut input));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let cfg = response_config();
        let script = Arc::new(Mutex::new(replies));
        let upstream = script::upstream(move || {
            script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(Reply::healthy)
        });
        for (i, call) in calls.iter().enumerate() {
            let request = call.request();
            if gate_only {
                let svc = GateLayer::new(cfg.clone()).layer(upstream.clone());
                send(svc, request, &format!("request {i} {call:?}, gate alone")).await;
            } else {
                let svc = BedrockThrottleLayer::new(cfg.clone()).layer(upstream.clone());
                send(svc, request, &format!("request {i} {call:?}")).await;
            }
        }
        assert_back_to_full(&cfg, 20).await;
    });
}

/// How a request sent with [`send`] ended.
#[derive(Debug)]
#[allow(dead_code)] // the soak (tests/broken_upstream.rs) reads the fields
pub enum Sent {
    /// A response, its status and whether its body was read to its end.
    Response(u16, BodyEnd),
    /// An error from the layer.
    Error(BoxError),
}

/// How a response body read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    Whole,
    Failed,
    Stalled,
}

/// Sends `request` and reads the response body; panics with `what` when the request does
/// not end within [`HANG`] of virtual time.
pub async fn send<S, B>(svc: S, request: Request<Full<Bytes>>, what: &str) -> Sent
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>,
    B: http_body::Body,
{
    let result = timeout(HANG, svc.oneshot(request))
        .await
        .unwrap_or_else(|_| panic!("{what}: no response or error after {HANG:?}: hung"));
    let response = match result {
        Ok(r) => r,
        Err(e) => return Sent::Error(e),
    };
    let status = response.status().as_u16();
    let end = match timeout(BODY_READ, response.into_body().collect()).await {
        Ok(Ok(_)) => BodyEnd::Whole,
        Ok(Err(_)) => BodyEnd::Failed,
        Err(_) => BodyEnd::Stalled,
    };
    Sent::Response(status, end)
}

/// After the traffic, `periods` of the longest quota period later: no key has a request
/// queued, and for every gated key a request reserving exactly its whole token quota (a
/// hand-set estimate, no output) is sent upstream at once; for the tenant `capped` (half
/// of each quota) the same with half. Returns what failed, one line each.
///
/// `periods` must cover a rate cut to its floor (1 %) climbing back to the quota: the curve
/// takes about 8 recovery times of 1.5 quota periods, 12 periods; 20 leave room.
pub async fn back_to_full(cfg: &ThrottleConfig, periods: u32) -> Vec<String> {
    let longest = cfg
        .stats()
        .keys
        .iter()
        .filter_map(|k| k.quota)
        .map(|q| q.period())
        .max()
        .unwrap_or(Duration::from_secs(60));
    tokio::time::sleep(longest * periods).await;
    let stats = cfg.stats();
    let mut failures: Vec<String> = stats
        .keys
        .iter()
        .filter(|k| k.queue_depth != 0)
        .map(|k| {
            format!(
                "{}: {} requests still queued after the traffic stopped",
                k.key, k.queue_depth
            )
        })
        .collect();
    for tenant in [None, Some("capped")] {
        for k in &stats.keys {
            let (Some(quota), Some(model)) = (k.quota, k.key.model()) else {
                continue;
            };
            let tokens = match tenant {
                None => quota.tokens(),
                Some(_) => (quota.tokens() / 2).max(1),
            };
            failures.extend(probe(cfg, &k.key, model, tokens, tenant).await);
            // The probe took the buckets, and models not yet proven share one stage: let
            // them fill again before the next probe.
            tokio::time::sleep(longest * periods).await;
        }
    }
    failures
}

/// [`back_to_full`], panicking on the first failure.
pub async fn assert_back_to_full(cfg: &ThrottleConfig, periods: u32) {
    if let Some(f) = back_to_full(cfg, periods).await.first() {
        panic!("{f}");
    }
}

/// One request of `tokens` for `model` against a healthy upstream, which must be sent at
/// once and answered 200; otherwise what happened.
async fn probe(
    cfg: &ThrottleConfig,
    key: &QuotaKey,
    model: &str,
    tokens: u64,
    tenant: Option<&str>,
) -> Option<String> {
    let called = Arc::new(Mutex::new(None));
    let seen = called.clone();
    let healthy = script::upstream(move || {
        *seen.lock().unwrap() = Some(Instant::now());
        Reply::healthy()
    });
    let svc = BedrockThrottleLayer::new(cfg.clone()).layer(healthy);
    let mut request = script::invoke(model, "{}".to_owned());
    request
        .extensions_mut()
        .insert(TokenEstimate::new(tokens, 0));
    if let Some(t) = tenant {
        request
            .headers_mut()
            .insert(TENANT_HEADER, http::HeaderValue::from_str(t).unwrap());
    }
    let start = Instant::now();
    let what = format!("{key}: a request of {tokens} tokens (tenant {tenant:?})");
    let sent = send(svc, request, &what).await;
    let called = *called.lock().unwrap();
    if called != Some(start) {
        return Some(format!(
            "{what} was not sent at once: the ledger is not back to full after the traffic \
             stopped (sent after {:?}, ended as {sent:?}; {:?})",
            called.map(|c| c - start),
            cfg.stats().key(key)
        ));
    }
    match sent {
        Sent::Response(200, _) => None,
        other => Some(format!("{what}: {other:?}")),
    }
}
