//! Error responses for servers: every error of the stack below becomes the HTTP response
//! Bedrock would send, so the service never fails.
//!
//! ```
//! use std::convert::Infallible;
//! use bedrock_throttle::{
//!     error_response::ErrorResponseLayer, BedrockThrottleLayer, Quota, ThrottleConfig,
//! };
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), bedrock_throttle::BoxError> {
//! let cfg = ThrottleConfig::builder()
//!     .quota(Quota::tokens_per_minute(1_000))
//!     .build()?;
//! let upstream = service_fn(|_req: http::Request<Full<Bytes>>| async {
//!     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
//! });
//! // What an axum router or a hyper server takes: `Error = Infallible`.
//! let gateway = ServiceBuilder::new()
//!     .layer(ErrorResponseLayer::new())
//!     .layer(BedrockThrottleLayer::new(cfg))
//!     .service(upstream);
//!
//! // Never fits a 1 000-token quota: answered as Bedrock would, nothing sent upstream.
//! let body = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":4096,
//!                "messages":[{"role":"user","content":"Hello"}]}"#;
//! let request = http::Request::post("/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke")
//!     .body(Full::new(Bytes::from(body)))?;
//! let response = gateway.oneshot(request).await.unwrap_or_else(|never: Infallible| match never {});
//! assert_eq!(response.status(), 400);
//! assert_eq!(response.headers()["x-amzn-errortype"], "ValidationException");
//! # Ok(()) }
//! ```
//!
//! A [`ThrottleError`](crate::ThrottleError) anywhere in an error's chain of sources becomes
//! [`ThrottleError::to_response`](crate::ThrottleError::to_response): a shed or timed-out
//! request a 429 `ThrottlingException` with `Retry-After`, one that can never fit a 400
//! `ValidationException`, a lost shared ledger a 503 `ServiceUnavailableException` (the
//! table is in [`ThrottleError`](crate::ThrottleError)'s docs). Any other error is the inner
//! service's, that is upstream's: a 502 `ServiceUnavailableException` with a message that
//! names no detail of it (the error itself is logged at `warn`). An error from the inner
//! service's `poll_ready` is answered the same way, to the request that comes next.
//!
//! Unlike axum's `HandleErrorLayer`, it needs no handler and no `Clone` of the inner
//! service, and it calls only the service that `poll_ready` made ready. Successful
//! responses pass through untouched, as the left side of an
//! [`Either`] body.

mod future;
mod layer;
mod service;

pub use self::{future::ResponseFuture, layer::ErrorResponseLayer, service::ErrorResponse};

use bytes::Bytes;
use http_body_util::{Either, Full};

/// The body of an [`ErrorResponse`]'s responses: the inner service's body, or the JSON of
/// an error response.
pub type ErrorResponseBody<B> = Either<B, Full<Bytes>>;
