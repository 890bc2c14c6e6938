//! Decodes arbitrary bytes into a scripted upstream's answers: Bedrock-like responses,
//! healthy or broken in every field the throttle reads.
//!
//! Shared by the `response` fuzz target (the bytes are the fuzzer's input) and the
//! broken-upstream soak (`tests/broken_upstream.rs`, the bytes come from a seeded RNG). The
//! decoder is total: any bytes decode, and exhausted input reads as zeros.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::Full;
use tower::{service_fn, Service};

/// Claude Sonnet 4 cross-Region: output tokens burn down 5×.
pub const SONNET_4: &str = "us.anthropic.claude-sonnet-4-20250514-v1:0";
/// The model the configs give a slow quota (2,000 tokens an hour): its refill is under a
/// token a second.
pub const SLOW_MODEL: &str = "amazon.titan-text-express-v1";
/// The models a call picks from.
pub const CALL_MODELS: &[&str] = &[
    SONNET_4,
    "anthropic.claude-3-5-haiku-20241022-v1:0",
    "meta.llama3-1-70b-instruct-v1:0",
    SLOW_MODEL,
];
/// The tenant header the configs read, and the tenants a call picks from.
pub const TENANT_HEADER: &str = "x-tenant";
pub const TENANTS: &[Option<&str>] = &[None, None, Some("acme"), Some("globex"), Some("capped")];

const MAX_TOKENS: &[u64] = &[1, 16, 100, 300];

/// Values of every numeric header the throttle reads: the wire can say anything.
pub const NASTY: &[&[u8]] = &[
    b"",
    b"-1",
    b"0",
    b"1e300",
    b"NaN",
    b"18446744073709551615",
    b"99999999999999999999",
    b"\xff\xfe\x80",
    b"3",
    b"120",
    b" 42 ",
    b"Thu, 01 Jan 1970 00:00:00 GMT",
    b"Fri, 31 Dec 9999 23:59:59 GMT",
    b"4294967296",
];

/// Usage numbers as JSON text, in and out of `u64`.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "7",
    "1000",
    "100000",
    "4294967295",
    "9007199254740993",
    "18446744073709551615",
    "99999999999999999999",
    "-1",
    "1e300",
    "2.5",
    "\"12\"",
    "null",
];

/// Statuses a reply picks from; 0 is a connection failure instead of a response.
const STATUSES: &[u16] = &[
    200, 200, 200, 200, 429, 429, 500, 502, 503, 504, 400, 403, 404, 408, 413, 424, 0,
];

const ERROR_TYPES: &[&[u8]] = &[
    b"ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
    b"ServiceUnavailableException:http://internal.amazon.com/coral/com.amazon.bedrock/",
    b"ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/",
    b"ModelNotReadyException",
    b"TooManyRequestsException",
    b"",
    b"\xff",
];

const CONTENT_TYPES: &[&[u8]] = &[
    b"application/json",
    b"application/vnd.amazon.eventstream",
    b"application/vnd.amazon.eventstream",
    b"text/plain",
    b"application/json; charset=utf-8",
    b"\xff",
];

/// Messages of 429 bodies and throttling exceptions.
const MESSAGES: &[&str] = &[
    "Too many tokens, please wait before trying again.",
    "Too many requests, please wait before trying again.",
    "Too many tokens per day, please wait before trying again.",
    "Rate exceeded",
    "",
];

const EXCEPTIONS: &[&str] = &[
    "serviceUnavailableException",
    "internalServerException",
    "validationException",
    "modelStreamErrorException",
    "",
];

const CHUNK_SIZES: &[usize] = &[1, 2, 3, 7, 16, 64, 1 << 20];

const LATENCIES_MS: &[u64] = &[0, 0, 0, 0, 1, 250, 3_000, 61_000];

