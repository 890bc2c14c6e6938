//! Token estimation: read each request body once, find its model, estimate its tokens.
//!
//! [`EstimateLayer`] collects the request body (within the body limit), finds the quota key
//! and operation from the path, asks the configured [`TokenEstimator`] for the input tokens
//! and the output limit, and puts the result in the request's extensions as a
//! [`TokenEstimate`], where the gate reads it. A caller that inserts a `TokenEstimate` itself
//! skips all of this: the body is not read.
//!
//! ```
//! use bedrock_throttle::{estimate::{EstimateLayer, TokenEstimate}, Quota, ThrottleConfig};
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let cfg = ThrottleConfig::builder().quota(Quota::tokens_per_minute(100_000)).build().unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(EstimateLayer::new(cfg))
//!     .service(service_fn(|req: http::Request<Full<Bytes>>| async move {
//!         let estimate = req.extensions().get::<TokenEstimate>().unwrap().clone();
//!         Ok::<_, std::convert::Infallible>(estimate)
//!     }));
//! let body = r#"{"messages":[{"role":"user","content":"Hello"}],"max_tokens":300}"#;
//! let req = http::Request::post("/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke")
//!     .body(Full::new(Bytes::from(body)))
//!     .unwrap();
//! let estimate = svc.oneshot(req).await.unwrap();
//! assert_eq!(estimate.key().unwrap().model(), Some("anthropic.claude-3-haiku-20240307-v1:0"));
//! assert_eq!(estimate.output_limit(), 300);
//! # }
//! ```
//!
//! Unlike a body-buffering middleware such as tower-http's, the body is re-created from the
//! collected bytes (`B: From<Bytes>`), so the request type is unchanged.

mod future;
mod layer;
mod minimal;
mod service;

pub use self::{
    future::ResponseFuture,
    layer::EstimateLayer,
    minimal::{default_output_limit, BodyLengthEstimator},
    service::Estimate,
};

use crate::QuotaKey;

/// Which Bedrock operation a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// `InvokeModel`: `/model/{id}/invoke`.
    Invoke,
    /// `InvokeModelWithResponseStream`: `/model/{id}/invoke-with-response-stream`.
    InvokeStream,
    /// `Converse`: `/model/{id}/converse`.
    Converse,
    /// `ConverseStream`: `/model/{id}/converse-stream`.
    ConverseStream,
    /// `CountTokens`: `/model/{id}/count-tokens`; free, so never charged.
    CountTokens,
    /// Anything else: another API, charged to the default key.
    Other,
}

/// How an estimate was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EstimateMethod {
    /// Set by the caller in the request extensions.
    Manual,
    /// From the body's length: a quarter token per byte, rounded up. This over-counts any
    /// JSON body, which is the safe side: settlement returns the difference.
    BodyLength,
    /// A known request shape, its text counted by a heuristic.
    Heuristic,
    /// A known request shape, its text counted by a real tokenizer.
    Tokenizer,
}

/// What one request body costs before calibration.
#[derive(Clone, Debug, PartialEq)]
pub struct BodyEstimate {
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens the request may produce: its max-tokens field, else the model's default.
    pub output_limit: u64,
    /// Whether `output_limit` came from the body (else from the model's default).
    pub output_limit_from_body: bool,
    /// How the numbers were obtained.
    pub method: EstimateMethod,
}

/// What an estimator sees of a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    /// The model id or inference profile, percent-decoded, if the path names one.
    pub model: Option<&'a str>,
    /// The Bedrock operation.
    pub operation: Operation,
    /// The whole request body.
    pub body: &'a [u8],
}

/// Estimates what a request body costs; plug your own with
/// `ThrottleConfigBuilder::estimator`.
///
/// ```
/// use bedrock_throttle::estimate::{BodyEstimate, EstimateMethod, RequestInfo, TokenEstimator};
///
/// /// Every request costs 1,000 tokens in and out.
/// #[derive(Debug)]
/// struct Flat;
///
/// impl TokenEstimator for Flat {
///     fn estimate(&self, _: &RequestInfo<'_>) -> BodyEstimate {
///         BodyEstimate {
///             input_tokens: 1_000,
///             output_limit: 1_000,
///             output_limit_from_body: false,
///             method: EstimateMethod::Heuristic,
///         }
///     }
/// }
/// ```
pub trait TokenEstimator: std::fmt::Debug + Send + Sync + 'static {
    /// The estimate for one request. Must not panic on any input.
    fn estimate(&self, request: &RequestInfo<'_>) -> BodyEstimate;
}

/// A request's estimated cost, carried in its extensions from the estimate layer to the gate.
///
/// Insert one yourself to skip body parsing:
///
/// ```
/// use bedrock_throttle::{estimate::TokenEstimate, QuotaKey};
///
/// let mut req = http::Request::post("/model/amazon.nova-pro-v1%3A0/converse").body(()).unwrap();
/// req.extensions_mut().insert(TokenEstimate::new(1_200, 512));
/// // or, charging a key of your choice:
/// req.extensions_mut().insert(
///     TokenEstimate::new(1_200, 512).with_key(QuotaKey::new(Some("amazon.nova-pro-v1:0"), Some("us-east-1"))),
/// );
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEstimate {
    key: Option<QuotaKey>,
    operation: Operation,
    input_tokens: u64,
    output_limit: u64,
    method: EstimateMethod,
}

impl TokenEstimate {
    /// A manual estimate: `input_tokens` in, up to `output_limit` out. Its key is read from
    /// the request path unless set with [`with_key`](Self::with_key).
    pub fn new(input_tokens: u64, output_limit: u64) -> Self {
        Self {
            key: None,
            operation: Operation::Other,
            input_tokens,
            output_limit,
            method: EstimateMethod::Manual,
        }
    }

    /// Charges the request to `key`.
    pub fn with_key(mut self, key: QuotaKey) -> Self {
        self.key = Some(key);
        self
    }

    pub(crate) fn from_body(key: QuotaKey, operation: Operation, body: BodyEstimate) -> Self {
        Self {
            key: Some(key),
            operation,
            input_tokens: body.input_tokens,
            output_limit: body.output_limit,
            method: body.method,
        }
    }

    /// The quota key, if set.
    pub fn key(&self) -> Option<&QuotaKey> {
        self.key.as_ref()
    }

    /// The operation, when the estimate layer found one.
    pub fn operation(&self) -> Operation {
        self.operation
    }

    /// Estimated input tokens.
    pub fn input_tokens(&self) -> u64 {
        self.input_tokens
    }

    /// Output tokens the request may produce.
    pub fn output_limit(&self) -> u64 {
        self.output_limit
    }

    /// How the estimate was obtained.
    pub fn method(&self) -> EstimateMethod {
        self.method
    }
}
