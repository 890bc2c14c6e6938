//! A Bedrock-style upstream for tests: enforces RPM and TPM the way Bedrock does (reserve
//! input + max_tokens × burndown at admission, settle to input + output × burndown at the
//! end) and refuses with Bedrock's real 429.

#![allow(dead_code)]

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bedrock_throttle::default_burndown;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::time::Instant;
use tower::Service;

pub const SONNET_4: &str = "us.anthropic.claude-sonnet-4-20250514-v1:0";

/// An InvokeModel request in the Anthropic Messages shape.
pub fn invoke(model: &str, prompt: &str, max_tokens: u64) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    });
    let path = format!(
        "/model/{}/invoke",
        percent_encoding::utf8_percent_encode(model, percent_encoding::NON_ALPHANUMERIC)
    );
    Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[derive(Debug, Default, Clone)]
pub struct MockStats {
    pub admitted: u64,
    pub throttled: u64,
    /// Final charges, by the minute (since the mock was made) in which they settled.
    pub billed_per_minute: Vec<u64>,
    /// Net quota drawn by the minute: reservations taken less what settlement gave back.
    pub drawn_per_minute: Vec<i64>,
    /// Admitted and throttled attempts by the minute in which they arrived.
    pub admitted_per_minute: Vec<u64>,
    pub throttled_per_minute: Vec<u64>,
    /// Seconds since the mock was made of each of this client's throttles.
    pub throttled_at: Vec<f64>,
    /// The same for requests marked as another client's (see [`OTHER_CLIENT`]), which
    /// are counted here and not above.
    pub other: OtherStats,
}

/// What an unprotected other client got from the shared quota, by the minute.
#[derive(Debug, Default, Clone)]
pub struct OtherStats {
    pub admitted: u64,
    pub throttled: u64,
    pub billed_per_minute: Vec<u64>,
    pub throttled_per_minute: Vec<u64>,
}

/// A header that marks a request as another application's, spending from the same quota.
pub const OTHER_CLIENT: &str = "x-test-other-client";

fn bump(v: &mut Vec<u64>, minute: usize, n: u64) {
    if v.len() <= minute {
        v.resize(minute + 1, 0);
    }
    v[minute] += n;
}

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    per_sec: f64,
    level: f64,
}

#[derive(Debug)]
struct State {
    tokens: Bucket,
    requests: Option<Bucket>,
    updated: Instant,
    started: Instant,
    served: u64,
    stats: MockStats,
}

impl State {
    fn record_drawn(&mut self, tokens: i64) {
        let minute = ((Instant::now() - self.started).as_secs() / 60) as usize;
        let drawn = &mut self.stats.drawn_per_minute;
        if drawn.len() <= minute {
            drawn.resize(minute + 1, 0);
        }
        drawn[minute] += tokens;
    }

    fn minute(&self) -> usize {
        ((Instant::now() - self.started).as_secs() / 60) as usize
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let secs = (now - self.updated).as_secs_f64();
        self.updated = now;
        for b in std::iter::once(&mut self.tokens).chain(self.requests.as_mut()) {
            b.level = (b.level + b.per_sec * secs).min(b.capacity);
        }
    }
}

/// The mock upstream. Clones share one quota.
#[derive(Clone, Debug)]
pub struct MockBedrock {
    state: Arc<Mutex<State>>,
    /// Fixed latency plus this much per output token.
    pub base_latency: Duration,
    pub per_token: Duration,
}

impl MockBedrock {
    pub fn new(rpm: Option<u32>, tpm: u64) -> Self {
        let now = Instant::now();
        let bucket = |n: f64| Bucket {
            capacity: n,
            per_sec: n / 60.0,
            level: n,
        };
        Self {
            state: Arc::new(Mutex::new(State {
                tokens: bucket(tpm as f64),
                requests: rpm.map(|r| bucket(f64::from(r))),
                updated: now,
                started: now,
                served: 0,
                stats: MockStats::default(),
            })),
            base_latency: Duration::from_millis(400),
            per_token: Duration::from_millis(4),
        }
    }