/// The bytes being decoded.
#[derive(Debug)]
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next byte; 0 once the input is used up.
    pub fn byte(&mut self) -> u8 {
        match self.0 {
            [b, rest @ ..] => {
                self.0 = rest;
                *b
            }
            [] => 0,
        }
    }

    fn pick<T: Copy>(&mut self, table: &[T]) -> T {
        table[usize::from(self.byte()) % table.len()]
    }

    /// Up to `n` bytes as they are.
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// One request of a script: model, output limit, tenant, and the Content-Length it
/// declares (read by the gate alone, which estimates from it).
#[derive(Clone, Debug)]
pub struct Call {
    pub model: &'static str,
    pub max_tokens: u64,
    pub tenant: Option<&'static str>,
    pub content_length: Option<&'static [u8]>,
}

impl Call {
    /// Four bytes: model, max_tokens, tenant, Content-Length (bit 0: present).
    pub fn decode(input: &mut Input<'_>) -> Self {
        let model = input.pick(CALL_MODELS);
        let max_tokens = input.pick(MAX_TOKENS);
        let tenant = input.pick(TENANTS);
        let cl = input.byte();
        let content_length = (cl & 1 == 1).then(|| NASTY[usize::from(cl >> 1) % NASTY.len()]);
        Self {
            model,
            max_tokens,
            tenant,
            content_length,
        }
    }

    pub fn request(&self) -> Request<Full<Bytes>> {
        let body = format!(
            r#"{{"anthropic_version":"bedrock-2023-05-31","max_tokens":{},"messages":[{{"role":"user","content":"hello there"}}]}}"#,
            self.max_tokens
        );
        let mut req = invoke(self.model, body);
        if let Some(t) = self.tenant {
            req.headers_mut()
                .insert(TENANT_HEADER, HeaderValue::from_static(t));
        }
        if let Some(v) = self
            .content_length
            .and_then(|v| HeaderValue::from_bytes(v).ok())
        {
            req.headers_mut().insert(http::header::CONTENT_LENGTH, v);
        }
        req
    }
}

