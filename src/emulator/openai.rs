//! The OpenAI-compatible Chat Completions route of the emulated bedrock-runtime:
//! `POST /openai/v1/chat/completions` and `POST /v1/chat/completions`, the model in the body,
//! OpenAI's request and response shapes, streamed as server-sent events when the body says
//! `"stream": true`, with a last usage chunk when it sets `stream_options.include_usage`.
//!
//! It is charged to the model's quota like InvokeModel and Converse (bedrock-runtime shares
//! them: <https://docs.aws.amazon.com/bedrock/latest/userguide/inference-chat-completions.html>).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, Instant};

use super::quota::Reservation;
use super::request::{as_u64, BodyShape, Operation, RequestFacts, TextCounter, IMAGE_TOKENS};
use super::server::Shared;
use super::wire::{
    json_response, output_text, throttle_response, validation_response, EmulatorBody,
    MSG_MALFORMED, MSG_TOO_LONG,
};

/// Whether `path` is one of the Chat Completions routes.
pub(crate) fn is_route(path: &str) -> bool {
    matches!(
        path.split('?').next(),
        Some("/openai/v1/chat/completions" | "/v1/chat/completions")
    )
}

/// Reads a Chat Completions body: every string of `messages` and `tools` that is text, image
/// parts as [`IMAGE_TOKENS`], the output limit from `max_completion_tokens`, else `max_tokens`.
pub(crate) fn facts(body: &Value) -> RequestFacts {
    let mut counter = TextCounter::default();
    for key in ["messages", "tools"] {
        if let Some(v) = body.get(key) {
            counter.walk(v, None);
        }
    }
    RequestFacts {
        shape: BodyShape::Other,
        chars: counter.chars,
        extra_tokens: counter.images * IMAGE_TOKENS,
        max_tokens: as_u64(body.get("max_completion_tokens"))
            .or_else(|| as_u64(body.get("max_tokens"))),
        shape_default_max: None,
        messages: body
            .get("messages")
            .and_then(Value::as_array)
            .map_or(0, |a| a.len() as u64),
    }
}

/// Handles one Chat Completions request whose body is `bytes`.
pub(crate) async fn handle(shared: Arc<Shared>, bytes: Bytes) -> Response<EmulatorBody> {
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => return validation_response(MSG_MALFORMED, "00000000-0000-4000-8000-000000000000"),
    };
    let Some(model) = body.get("model").and_then(Value::as_str).map(str::to_owned) else {
        return validation_response(MSG_MALFORMED, "00000000-0000-4000-8000-000000000000");
    };
    let mut rng = shared.request_rng(&model, Operation::ChatCompletions, &bytes);
    let rid = super::server::request_id(&mut rng);
    let ledger = &shared.ledger;
    ledger.with_stats(&model, |s| s.requests += 1);
    let facts = facts(&body);
    let input = facts.input_tokens(shared.chars_per_token, shared.tokens_per_message);
    if input > shared.context_window(&model) {
        ledger.with_stats(&model, |s| s.validation_errors += 1);
        return validation_response(MSG_TOO_LONG, &rid);
    }
    let limit = facts
        .max_tokens
        .unwrap_or_else(|| shared.max_output(&model));
    let burndown = shared.burndown(&model);
    let output = shared.draw_output(&mut rng, limit);
    if !shared.admission_delay.is_zero() {
        sleep(shared.admission_delay).await;
    }
    let reserve = input.saturating_add(limit.saturating_mul(burndown));
    let reservation = match ledger.reserve(&model, reserve) {
        Ok(r) => r.with_input(input),
        Err(refusal) => return throttle_response(refusal, &rid),
    };
    let job = ChatJob {
        id: format!("chatcmpl-{}", rid.replace('-', "")),
        model,
        input,
        output,
        finish_reason: if output >= limit { "length" } else { "stop" },
        burndown,
        include_usage: body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let (tx, rx) = mpsc::channel(64);
        let mut resp = Response::new(EmulatorBody::stream(rx));
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        if let Ok(v) = HeaderValue::from_str(&rid) {
            h.insert("x-amzn-requestid", v);
        }
        tokio::spawn(stream(shared, job, reservation, tx));
        return resp;
    }
    sleep(shared.latency.total(job.output)).await;
    reservation.settle(job.input, job.output, job.burndown);
    let body = json!({
        "id": job.id,
        "object": "chat.completion",
        "created": 0,
        "model": job.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": output_text(0, job.output)},
            "finish_reason": job.finish_reason,
        }],
        "usage": job.usage(),
    });
    json_response(StatusCode::OK, &body, &rid)
}

/// One admitted Chat Completions request's numbers.
#[derive(Debug)]
struct ChatJob {
    id: String,
    model: String,
    input: u64,
    output: u64,
    finish_reason: &'static str,
    burndown: u64,
    include_usage: bool,
}

impl ChatJob {
    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.input,
            "completion_tokens": self.output,
            "total_tokens": self.input + self.output,
        })
    }

    /// A `chat.completion.chunk` event with `choices`; `"usage": null` when the request asked
    /// for usage, as OpenAI's stream then has it in every chunk but the last.
    fn chunk(&self, choices: Value) -> Bytes {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        event(&chunk)
    }
}

fn event(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// Produces the server-sent events over the latency model, then settles.
async fn stream(
    shared: Arc<Shared>,
    job: ChatJob,
    reservation: Reservation,
    tx: mpsc::Sender<Bytes>,
) {
    let start = Instant::now();
    let latency = shared.latency;
    let chunk_tokens = shared.stream_chunk_tokens.max(1);
    sleep_until(start + latency.first_token).await;
    let opening = job.chunk(json!([{
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "finish_reason": null,
    }]));
    if tx.send(opening).await.is_err() {
        reservation.settle(job.input, 0, job.burndown);
        return;
    }
    let mut emitted = 0;
    while emitted < job.output {
        let k = chunk_tokens.min(job.output - emitted);
        let per = u32::try_from(emitted + k).unwrap_or(u32::MAX);
        sleep_until(start + latency.first_token + latency.per_output_token.saturating_mul(per))
            .await;
        let delta = job.chunk(json!([{
            "index": 0,
            "delta": {"content": output_text(emitted, k)},
            "finish_reason": null,
        }]));
        if tx.send(delta).await.is_err() {
            reservation.settle(job.input, emitted, job.burndown);
            return;
        }
        emitted += k;
    }
    let mut closing = vec![job.chunk(json!([{
        "index": 0,
        "delta": {},
        "finish_reason": job.finish_reason,
    }]))];
    if job.include_usage {
        closing.push(event(&json!({
            "id": job.id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": job.model,
            "choices": [],
            "usage": job.usage(),
        })));
    }
    closing.push(Bytes::from_static(b"data: [DONE]\n\n"));
    // Settle before the last events leave, so a caller that sends its next request on
    // receipt of them always sees the refund.
    reservation.settle(job.input, job.output, job.burndown);
    for event in closing {
        if tx.send(event).await.is_err() {
            return;
        }
    }
}
