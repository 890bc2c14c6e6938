//! The HTTP side: the accept loop and the request handler of every operation.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};

use super::config::{Faults, LatencyModel, OutputLength};
use super::quota::{Ledger, Reservation};
use super::request::{converse_facts, invoke_facts, parse_path, BodyShape, Operation};
use super::wire::{
    chunk_frame, error_response, event_frame, exception_frame, json_response, output_text,
    throttle_response, validation_response, EmulatorBody, MSG_MALFORMED, MSG_TOO_LONG,
    MSG_TOO_MANY_TOKENS,
};

/// The largest request body bedrock-runtime accepts.
const MAX_BODY_BYTES: usize = 25_000_000;

/// How many distinct request bodies [`Shared::request_rng`] remembers before it starts over.
const MAX_SEEN_BODIES: usize = 100_000;

/// Everything the handler needs, shared by all connections.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) latency: LatencyModel,
    pub(crate) chars_per_token: f64,
    pub(crate) tokens_per_message: u64,
    pub(crate) output: OutputLength,
    pub(crate) faults: Faults,
    pub(crate) slow_delay: Duration,
    pub(crate) seed: u64,
    pub(crate) burndown: HashMap<String, u64>,
    pub(crate) max_output: HashMap<String, u64>,
    pub(crate) context_window: u64,
    pub(crate) model_context_windows: HashMap<String, u64>,
    pub(crate) stream_chunk_tokens: u64,
    /// How long after arrival the quota check counts a request.
    pub(crate) admission_delay: Duration,
    /// Whether a request without `Authorization` is refused.
    pub(crate) require_authorization: bool,
    /// How often each (model, operation, body) was seen: the per-request random numbers
    /// depend on it, so identical requests still differ and arrival order never matters
    /// between different bodies.
    pub(crate) seen: Mutex<HashMap<u64, u64>>,
    /// What `ListServiceQuotas` answers.
    pub(crate) service_quotas: Vec<super::service_quotas::ListedQuota>,
}

impl Shared {
    pub(crate) fn burndown(&self, model: &str) -> u64 {
        self.burndown
            .get(model)
            .copied()
            .unwrap_or_else(|| crate::default_burndown(model).round() as u64)
    }

    pub(crate) fn max_output(&self, model: &str) -> u64 {
        self.max_output
            .get(model)
            .copied()
            .unwrap_or_else(|| crate::estimate::default_output_limit(model))
    }

    pub(crate) fn context_window(&self, model: &str) -> u64 {
        self.model_context_windows
            .get(model)
            .copied()
            .unwrap_or(self.context_window)
    }

    /// A random number generator for one request, from the seed, the request's content and
    /// how many identical requests came before it.
    pub(crate) fn request_rng(&self, model: &str, op: Operation, body: &[u8]) -> fastrand::Rng {
        let mut h = Fnv::new();
        h.write(model.as_bytes());
        h.write(&[op as u8]);
        h.write(body);
        let hash = h.0;
        let n = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            // Bound the memory of a long load run with distinct bodies; only repeats of one
            // body across the reset see different numbers than they would have.
            if seen.len() >= MAX_SEEN_BODIES {
                seen.clear();
            }
            let n = seen.entry(hash).or_insert(0);
            *n += 1;
            *n
        };
        fastrand::Rng::with_seed(splitmix(self.seed ^ splitmix(hash ^ splitmix(n))))
    }

    pub(crate) fn draw_output(&self, rng: &mut fastrand::Rng, limit: u64) -> u64 {
        let n = match self.output {
            OutputLength::Fixed(n) => n,
            OutputLength::Uniform { min, max } => {
                let (lo, hi) = if min <= max { (min, max) } else { (max, min) };
                rng.u64(lo..=hi)
            }
            OutputLength::MaxTokens => limit,
            OutputLength::PercentOfLimit { min, max } => {
                let (lo, hi) = if min <= max { (min, max) } else { (max, min) };
                let percent = rng.u64(lo..=hi);
                (u128::from(limit) * u128::from(percent) + 50)
                    .div_euclid(100)
                    .try_into()
                    .unwrap_or(u64::MAX)
            }
        };
        n.min(limit)
    }
}