/// An InvokeModel request of `model` with `body`.
pub fn invoke(model: &str, body: String) -> Request<Full<Bytes>> {
    let encoded: String = model
        .bytes()
        .map(|b| match b {
            b':' => "%3A".to_owned(),
            b => char::from(b).to_string(),
        })
        .collect();
    Request::post(format!("/model/{encoded}/invoke"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// How a body ends once its chunks are out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Clean,
    /// The connection breaks: an error frame.
    Error,
    /// The server goes silent: `Pending` for ever, never woken.
    Stall,
}

/// One answer of the upstream.
#[derive(Clone, Debug)]
pub struct Reply {
    /// `None`: the connection fails instead of answering.
    pub status: Option<u16>,
    pub headers: Vec<(&'static str, &'static [u8])>,
    pub body: Vec<u8>,
    pub chunk: usize,
    /// Chunks delivered before `end` (all of them when `None`).
    pub chunks: Option<usize>,
    pub end: End,
    pub latency: Duration,
}

/// The headers a reply may carry, each present or not, in decoding order.
const READ_HEADERS: &[&str] = &[
    "x-amzn-bedrock-input-token-count",
    "x-amzn-bedrock-output-token-count",
    "x-amzn-bedrock-cache-read-input-token-count",
    "x-amzn-bedrock-cache-write-input-token-count",
    "retry-after",
    "retry-after-ms",
    "x-amz-retry-after",
];

impl Reply {
    /// A 200 with small usage in its headers.
    pub fn healthy() -> Self {
        Self {
            status: Some(200),
            headers: vec![
                ("x-amzn-bedrock-input-token-count", b"10"),
                ("x-amzn-bedrock-output-token-count", b"10"),
                ("content-type", b"application/json"),
            ],
            body: b"{}".to_vec(),
            chunk: 1 << 20,
            chunks: None,
            end: End::Clean,
            latency: Duration::ZERO,
        }
    }

    /// Status (1 or 2 bytes, 3 for any status 200..=599), a byte per header in
    /// [`READ_HEADERS`] (bit 0: present, the rest: index into [`NASTY`]), x-amzn-errortype
    /// and content-type (the same), the body, the chunk size, the end (a byte, then the
    /// chunks before it), the latency.
    pub fn decode(input: &mut Input<'_>) -> Self {
        let status = match input.byte() % 4 {
            3 => 200 + u16::from_be_bytes([input.byte(), input.byte()]) % 400,
            _ => input.pick(STATUSES),
        };
        let mut headers = Vec::new();
        let mut header = |input: &mut Input<'_>, name: &'static str, table: &[&'static [u8]]| {
            let b = input.byte();
            if b & 1 == 1 {
                headers.push((name, table[usize::from(b >> 1) % table.len()]));
            }
        };
        for name in READ_HEADERS {
            header(input, name, NASTY);
        }
        header(input, "x-amzn-errortype", ERROR_TYPES);
        header(input, "content-type", CONTENT_TYPES);
        let body = body(input);
        let chunk = input.pick(CHUNK_SIZES);
        let (end, chunks) = match input.byte() % 8 {
            6 => (End::Error, Some(usize::from(input.byte()))),
            7 => (End::Stall, Some(usize::from(input.byte()))),
            _ => (End::Clean, None),
        };
        Self {
            status: (status != 0).then_some(status),
            headers,
            body,
            chunk,
            chunks,
            end,
            latency: Duration::from_millis(input.pick(LATENCIES_MS)),
        }
    }

    pub fn into_response(self) -> Result<Response<ScriptBody>, io::Error> {
        let Some(status) = self.status else {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "scripted connection failure",
            ));
        };
        let mut chunks: VecDeque<Bytes> = self
            .body
            .chunks(self.chunk)
            .map(Bytes::copy_from_slice)
            .collect();
        if let Some(n) = self.chunks {
            chunks.truncate(n);
        }
        let mut response = Response::new(ScriptBody {
            chunks,
            end: Some(self.end),
        });
        *response.status_mut() = StatusCode::from_u16(status).expect("100..=999");
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                response
                    .headers_mut()
                    .append(HeaderName::from_static(name), v);
            }
        }
        Ok(response)
    }
}

/// A response body that yields its chunks one per poll, then ends as scripted.
#[derive(Debug)]
pub struct ScriptBody {
    chunks: VecDeque<Bytes>,
    /// `None` once the end has been delivered.
    end: Option<End>,
}

impl http_body::Body for ScriptBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(c) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        match self.end {
            Some(End::Stall) => Poll::Pending, // never woken: the server went silent
            Some(End::Error) => {
                self.end = None;
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "scripted body failure",
                ))))
            }
            Some(End::Clean) | None => {
                self.end = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && matches!(self.end, Some(End::Clean) | None)
    }
}

