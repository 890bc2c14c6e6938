//! The dual-limit gate: admit a request only when both the request budget and the token
//! budget of its quota key have room; wait in FIFO order otherwise; settle with actual usage.
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
//! | 2xx JSON body with usage (Converse, Anthropic, Llama, Titan, Cohere) | the same, when the body has been read to its end |
//! | 2xx without usage (streams, unknown APIs), or a body dropped unread | the whole reservation (the safe side) |
//! | 429, 400, 403, 404, 413, 503 | nothing: Bedrock refused before running |
//! | other errors, connection failures, a caller that drops the response future | the whole reservation |
//!
//! The request count is never given back: a sent request is a request.
//!
//! # Waiting
//! Requests of one key queue in arrival order and only the head may be admitted, so a large
//! request is never overtaken forever by small ones. A request whose tokens exceed the key's
//! whole token quota fails at once ([`ThrottleError::NeverFits`](crate::ThrottleError)); one
//! that waits longer than `max_wait` fails with `MaxWaitExceeded`; neither is sent. Dropping
//! the response future while waiting gives the queue place back. A waiting request holds the
//! inner service that was made ready for it (as tower's `Oneshot` does), so a concurrency
//! limit below the gate counts waiting requests too.
//!
//! # Slowing down
//! An upstream 429 means the quota was smaller than the ledger thought (another client
//! spends from it, or the configured number is too high). The key's buckets are emptied and
//! its refill rates are cut to 70 % (of the current rate, at most once a second, never below
//! 10 %), then return linearly to the configured rate over `throttle_recovery` (one period
//! of the key's quota unless set).
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

mod body;
mod future;
mod layer;
mod service;

pub use self::{body::SettlingBody, future::ResponseFuture, layer::GateLayer, service::Gate};