/// 64-bit FNV-1a: a stable hash (std's hasher may change between releases).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The handler's way of closing a connection without a response: hyper drops the
/// connection when the service fails.
#[derive(Debug)]
pub(crate) struct DroppedConnection;

impl fmt::Display for DroppedConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("emulated fault: connection dropped without a response")
    }
}

impl std::error::Error for DroppedConnection {}

/// Accepts connections until `shutdown` changes or its sender is dropped; the connections
/// still open then are aborted with the `JoinSet`.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = Arc::clone(&shared);
                    conns.spawn(async move {
                        let svc = service_fn(move |req| handle(Arc::clone(&shared), req));
                        if let Err(e) = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await
                        {
                            tracing::debug!(error = %e, "emulator connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "emulator accept failed");
                    sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
}

pub(crate) fn request_id(rng: &mut fastrand::Rng) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        rng.u32(..),
        rng.u16(..),
        rng.u16(..0x1000),
        rng.u16(0x8000..0xc000),
        rng.u64(..1 << 48)
    )
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Handles one request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<EmulatorBody>, DroppedConnection> {
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    if let Err((error_type, message)) = super::auth::check(&headers, shared.require_authorization) {
        let rid = "00000000-0000-4000-8000-000000000000";
        return Ok(error_response(
            super::auth::STATUS,
            error_type,
            message,
            rid,
        ));
    }
    let route = parse_path(&path);
    let method_ok = req.method() == Method::POST;
    let service_quotas = super::service_quotas::target(req.headers())
        .map(|t| (t, super::service_quotas::region(req.headers())));
    let bytes = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(validation_response(
                "Request body too large or unreadable.",
                "00000000-0000-4000-8000-000000000000",
            ))
        }
    };
    if let Some((target, region)) = service_quotas.filter(|_| method_ok) {
        return Ok(super::service_quotas::handle(
            &shared.service_quotas,
            &target,
            &region,
            &bytes,
        ));
    }
    if method_ok && super::openai::is_route(&path) {
        return Ok(super::openai::handle(shared, bytes).await);
    }
    let Some((model, op)) = route.filter(|_| method_ok) else {
        return Ok(error_response(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            "The requested operation is not recognized by the service.",
            "00000000-0000-4000-8000-000000000000",
        ));
    };
    let mut rng = shared.request_rng(&model, op, &bytes);
    let rid = request_id(&mut rng);
    if op == Operation::CountTokens {
        return Ok(count_tokens(&shared, &model, &bytes, &rid));
    }
    let ledger = &shared.ledger;
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            ledger.with_stats(&model, |s| {
                s.requests += 1;
                s.validation_errors += 1;
            });
            return Ok(validation_response(MSG_MALFORMED, &rid));
        }
    };
    // The tier: reserved capacity is a quota of its own, the others share the model's.
    let tier = match super::tiers::of_request(op, &headers, &body) {
        Ok(tier) => tier,
        Err(()) => {
            ledger.with_stats(&model, |s| {
                s.requests += 1;
                s.validation_errors += 1;
            });
            return Ok(validation_response(super::tiers::MSG_BAD_TIER, &rid));
        }
    };
    let quota_key = super::tiers::quota_key(&model, tier);
    ledger.with_stats(&quota_key, |s| s.requests += 1);
    let facts = if op.is_converse() {
        converse_facts(&body)
    } else {
        invoke_facts(&body)
    };
    let input = facts.input_tokens(shared.chars_per_token, shared.tokens_per_message);
    if input > shared.context_window(&model) {
        ledger.with_stats(&quota_key, |s| s.validation_errors += 1);
        return Ok(validation_response(MSG_TOO_LONG, &rid));
    }
    let limit = facts
        .max_tokens
        .or(facts.shape_default_max)
        .unwrap_or_else(|| shared.max_output(&model));
    let burndown = shared.burndown(&model);

    // Always draw the same numbers in the same order, whichever faults are enabled, so one
    // seed gives the same output lengths with or without faults.
    let faults = shared.faults;
    let r503 = rng.f64();
    let r500 = rng.f64();
    let rdrop = rng.f64();
    let rslow = rng.f64();
    let rthrottle = rng.f64();
    let output = shared.draw_output(&mut rng, limit);
    // Drawn last, so adding it changed none of the numbers above for a given seed.
    let rfirst_throttle = rng.f64();

    if r503 < faults.http_503 {
        ledger.with_stats(&quota_key, |s| {
            s.faults += 1;
            s.faults_503 += 1;
        });
        return Ok(error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.",
            &rid,
        ));
    }
    if r500 < faults.http_500 {
        ledger.with_stats(&quota_key, |s| {
            s.faults += 1;
            s.faults_500 += 1;
        });
        return Ok(error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            "The server encountered an internal error while processing the request.",
            &rid,
        ));
    }

    if op.is_stream() && rfirst_throttle < faults.stream_throttle_first {
        ledger.with_stats(&quota_key, |s| {
            s.faults += 1;
            s.faults_stream_throttle_first += 1;
        });
        return Ok(stream_response(
            EmulatorBody::full(exception_frame("throttlingException", MSG_TOO_MANY_TOKENS)),
            &rid,
            op.is_converse(),
        ));
    }

    if !shared.admission_delay.is_zero() {
        sleep(shared.admission_delay).await;
    }
    let reserve = input.saturating_add(limit.saturating_mul(burndown));
    // The 1M-context variant spends a quota of its own.
    let quota_key = match crate::bedrock::context::context_window(&bytes, input) {
        crate::ContextWindow::OneMillion => super::long_context_key(&quota_key),
        _ => quota_key,
    };
    let reservation = match ledger.reserve(&quota_key, reserve) {
        Ok(r) => r.with_input(input),
        Err(refusal) => {
            tracing::debug!(%quota_key, reserve, ?refusal, "emulator throttled a request");
            return Ok(throttle_response(refusal, &rid));
        }
    };

    let extra = if rslow < faults.slow {
        ledger.with_stats(&quota_key, |s| {
            s.faults += 1;
            s.faults_slow += 1;
        });
        shared.slow_delay
    } else {
        Duration::ZERO
    };

    if rdrop < faults.drop_connection {
        ledger.with_stats(&quota_key, |s| {
            s.faults += 1;
            s.faults_dropped += 1;
        });
        sleep(shared.latency.first_token + extra).await;
        reservation.settle(input, 0, burndown);
        return Err(DroppedConnection);
    }

    let job = Job {
        model,
        quota_key,
        tier,
        shape: facts.shape,
        input,
        output,
        limit,
        burndown,
        latency: shared.latency,
        extra,
        request_id: rid,
        chunk_tokens: shared.stream_chunk_tokens.max(1),
    };

    if op.is_stream() {
        let throttle_at = (rthrottle < faults.stream_throttle).then(|| {
            ledger.with_stats(&job.quota_key, |s| {
                s.faults += 1;
                s.faults_stream_throttle += 1;
            });
            job.output / 2
        });
        let (tx, rx) = mpsc::channel(64);
        let converse = op.is_converse();
        let mut resp = stream_response(EmulatorBody::stream(rx), &job.request_id, converse);
        if let (Some(tier), false) = (job.tier, converse) {
            let tier = HeaderValue::from_static(tier);
            resp.headers_mut().insert(super::tiers::HEADER, tier);
        }
        tokio::spawn(stream_job(job, reservation, tx, converse, throttle_at));
        return Ok(resp);
    }

    let total = job.latency.total(job.output) + job.extra;
    sleep(total).await;
    // Settle before answering, so a caller that sends its next request on receipt of this
    // response always sees the refund.
    reservation.settle(job.input, job.output, job.burndown);
    Ok(if op.is_converse() {
        converse_response(&job, total)
    } else {
        invoke_response(&job, total)
    })
}

