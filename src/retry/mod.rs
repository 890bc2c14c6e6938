//! Backoff retry: retry throttled and transient failures with full-jitter exponential
//! backoff, a retry budget, and any Retry-After the server sends.
//!
//! ```
//! use std::time::Duration;
//! use bedrock_throttle::{retry::{Attempts, RetryLayer}, Quota, ThrottleConfig};
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), bedrock_throttle::BoxError> {
//! let cfg = ThrottleConfig::builder()
//!     .quota(Quota::tokens_per_minute(100_000))
//!     .base_delay(Duration::from_millis(200))
//!     .build()?;
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let svc = ServiceBuilder::new().layer(RetryLayer::new(cfg)).service(service_fn(move |_req: http::Request<Full<Bytes>>| {
//!     let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         let status = if n == 0 { 503 } else { 200 };
//!         Ok::<_, std::convert::Infallible>(http::Response::builder().status(status).body(()).unwrap())
//!     }
//! }));
//! let response = svc.oneshot(http::Request::new(Full::new(Bytes::from_static(b"{}")))).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
//! # Ok(()) }
//! ```
//!
//! # What is retried
//! | outcome | retried |
//! |---|---|
//! | a throttle: a throttling error code (`x-amzn-errortype` such as `ThrottlingException`, `TooManyRequestsException`, `SlowDown`, the AWS SDK's list) on any error status, or a 429 without an error code | yes, as a throttle |
//! | a throttle the gate below read from the body's `code` or `__type` (no header) | yes, as a throttle |
//! | a throttle the gate below read as "Too many tokens per day" ([`ThrottleKind::DailyTokens`](crate::ThrottleKind)) | no: the quota returns only as the day turns |
//! | `ModelNotReadyException` (a 429), `RequestTimeout`, `RequestTimeoutException` | yes, as transient (no throttle) |
//! | a 429 with another named error code (`ValidationException`…) | no: the code goes before the status, as in the AWS SDK |
//! | 500, 502, 503, 504 | yes |
//! | an error from the inner service (a connection error, a timeout) | yes |
//! | other 4xx (validation, access, quota-exceeded, model timeout 408, 424) | no |
//! | this crate's own errors (body too large, never fits, max wait exceeded) | no |
//!
//! Retry `n` waits `U(0, min(max_delay, base_delay × 2^(n-1)))` (full jitter), or exactly the
//! server's hint when the response carries `x-amz-retry-after` (ms), `retry-after-ms` (ms) or
//! `Retry-After` (seconds or an HTTP date), capped at `max_retry_after`. Each retry takes
//! from the shared [`RetryBudget`](crate::RetryBudget); an empty budget ends the retries.
//!
//! When the attempts (or the budget) run out, the caller gets the last upstream response as
//! it came; every response carries [`Attempts`] in its extensions. An inner error on the last
//! attempt becomes [`ThrottleError::Upstream`](crate::ThrottleError).
//!
//! The body is collected once (within the body limit) and re-created for each attempt with
//! `B::from(bytes)`. Unlike tower's `Retry`, no `Policy` needs writing and no request needs
//! to be `Clone`.

mod future;
mod layer;
mod policy;
mod service;

pub use self::{future::ResponseFuture, layer::RetryLayer, service::Retry};
pub(crate) use policy::RetryBudgetState;

/// How many attempts produced a response, the first included; in every response's
/// extensions after the retry layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attempts(pub u32);