/// The upstream: each call takes its reply from `next`, waits the reply's latency, answers.
pub fn upstream<F>(
    next: F,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<ScriptBody>,
    Error = io::Error,
    Future = impl Send,
> + Clone
       + Send
       + 'static
where
    F: Fn() -> Reply + Clone + Send + 'static,
{
    service_fn(move |_req: Request<Full<Bytes>>| {
        let reply = next();
        async move {
            if !reply.latency.is_zero() {
                tokio::time::sleep(reply.latency).await;
            }
            reply.into_response()
        }
    })
}

/// A body: empty, JSON usage (Converse or Anthropic), a throttle message, malformed
/// JSON, an event stream, or raw bytes.
fn body(input: &mut Input<'_>) -> Vec<u8> {
    match input.byte() % 8 {
        0 => Vec::new(),
        1 => converse_usage(input).into_bytes(),
        2 => anthropic_usage(input).into_bytes(),
        3 => format!(r#"{{"message":"{}"}}"#, input.pick(MESSAGES)).into_bytes(),
        4 => {
            let mut json = converse_usage(input).into_bytes();
            json.truncate(usize::from(input.byte()) % json.len());
            json
        }
        5 | 6 => event_stream(input),
        _ => {
            let n = usize::from(input.byte());
            input.take(n).to_vec()
        }
    }
}

fn converse_usage(input: &mut Input<'_>) -> String {
    let [i, o, r, w] = [(); 4].map(|()| input.pick(NUMBERS));
    format!(
        r#"{{"output":{{"message":{{"role":"assistant","content":[{{"text":"hi"}}]}}}},"usage":{{"inputTokens":{i},"outputTokens":{o},"cacheReadInputTokens":{r},"cacheWriteInputTokens":{w}}}}}"#
    )
}

fn anthropic_usage(input: &mut Input<'_>) -> String {
    let [i, o, w] = [(); 3].map(|()| input.pick(NUMBERS));
    format!(
        r#"{{"type":"message","content":[{{"type":"text","text":"hi"}}],"usage":{{"input_tokens":{i},"output_tokens":{o},"cache_creation_input_tokens":{w}}}}}"#
    )
}

/// One to four frames of an event stream (a byte each, after the count), then damage: a
/// byte (0: the last frame's checksum flipped, 1: cut short, 2: a byte flipped) and its
/// position.
fn event_stream(input: &mut Input<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..=input.byte() % 4 {
        let frame = match input.byte() % 7 {
            0 => chunk(
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
            ),
            1 => {
                let [i, o] = [(); 2].map(|()| input.pick(NUMBERS));
                chunk(&format!(
                    r#"{{"type":"message_stop","amazon-bedrock-invocationMetrics":{{"inputTokenCount":{i},"outputTokenCount":{o},"invocationLatency":900,"firstByteLatency":300}}}}"#
                ))
            }
            2 => {
                let [i, o, w] = [(); 3].map(|()| input.pick(NUMBERS));
                event(
                    "metadata",
                    &format!(
                        r#"{{"usage":{{"inputTokens":{i},"outputTokens":{o},"totalTokens":3,"cacheWriteInputTokens":{w}}},"metrics":{{"latencyMs":5}}}}"#
                    ),
                )
            }
            3 => exception("throttlingException", input.pick(MESSAGES)),
            4 => exception(input.pick(EXCEPTIONS), "Something went wrong"),
            5 => event("messageStart", r#"{"role":"assistant"}"#),
            _ => {
                let n = usize::from(input.byte() % 24);
                input.take(n).to_vec()
            }
        };
        out.extend_from_slice(&frame);
    }
    let damage = input.byte() % 6;
    let at = usize::from(input.byte());
    if !out.is_empty() {
        let n = out.len();
        match damage {
            0 => out[n - 1 - at % 4.min(n)] ^= 0x01,
            1 => out.truncate(at % n),
            2 => out[at % n] ^= 0x80,
            _ => {}
        }
    }
    out
}

/// An event-stream frame with string headers: total length, headers length, prelude
/// CRC32, headers, payload, message CRC32 (all big-endian).
pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7); // string
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32(&out).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32(&out).to_be_bytes());
    out
}

/// An InvokeModelWithResponseStream `chunk` event carrying `json`.
pub fn chunk(json: &str) -> Vec<u8> {
    let payload = format!(
        r#"{{"bytes":"{}","p":"abcdefghij"}}"#,
        base64(json.as_bytes())
    );
    event("chunk", &payload)
}

pub fn event(kind: &str, payload: &str) -> Vec<u8> {
    frame(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
    )
}

pub fn exception(kind: &str, message: &str) -> Vec<u8> {
    frame(
        &[
            (":exception-type", kind),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        format!(r#"{{"message":"{message}"}}"#).as_bytes(),
    )
}

/// CRC-32 (IEEE), as event-stream frames use.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