/// The HTTP 200 head of an event stream, with `body` as its frames.
fn stream_response(body: EmulatorBody, request_id: &str, converse: bool) -> Response<EmulatorBody> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    if !converse {
        h.insert(
            "x-amzn-bedrock-content-type",
            HeaderValue::from_static("application/json"),
        );
    }
    resp
}

/// One admitted request's numbers.
#[derive(Debug)]
struct Job {
    model: String,
    /// Where the job is charged and counted: the model, or its reserved capacity.
    quota_key: String,
    /// The service tier the request asked for, echoed in the answer.
    tier: Option<&'static str>,
    shape: BodyShape,
    input: u64,
    output: u64,
    limit: u64,
    burndown: u64,
    latency: LatencyModel,
    extra: Duration,
    request_id: String,
    chunk_tokens: u64,
}

impl Job {
    fn hit_limit(&self) -> bool {
        self.output >= self.limit
    }

    fn message_id(&self) -> String {
        format!("msg_bdrk_{}", self.request_id.replace('-', ""))
    }
}

fn invoke_response(job: &Job, total: Duration) -> Response<EmulatorBody> {
    let text = output_text(0, job.output);
    let body = match job.shape {
        BodyShape::Titan => json!({
            "inputTextTokenCount": job.input,
            "results": [{
                "tokenCount": job.output,
                "outputText": text,
                "completionReason": if job.hit_limit() { "LENGTH" } else { "FINISH" },
            }],
        }),
        BodyShape::Prompt => json!({
            "generation": text,
            "prompt_token_count": job.input,
            "generation_token_count": job.output,
            "stop_reason": if job.hit_limit() { "length" } else { "stop" },
        }),
        _ => json!({
            "id": job.message_id(),
            "type": "message",
            "role": "assistant",
            "model": job.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": if job.hit_limit() { "max_tokens" } else { "end_turn" },
            "stop_sequence": null,
            "usage": {"input_tokens": job.input, "output_tokens": job.output},
        }),
    };
    let mut resp = json_response(StatusCode::OK, &body, &job.request_id);
    let h = resp.headers_mut();
    if let Some(tier) = job.tier {
        h.insert(super::tiers::HEADER, HeaderValue::from_static(tier));
    }
    h.insert("x-amzn-bedrock-input-token-count", job.input.into());
    h.insert("x-amzn-bedrock-output-token-count", job.output.into());
    h.insert("x-amzn-bedrock-invocation-latency", millis(total).into());
    resp
}

