//! Keeps callers of AWS Bedrock, and of any token-metered LLM HTTP API, inside their
//! requests-per-minute and tokens-per-minute quotas.
//!
//! [`BedrockThrottleLayer`] is a tower middleware of three parts, each usable alone:
//!
//! 1. [`estimate`]: reads each request body once, finds the model and estimates its tokens;
//! 2. [`retry`]: retries throttled and transient failures with full-jitter backoff, a retry
//!    budget and the server's Retry-After;
//! 3. [`gate`]: admits each attempt only when both the request and the token budget of its
//!    model have room, charged the Bedrock way (input + max tokens × burndown, settled to
//!    actual usage), waiting in FIFO order otherwise.
//!
//! ```
//! use std::time::Duration;
//! use bedrock_throttle::{BedrockThrottleLayer, Quota, ThrottleConfig};
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), bedrock_throttle::BoxError> {
//! let cfg = ThrottleConfig::builder()
//!     .quota(Quota::tokens_per_minute(200_000))
//!     .model_quota("anthropic.claude-3-5-sonnet-20240620-v1:0", Quota::new(50, 400_000))
//!     .max_wait(Duration::from_secs(90))
//!     .build()?;
//!
//! // Any `Service<http::Request<B>>`: a hyper client, a proxy, an axum handler, a mock.
//! let upstream = service_fn(|_req: http::Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(
//!         http::Response::builder()
//!             .header("x-amzn-bedrock-input-token-count", "12")
//!             .header("x-amzn-bedrock-output-token-count", "40")
//!             .body(Full::new(Bytes::from_static(b"{\"content\":[]}")))
//!             .unwrap(),
//!     )
//! });
//! let client = ServiceBuilder::new()
//!     .layer(BedrockThrottleLayer::new(cfg))
//!     .service(upstream);
//!
//! let body = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":512,
//!                "messages":[{"role":"user","content":"Hello"}]}"#;
//! let request = http::Request::post(
//!     "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke",
//! )
//! .body(Full::new(Bytes::from(body)))?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! let bytes = response.into_body().collect().await?.to_bytes();
//! assert_eq!(&bytes[..], b"{\"content\":[]}");
//! # Ok(()) }
//! ```
//!
//! With the AWS SDK for Rust, [`aws::ThrottledHttpClient`] (feature `aws-sdk`, on by default)
//! puts the same stack under an `aws-sdk-bedrockruntime` client:
//! `Config::builder().http_client(ThrottledHttpClient::new(inner, cfg))`.
//!
//! In a server (axum, hyper), [`error_response::ErrorResponseLayer`] on top of the stack
//! answers every error the way Bedrock would (a 429 `ThrottlingException` with
//! `Retry-After` for a shed request, and so on), so the service never fails.
//!
//! Each request gets a `tracing` span (`bedrock_request`) with its quota key, estimate, wait,
//! attempts, settlement and outcome, and the layers count what they do per quota key
//! through the `metrics` facade and in [`ThrottleConfig::stats`]; never a body or a header.
//! The README's "Observability" lists the fields and metric names.
//!
//! Time comes from tokio's clock, so `#[tokio::test(start_paused = true)]` runs an hour of
//! quota traffic through the layer in milliseconds.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bedrock;
mod body;
mod config;
mod deadline;
pub mod diagnosis;
mod error;
mod key;
mod keys;
mod layer;
mod ledger;
mod quota;
mod scope;
#[cfg(feature = "serde")]
mod serialize;
mod stats;
mod table;
mod telemetry;

#[cfg(feature = "aws-sdk")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws-sdk")))]
pub mod aws;
#[cfg(feature = "emulator")]
#[cfg_attr(docsrs, doc(cfg(feature = "emulator")))]
pub mod emulator;
pub mod error_response;
pub mod estimate;
pub mod gate;
pub mod retry;
#[cfg(feature = "service-quotas")]
#[cfg_attr(docsrs, doc(cfg(feature = "service-quotas")))]
pub mod service_quotas;
pub mod service_tier;
#[cfg(feature = "sigv4")]
#[cfg_attr(docsrs, doc(cfg(feature = "sigv4")))]
pub mod sigv4;
pub mod tenant;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::ledger::RedisLedger;
pub use self::{
    config::{
        RetryBudget, ThrottleConfig, ThrottleConfigBuilder, BEDROCK_MAX_BODY_BYTES,
        DEFAULT_MAX_KEYS, DEFAULT_MAX_QUEUED,
    },
    deadline::SendDeadline,
    diagnosis::ThrottleKind,
    error::{BoxError, ConfigError, RefusedBy, ThrottleError},
    key::QuotaKey,
    layer::{BedrockThrottle, BedrockThrottleLayer},
    ledger::{
        Alone, Ask, Grant, Hold, Ledger, LedgerError, LedgerFuture, Limits, LocalLedger,
        OutagePolicy,
    },
    quota::{default_burndown, Quota, DISCOVER_START_TPM},
    scope::{ContextWindow, Scope},
    service_tier::ServiceTier,
    stats::{KeyStats, TenantStats, ThrottleStats},
    tenant::{Overload, Priority, Tenant, TenantPolicy},
};