    pub fn stats(&self) -> MockStats {
        self.state.lock().unwrap().stats.clone()
    }

    async fn handle(self, req: Request<Full<Bytes>>) -> Response<Full<Bytes>> {
        let other = req.headers().contains_key(OTHER_CLIENT);
        let model = req
            .uri()
            .path()
            .strip_prefix("/model/")
            .and_then(|p| p.rsplit_once('/'))
            .map(|(id, _)| {
                percent_encoding::percent_decode_str(id)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        // The "tokenizer": a token per 4 characters of message text.
        let chars: usize = json["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| m["content"].as_str())
                    .map(str::len)
                    .sum()
            })
            .unwrap_or(0);
        let input = (chars as u64).div_ceil(4);
        let max_tokens = json["max_tokens"].as_u64().unwrap_or(4_096);
        let burndown = default_burndown(&model);
        let reserved = input as f64 + max_tokens as f64 * burndown;

        let output = {
            let mut s = self.state.lock().unwrap();
            s.refill();
            let requests_ok = s.requests.as_ref().is_none_or(|r| r.level >= 1.0);
            if !requests_ok || s.tokens.level < reserved {
                let minute = s.minute();
                if other {
                    s.stats.other.throttled += 1;
                    bump(&mut s.stats.other.throttled_per_minute, minute, 1);
                } else {
                    s.stats.throttled += 1;
                    bump(&mut s.stats.throttled_per_minute, minute, 1);
                    let at = (Instant::now() - s.started).as_secs_f64();
                    s.stats.throttled_at.push(at);
                }
                let message = if requests_ok {
                    "Too many tokens, please wait before trying again."
                } else {
                    "Too many requests, please wait before trying again."
                };
                return throttle(message);
            }
            s.tokens.level -= reserved;
            s.record_drawn(reserved as i64);
            if let Some(r) = &mut s.requests {
                r.level -= 1.0;
            }
            let minute = s.minute();
            if other {
                s.stats.other.admitted += 1;
            } else {
                s.stats.admitted += 1;
                bump(&mut s.stats.admitted_per_minute, minute, 1);
            }
            s.served += 1;
            // Deterministic output length between a tenth and all of max_tokens.
            let n = s.served.wrapping_mul(2_654_435_761) % 1000;
            (max_tokens / 10 + max_tokens * 9 / 10 * n / 1000).max(1)
        };

        let latency = self.base_latency + self.per_token * output as u32;
        // No timer at zero latency (benchmarks): a zero sleep still waits for the next
        // millisecond tick of tokio's timer.
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }

        let charge = input as f64 + output as f64 * burndown;
        {
            let mut s = self.state.lock().unwrap();
            s.refill();
            s.tokens.level = (s.tokens.level + reserved - charge).min(s.tokens.capacity);
            s.record_drawn(-((reserved - charge) as i64));
            let minute = s.minute();
            let billed = if other {
                &mut s.stats.other.billed_per_minute
            } else {
                &mut s.stats.billed_per_minute
            };
            bump(billed, minute, charge as u64);
        }
        Response::builder()
            .header("content-type", "application/json")
            .header("x-amzn-bedrock-input-token-count", input)
            .header("x-amzn-bedrock-output-token-count", output)
            .body(Full::new(Bytes::from(format!(
                r#"{{"type":"message","content":[{{"type":"text","text":"ok"}}],"usage":{{"input_tokens":{input},"output_tokens":{output}}}}}"#
            ))))
            .unwrap()
    }
}

pub fn throttle(message: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header("content-type", "application/json")
        .header(
            "x-amzn-errortype",
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
        )
        .body(Full::new(Bytes::from(format!(
            r#"{{"message":"{message}"}}"#
        ))))
        .unwrap()
}

impl Service<Request<Full<Bytes>>> for MockBedrock {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

/// A field of /proc/self/status in KiB (VmRSS: now; VmHWM: the peak so far); 0 where there
/// is no such file.
pub fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