fn converse_response(job: &Job, total: Duration) -> Response<EmulatorBody> {
    let mut body = json!({
        "output": {"message": {
            "role": "assistant",
            "content": [{"text": output_text(0, job.output)}],
        }},
        "stopReason": if job.hit_limit() { "max_tokens" } else { "end_turn" },
        "usage": {
            "inputTokens": job.input,
            "outputTokens": job.output,
            "totalTokens": job.input + job.output,
        },
        "metrics": {"latencyMs": millis(total)},
    });
    if let Some(tier) = job.tier {
        body["serviceTier"] = json!({"type": tier});
    }
    json_response(StatusCode::OK, &body, &job.request_id)
}

/// Produces an event stream over the latency model, then settles.
async fn stream_job(
    job: Job,
    reservation: Reservation,
    tx: mpsc::Sender<Bytes>,
    converse: bool,
    throttle_at: Option<u64>,
) {
    let start = Instant::now();
    let first = job.latency.first_token + job.extra;
    sleep_until(start + first).await;

    let opening: Vec<Bytes> = if converse {
        vec![event_frame("messageStart", &json!({"role": "assistant"}))]
    } else {
        vec![
            chunk_frame(&json!({
                "type": "message_start",
                "message": {
                    "id": job.message_id(),
                    "type": "message",
                    "role": "assistant",
                    "model": job.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {"input_tokens": job.input, "output_tokens": 1},
                },
            })),
            chunk_frame(&json!({
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            })),
        ]
    };
    for frame in opening {
        if tx.send(frame).await.is_err() {
            reservation.settle(job.input, 0, job.burndown);
            return;
        }
    }

    let mut emitted = 0;
    loop {
        if throttle_at.is_some_and(|t| emitted >= t) {
            reservation.settle(job.input, emitted, job.burndown);
            let _ = tx
                .send(exception_frame("throttlingException", MSG_TOO_MANY_TOKENS))
                .await;
            return;
        }
        if emitted >= job.output {
            break;
        }
        let k = job.chunk_tokens.min(job.output - emitted);
        let per = u32::try_from(emitted + k).unwrap_or(u32::MAX);
        sleep_until(start + first + job.latency.per_output_token.saturating_mul(per)).await;
        let text = output_text(emitted, k);
        let frame = if converse {
            event_frame(
                "contentBlockDelta",
                &json!({"contentBlockIndex": 0, "delta": {"text": text}}),
            )
        } else {
            chunk_frame(&json!({
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            }))
        };
        if tx.send(frame).await.is_err() {
            reservation.settle(job.input, emitted, job.burndown);
            return;
        }
        emitted += k;
    }

    let total = start.elapsed();
    let stop_reason = if job.hit_limit() {
        "max_tokens"
    } else {
        "end_turn"
    };
    let closing: Vec<Bytes> = if converse {
        vec![
            event_frame("contentBlockStop", &json!({"contentBlockIndex": 0})),
            event_frame("messageStop", &json!({"stopReason": stop_reason})),
            event_frame("metadata", &{
                let mut metadata = json!({
                    "usage": {
                        "inputTokens": job.input,
                        "outputTokens": job.output,
                        "totalTokens": job.input + job.output,
                    },
                    "metrics": {"latencyMs": millis(total)},
                });
                if let Some(tier) = job.tier {
                    metadata["serviceTier"] = json!({"type": tier});
                }
                metadata
            }),
        ]
    } else {
        vec![
            chunk_frame(&json!({"type": "content_block_stop", "index": 0})),
            chunk_frame(&json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": job.output},
            })),
            chunk_frame(&json!({
                "type": "message_stop",
                "amazon-bedrock-invocationMetrics": {
                    "inputTokenCount": job.input,
                    "outputTokenCount": job.output,
                    "invocationLatency": millis(total),
                    "firstByteLatency": millis(first),
                },
            })),
        ]
    };
    // Settle before the last frames leave, so a caller that sends its next request on
    // receipt of them always sees the refund.
    reservation.settle(job.input, job.output, job.burndown);
    for frame in closing {
        if tx.send(frame).await.is_err() {
            return;
        }
    }
}

/// CountTokens: free, never charged against the quota.
fn count_tokens(shared: &Shared, model: &str, bytes: &[u8], rid: &str) -> Response<EmulatorBody> {
    shared.ledger.with_stats(model, |s| s.count_tokens += 1);
    let facts = serde_json::from_slice::<Value>(bytes).ok().and_then(|v| {
        if let Some(conv) = v.pointer("/input/converse") {
            return Some(converse_facts(conv));
        }
        let b64 = v.pointer("/input/invokeModel/body")?.as_str()?;
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        let inner: Value = serde_json::from_slice(&raw).ok()?;
        inner.is_object().then(|| invoke_facts(&inner))
    });
    match facts {
        Some(f) => json_response(
            StatusCode::OK,
            &json!({"inputTokens": f.input_tokens(shared.chars_per_token, shared.tokens_per_message)}),
            rid,
        ),
        None => validation_response(MSG_MALFORMED, rid),
    }
}
