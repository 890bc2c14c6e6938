//! Which limit binds, and what to ask AWS for: throttle classes, demand against grant per
//! quota key, and the capacity report.
//!
//! The gate records, per quota key and per minute over the last hour (per quota period over
//! the last sixty, for a quota with another [`period`](crate::Quota::with_period)):
//!
//! - **demand**: the requests and quota tokens callers asked for, counted when each attempt
//!   arrives at the gate, so time spent waiting in the queue does not hide it (a caller
//!   that waits a minute for room still wanted it in the minute it asked);
//! - **grant**: the requests and tokens the gate admitted;
//! - **throttles** from upstream by the limit they named ([`ThrottleKind`]);
//! - the **wasted output reservation**: output tokens reserved (`max_tokens`, times the
//!   burndown) that the response did not use. Bedrock reserves `max_tokens` at admission,
//!   so an oversized or unset `max_tokens` is a common cause of TPM throttling.
//!
//! [`ThrottleConfig::capacity_report`](crate::ThrottleConfig::capacity_report) turns these
//! into one row per model: the binding limit, the quota, the observed peak and p95 demand,
//! and the RPM and TPM a quota-increase request should ask for, each with its reasoning.
//!
//! ```
//! use bedrock_throttle::{BedrockThrottleLayer, Quota, ThrottleConfig};
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), bedrock_throttle::BoxError> {
//! let cfg = ThrottleConfig::builder().quota(Quota::new(50, 400_000)).build()?;
//! let upstream = service_fn(|_req: http::Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(
//!         http::Response::builder()
//!             .header("x-amzn-bedrock-input-token-count", "12")
//!             .header("x-amzn-bedrock-output-token-count", "40")
//!             .body(Full::new(Bytes::new()))
//!             .unwrap(),
//!     )
//! });
//! let client = ServiceBuilder::new()
//!     .layer(BedrockThrottleLayer::new(cfg.clone()))
//!     .service(upstream);
//! let body = r#"{"max_tokens":512,"messages":[{"role":"user","content":"Hello"}]}"#;
//! let request = http::Request::post(
//!     "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke",
//! )
//! .body(Full::new(Bytes::from(body)))?;
//! client.oneshot(request).await?;
//!
//! // For a `/debug` endpoint, a log line, or the end of a batch job:
//! let report = cfg.capacity_report();
//! let row = &report.rows[0];
//! assert_eq!(row.quota.tokens(), 400_000);
//! assert_eq!(row.demand.peak_requests, 1);
//! assert_eq!(row.wasted_output_tokens, 512 - 40);
//! println!("{report}");
//! # Ok(()) }
//! ```

mod kind;
mod record;
mod report;

pub(crate) use self::record::{KeyRecord, Recorder};
pub use self::{
    kind::ThrottleKind,
    report::{
        BindingLimit, CapacityReport, ModelCapacity, RateStats, ThrottleCounts, REQUEST_MARGIN,
    },
};
