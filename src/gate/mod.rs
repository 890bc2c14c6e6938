//! The dual-limit gate: admit a request only when both the request budget and the token
//! budget of its quota key have room; wait in fair order otherwise; settle with actual usage.
//!
//! ```
//! use bedrock_throttle::{estimate::TokenEstimate, gate::GateLayer, Quota, ThrottleConfig};
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), bedrock_throttle::BoxError> {
//! let cfg = ThrottleConfig::builder().quota(Quota::new(50, 400_000)).build()?;
//! let svc = ServiceBuilder::new()
//!     .layer(GateLayer::new(cfg))
//!     .service(service_fn(|_req: http::Request<Full<Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(
//!             http::Response::builder()
//!                 .header("x-amzn-bedrock-input-token-count", "900")
//!                 .header("x-amzn-bedrock-output-token-count", "120")
//!                 .body(Full::new(Bytes::new()))
//!                 .unwrap(),
//!         )
//!     }));
//! let mut req = http::Request::post("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke")
//!     .body(Full::new(Bytes::from_static(b"{}")))?;
//! // Usually the estimate layer sets this; without one the gate estimates from Content-Length.
//! req.extensions_mut().insert(TokenEstimate::new(1_000, 1_024));
//! let response = svc.oneshot(req).await?;
//! assert!(response.status().is_success());
//! # Ok(()) }
//! ```
//!
//! # Charging
//! At admission a request takes 1 request (when the quota has an RPM) and
//! `input + output_limit × burndown` tokens, the way Bedrock reserves. When the response head
//! arrives the reservation is settled:
//!
//! | response | settled to |
//! |---|---|
//! | 2xx with `x-amzn-bedrock-*-token-count` headers | `input + cache_write + output × burndown` |
//! | 2xx JSON body with usage (Converse, Chat Completions, Anthropic, Llama, Titan, Cohere) | the same, when the body has been read to its end |
//! | 2xx `text/event-stream` (streamed Chat Completions) | the same, from the `usage` of the last chunk as soon as its event ends; the request must set `stream_options.include_usage` for there to be one |
//! | 2xx `text/event-stream` that ends or fails without usage | the whole reservation |
//! | 2xx event stream (InvokeModelWithResponseStream, ConverseStream) | the same, from `amazon-bedrock-invocationMetrics` in a `chunk` event or `usage` in the `metadata` event, as soon as that frame passes |
//! | 2xx event stream that ends, fails or is dropped before its usage | the whole reservation |
//! | 2xx event stream with a `throttlingException` frame after bytes reached the caller | the whole reservation, and the key slows down as for a 429 |
//! | 2xx event stream with any other exception frame after bytes reached the caller | the whole reservation |
//! | 2xx without usage (unknown APIs), or a body dropped unread | the whole reservation (the safe side) |
//! | a throttle (a throttling error code on any status, or a 429 without a code) | nothing: Bedrock refused before running; the key slows down |
//! | 429 with another code (`ModelNotReadyException`), 400, 403, 404, 413, 503 | nothing: Bedrock refused before running |
//! | other errors, connection failures, a caller that drops the response future | the whole reservation |
//!
//! The request count is never given back: a sent request is a request. A reservation kept
//! whole is never lost: like any charge it flows back into the bucket at the refill rate.
//! Keeping it whole is the safe side because Bedrock charges `input + output so far ×
//! burndown`, never more than it reserved; after a mid-stream throttle a smaller refund
//! would be moot anyway, since the throttle empties the key's buckets.
//!
//! # Event streams
//! Bedrock answers the streaming operations with HTTP 200 and then
//! `application/vnd.amazon.eventstream` frames; usage comes only in the last frames, and a
//! `throttlingException` can arrive inside the stream, where the AWS SDK never retries it.
//! For a 2xx event stream the response future waits for the first whole frame (the time to
//! first token) before it hands back the head:
//! - if that frame is a `throttlingException`, `serviceUnavailableException` or
//!   `internalServerException`, nothing has reached the caller yet, so the response becomes
//!   the equivalent error: 429 `ThrottlingException`, 503 `ServiceUnavailableException` or
//!   500 `InternalServerException` (in `x-amzn-errortype`), charged like that error by the
//!   table above, and the retry layer retries it through the gate. Its body is the exception
//!   frame exactly as Bedrock sent it (its payload is `{"message": ...}`); the
//!   `content-type` stays `application/vnd.amazon.eventstream`. (Through the AWS SDK
//!   wrapper the body becomes `{"message": ...}` itself, `application/json`, as in
//!   Bedrock's own error responses: the SDK reads errors only in that form.)
//! - otherwise the body ([`SettlingBody`]) first yields the frames already read, exactly as
//!   they came, then the rest of the stream. Every byte passes through unchanged and
//!   unbuffered; the body only keeps the bytes of a frame split across reads, and settles
//!   when the usage frame passes. Exception frames later in the stream pass on unchanged.
//!
//! A frame larger than 16 MiB, or bytes that are not event-stream frames, turn the reading
//! off: the stream passes on unread and keeps its whole reservation. The gate reads ahead at
//! most 1 MiB while waiting for the first frame.
//!
//! # Waiting
//! Requests of one key queue in arrival order (in weighted fair order across
//! [tenants](crate::tenant), interactive before batch within one) and only the head may be
//! admitted, so a large request is never overtaken forever by small ones. A request whose tokens exceed the key's
//! whole configured token quota fails at once
//! ([`ThrottleError::NeverFits`](crate::ThrottleError); never for a
//! [`Quota::discover`](crate::Quota::discover), which admits it from a full bucket); one
//! that waits longer than `max_wait` fails with `MaxWaitExceeded`; neither is sent. A
//! request the key's or the account's daily quota has no room for (see
//! [`Quota::with_tokens_per_day`](crate::Quota::with_tokens_per_day)) fails at once with
//! `DailyQuotaExhausted`, before it queues: its tokens are booked in the day's budgets when
//! it arrives, given back if it is never sent, and settled with the key's. Dropping
//! the response future while waiting gives the queue place back. A waiting request holds the
//! inner service that was made ready for it (as tower's `Oneshot` does), so a concurrency
//! limit below the gate counts waiting requests too.
//!
//! With [`max_queued`](crate::ThrottleConfigBuilder::max_queued) the queue of a key is
//! bounded: a request that finds it full fails at once with
//! [`ThrottleError::Overloaded`](crate::ThrottleError), carrying how long the queue ahead
//! takes to drain at the current rate, and is never sent; or, under
//! [`Overload::Backpressure`](crate::Overload), `poll_ready` is not ready while the bound's
//! worth of the budget's requests wait, so callers are held back before they hand over a
//! request (a request made ready takes one of the places, and gives it back when admitted).
//!
//! With a shared [`Ledger`](crate::Ledger) (one quota for many processes, e.g.
//! [`RedisLedger`](crate::RedisLedger)) the queue stays in the process; its head asks the
//! ledger for room and waits as long as the ledger answers; see the trait's docs.
//!
//! # Slowing down
//! An upstream 429 means the quota was smaller than the ledger thought (another client
//! spends from it, the configured number is too high, or it is the guess of a
//! [`Quota::discover`](crate::Quota::discover)). The throttled attempt's reservation comes back at once (Bedrock refused before
//! running), the key's buckets are emptied (upstream had no room), and its refill rates,
//! tokens and requests alike, follow a CUBIC-like curve as the AWS SDK's adaptive client
//! does, but in tokens as well as requests and relative to the quota period:
//!
//! - on a throttle the rate multiplier `m` is cut: `last_max = min(m, measured)`,
//!   `m = 0.7 × last_max`, where `measured` is the rate tokens were really drawn at over
//!   the last period (upstream's burst room can hide an excess for a while, so the allowed
//!   rate at the moment of the throttle overstates what upstream sustains). It is taken
//!   while requests queue, and at a discovered quota's first throttle in any case, whose
//!   limit was only a slow-start probe; otherwise `m` itself is cut;
//! - afterwards `m(t) = last_max × (1 + 0.3 × (t / K − 1)³)`: back at `last_max` after
//!   `K = throttle_recovery` (1.5 periods of the key's quota unless set), flat around it,
//!   then probing above it (1.3 × `last_max` at `2K`), i.e. `C = 0.3 × last_max / K³`;
//! - `t` counts only time in which the key is busy (a request waits, or a bucket is below
//!   half full), so an idle key does not drift up to a rate nobody tried;
//! - a configured quota is the ceiling (`m ≤ 1`); the floor is 1 % of the quota;
//! - a throttle of a request admitted before the last cut does not cut again: it reports
//!   the rate already corrected (the burst of in-flight refusals counts once).
//!
//! Each bucket has a multiplier of its own, and a throttle moves the one it names: the
//! gate reads the message of the throttle's JSON body (or of a `throttlingException` inside
//! an event stream) into a [`ThrottleKind`](crate::ThrottleKind). Whether an error is a
//! throttle goes by its error code and status first, as the AWS SDK reads them
//! ([`ThrottleKind::from_response`](crate::ThrottleKind::from_response)): a
//! `ValidationException` that says "too many tokens" (a prompt over the context window) is
//! no throttle, nor is a 429 `ModelNotReadyException`; a JSON error without
//! `x-amzn-errortype` is read for its body's `code` or `__type`. "Too many tokens" empties
//! and cuts the token bucket, "Too many requests" the request bucket, a message it does not
//! recognise both. A key with no request quota (none configured, or a
//! [`Quota::discover`](crate::Quota::discover)) gets a request bucket at its first
//! "Too many requests", starting at the request rate that was throttled and discovered from
//! there. "Too many tokens per day" cuts nothing: no per-minute rate fixes a daily quota.
//! The 429 reaches the caller whole (the gate reads at most 64 KiB of it), with its
//! `ThrottleKind` in the response extensions; the counts per class are in
//! [`ThrottleConfig::capacity_report`](crate::ThrottleConfig::capacity_report).
//!
//! A bucket holds one period at the current rate. The rate is re-evaluated every hundredth
//! of a period and constant in between, so the refill stays an exact sum, also in
//! `tokio::time::pause` tests. A [`Quota::discover`](crate::Quota::discover) starts from a
//! guess and doubles it every 0.15 period while busy until the first throttle (slow
//! start), then follows the same curve with no ceiling.
//!
//! # Headroom
//! Upstream counts a request when it arrives, a little after the gate admitted it, and its
//! buckets start when its first request arrives. A gate running exactly at the quota would
//! now and then be a few milliseconds ahead of upstream, so each bucket keeps `headroom`
//! (100 ms) of refill unused on top of every cost. Once the quota is saturated this constant
//! level costs no throughput.
//!
//! Unlike tower's `RateLimit`, the gate weighs each request by its tokens, waits inside the
//! response future (its `poll_ready` only delegates), and clones share one budget.

mod admit;
mod body;
mod future;
mod layer;
mod read_ahead;
mod service;
mod settle;

#[cfg(feature = "aws-sdk")]
pub(crate) use self::future::FirstFrameException;
pub use self::{body::SettlingBody, future::ResponseFuture, layer::GateLayer, service::Gate};
