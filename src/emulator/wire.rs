//! Writing responses as bedrock-runtime does: error responses, response bodies, and
//! `application/vnd.amazon.eventstream` frames.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue as HttpHeaderValue, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::quota::Refusal;

/// The namespace suffix Bedrock puts after the error type in `x-amzn-errortype`.
pub(crate) const ERROR_NAMESPACE: &str = ":http://internal.amazon.com/coral/com.amazon.bedrock/";

/// The message of a request-rate throttle.
pub(crate) const MSG_TOO_MANY_REQUESTS: &str =
    "Too many requests, please wait before trying again.";
/// The message of a token-rate throttle.
pub(crate) const MSG_TOO_MANY_TOKENS: &str = "Too many tokens, please wait before trying again.";
/// The message of a daily-token throttle.
pub(crate) const MSG_TOO_MANY_TOKENS_PER_DAY: &str =
    "Too many tokens per day, please wait before trying again.";
/// The message of a malformed body.
pub(crate) const MSG_MALFORMED: &str =
    "Malformed input request, please reformat your input and try again.";
/// The message of an input longer than the context window.
pub(crate) const MSG_TOO_LONG: &str = "Input is too long for requested model.";

/// The response body of the emulator: a whole buffer, or event-stream frames fed by a task.
#[derive(Debug)]
pub(crate) struct EmulatorBody {
    kind: BodyKind,
}

#[derive(Debug)]
enum BodyKind {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl EmulatorBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        EmulatorBody {
            kind: BodyKind::Full(Some(bytes.into())),
        }
    }

    pub(crate) fn stream(rx: mpsc::Receiver<Bytes>) -> Self {
        EmulatorBody {
            kind: BodyKind::Stream(rx),
        }
    }
}

impl Body for EmulatorBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().kind {
            BodyKind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, BodyKind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            BodyKind::Full(None) => SizeHint::with_exact(0),
            BodyKind::Stream(_) => SizeHint::default(),
        }
    }
}

/// A JSON response with a request id.
pub(crate) fn json_response(
    status: StatusCode,
    body: &Value,
    request_id: &str,
) -> Response<EmulatorBody> {
    let mut resp = Response::new(EmulatorBody::full(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HttpHeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HttpHeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    resp
}

/// An error response: `x-amzn-errortype: {error_type}:http://internal...` and
/// `{"message": ...}`.
pub(crate) fn error_response(
    status: StatusCode,
    error_type: &str,
    message: &str,
    request_id: &str,
) -> Response<EmulatorBody> {
    let mut resp = json_response(status, &json!({ "message": message }), request_id);
    if let Ok(v) = HttpHeaderValue::from_str(&format!("{error_type}{ERROR_NAMESPACE}")) {
        resp.headers_mut().insert("x-amzn-errortype", v);
    }
    resp
}

/// The 429 for a refused admission.
pub(crate) fn throttle_response(refusal: Refusal, request_id: &str) -> Response<EmulatorBody> {
    let message = match refusal {
        Refusal::Requests => MSG_TOO_MANY_REQUESTS,
        Refusal::Tokens => MSG_TOO_MANY_TOKENS,
        Refusal::DailyTokens => MSG_TOO_MANY_TOKENS_PER_DAY,
    };
    error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "ThrottlingException",
        message,
        request_id,
    )
}

/// A 400 ValidationException.
pub(crate) fn validation_response(message: &str, request_id: &str) -> Response<EmulatorBody> {
    error_response(
        StatusCode::BAD_REQUEST,
        "ValidationException",
        message,
        request_id,
    )
}

fn string_header(name: &'static str, value: &'static str) -> Header {
    Header::new(name, HeaderValue::String(value.into()))
}

fn encode(message: &Message) -> Bytes {
    let mut buf = Vec::with_capacity(message.payload().len() + 96);
    // Writing to a Vec only fails for frames over the 16 MiB limit, which the emulator's
    // small JSON payloads never reach.
    write_message_to(message, &mut buf).expect("event-stream frame within size limits");
    Bytes::from(buf)
}

/// One `:message-type: event` frame with a JSON payload.
pub(crate) fn event_frame(event_type: &'static str, payload: &Value) -> Bytes {
    let message = Message::new(payload.to_string())
        .add_header(string_header(":event-type", event_type))
        .add_header(string_header(":content-type", "application/json"))
        .add_header(string_header(":message-type", "event"));
    encode(&message)
}

/// One InvokeModelWithResponseStream `chunk` frame carrying `event` as base64 JSON.
pub(crate) fn chunk_frame(event: &Value) -> Bytes {
    let b64 = base64::engine::general_purpose::STANDARD.encode(event.to_string());
    event_frame("chunk", &json!({ "bytes": b64 }))
}

/// One `:message-type: exception` frame.
pub(crate) fn exception_frame(exception_type: &'static str, message: &str) -> Bytes {
    let message = Message::new(json!({ "message": message }).to_string())
        .add_header(string_header(":exception-type", exception_type))
        .add_header(string_header(":content-type", "application/json"))
        .add_header(string_header(":message-type", "exception"));
    encode(&message)
}

/// Words the emulated model writes, one token each (the first without its space at the
/// very start).
const WORDS: &[&str] = &[
    " The",
    " quota",
    " is",
    " shared",
    " by",
    " every",
    " caller",
    " of",
    " the",
    " model",
    ",",
    " so",
    " each",
    " request",
    " reserves",
    " tokens",
    " before",
    " it",
    " runs",
    ".",
];

/// `n` tokens of text, starting at token `start` of the emulator's endless sentence.
pub(crate) fn output_text(start: u64, n: u64) -> String {
    (start..start + n)
        .map(|i| {
            let word = WORDS[(i % WORDS.len() as u64) as usize];
            if i == 0 {
                word.trim_start()
            } else {
                word
            }
        })
        .collect()
}
