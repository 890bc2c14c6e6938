//! What a Bedrock request will cost in tokens, estimated from its body before it is sent.
//!
//! ```
//! use bedrock_throttle::estimate::{
//!     Calibration, EstimateMethod, HeuristicEstimator, Operation, RequestInfo, TokenEstimator,
//! };
//!
//! let body = br#"{
//!     "anthropic_version": "bedrock-2023-05-31",
//!     "max_tokens": 1024,
//!     "messages": [{"role": "user", "content": "Summarise the Broad Street pump story."}]
//! }"#;
//! let request = RequestInfo {
//!     model: Some("us.anthropic.claude-sonnet-4-20250514-v1:0"),
//!     operation: Operation::Invoke,
//!     body,
//! };
//! let estimator = HeuristicEstimator::default();
//! let estimate = estimator.estimate(&request);
//! assert_eq!(estimate.method, EstimateMethod::Heuristic);
//! assert_eq!(estimate.output_limit, 1024);
//! assert!(estimate.output_limit_from_body);
//! assert!((8..20).contains(&estimate.input_tokens));
//!
//! // Without max_tokens Bedrock reserves the model's maximum output.
//! let request = RequestInfo {
//!     body: br#"{"messages": [{"role": "user", "content": [{"text": "hi"}]}]}"#,
//!     operation: Operation::Converse,
//!     ..request
//! };
//! assert_eq!(estimator.estimate(&request).output_limit, 64_000);
//!
//! // Learn the model's real tokenizer from reported usage, then correct later estimates.
//! let calibration = Calibration::new();
//! calibration.observe("us.anthropic.claude-sonnet-4-20250514-v1:0", 100, 111);
//! assert_eq!(calibration.apply("us.anthropic.claude-sonnet-4-20250514-v1:0", 1_000), 1_110);
//! ```
//!
//! The pieces:
//! - [`HeuristicEstimator`], the default [`TokenEstimator`]: validates the body in one pass
//!   without building a tree, finds its [shape](shapes::Shape), reads only the fields that
//!   shape needs in place, counts text with the [character-class heuristic](text) (JSON
//!   strings counted where they are, escapes included, without copying them),
//!   images by their [dimensions](image), and takes the output limit from the body or the
//!   [model table](limits).
//! - `Cl100kEstimator` (feature `cl100k`): the same shapes, text counted by the real
//!   cl100k tokenizer.
//! - [`Calibration`]: learns per model how far the estimate is from the reported usage.
//!
//! Bad input never panics nor errors: a body that is not understood (empty, not JSON,
//! not UTF-8, nested deeper than serde_json's recursion limit, an unknown shape, or a known
//! shape with a wrong-typed text field) is estimated by its length
//! ([`EstimateMethod::BodyLength`]) and a `tracing` debug event says why.
//!
//! # The middleware
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
pub(crate) mod scan;
mod service;

#[cfg(test)]
mod differential_tests;

pub mod calibration;
pub mod image;
pub mod limits;
pub mod shapes;
pub mod text;

use crate::QuotaKey;

pub use self::{
    future::ResponseFuture, layer::EstimateLayer, minimal::BodyLengthEstimator, service::Estimate,
};
pub use calibration::Calibration;
pub use image::ImageCost;
pub use limits::{default_output_limit, OutputLimits};
pub use shapes::Shape;

use limits::UNKNOWN_MODEL_OUTPUT_LIMIT;
use shapes::OutputField;

/// Which Bedrock operation a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// `POST /model/{modelId}/invoke` (InvokeModel).
    Invoke,
    /// `POST /model/{modelId}/invoke-with-response-stream`.
    InvokeStream,
    /// `POST /model/{modelId}/converse`.
    Converse,
    /// `POST /model/{modelId}/converse-stream`.
    ConverseStream,
    /// `POST /model/{modelId}/count-tokens`: free, estimated as zero tokens.
    CountTokens,
    /// `POST /openai/v1/chat/completions` (and `/v1/chat/completions` on a bedrock-runtime
    /// host): OpenAI-compatible Chat Completions, streamed or not, the model named in the
    /// body. It shares the model's quota with InvokeModel and Converse.
    ChatCompletions,
    /// Anything else.
    Other,
}

impl Operation {
    /// The operation named by the last segment of a Bedrock runtime path
    /// (`invoke`, `invoke-with-response-stream`, `converse`, `converse-stream`,
    /// `count-tokens`).
    pub fn from_path_segment(segment: &str) -> Operation {
        crate::bedrock::path::operation(segment)
    }
}

/// How an estimate was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EstimateMethod {
    /// Set by the caller in the request extensions.
    Manual,
    /// The body was not understood (malformed JSON, non-UTF-8, too deeply nested, unknown
    /// shape, wrong-typed text field): input tokens are the body length in bytes / 4, rounded
    /// up (about one token per four bytes of JSON: the density of English and of JSON
    /// syntax; base64 payloads are denser in tokens, so this errs low for them). The output
    /// limit is still read from a known shape's field when that field is usable, else it is
    /// the model's default.
    BodyLength,
    /// A known request shape, text counted by the character-class heuristic.
    Heuristic,
    /// A known request shape, text counted by the real cl100k tokenizer (feature `cl100k`).
    Tokenizer,
}

/// What one request body costs before calibration.
#[derive(Clone, Debug, PartialEq)]
pub struct BodyEstimate {
    /// Input tokens: text, images, documents and per-message overheads.
    pub input_tokens: u64,
    /// Output tokens the request may produce: the body's max-tokens field, else the model's
    /// default/maximum ([`limits`]), else 0 for embeddings (output is not tokens).
    pub output_limit: u64,
    /// True when `output_limit` came from the body, false when from the table.
    pub output_limit_from_body: bool,
    /// How the estimate was obtained.
    pub method: EstimateMethod,
}

/// What an estimator sees of a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    /// The model id, inference profile id or ARN (percent-encoded or not), if known.
    pub model: Option<&'a str>,
    /// The Bedrock operation.
    pub operation: Operation,
    /// The request body.
    pub body: &'a [u8],
}

impl<'a> RequestInfo<'a> {
    /// Reads the model id and operation from a Bedrock runtime path
    /// (`/model/{modelId}/{operation}`), as the [`EstimateLayer`] and the quota key do; the
    /// model id stays percent-encoded, which every function here accepts.
    /// `/openai/v1/chat/completions` is [`Operation::ChatCompletions`] with no model (its
    /// model is in the body; set `model` from there). Any other path,
    /// an empty model id or an operation Bedrock does not have gives no model and
    /// [`Operation::Other`].
    ///
    /// ```
    /// use bedrock_throttle::estimate::{Operation, RequestInfo};
    /// let info = RequestInfo::from_path(
    ///     "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke",
    ///     b"{}",
    /// );
    /// assert_eq!(info.model, Some("anthropic.claude-3-5-sonnet-20240620-v1%3A0"));
    /// assert_eq!(info.operation, Operation::Invoke);
    /// ```
    pub fn from_path(path: &'a str, body: &'a [u8]) -> Self {
        let parsed = crate::bedrock::path::parse_path(path);
        // A path alone has no host: only the Chat Completions path valid on any host counts.
        let chat = parsed.is_none() && crate::bedrock::path::is_chat_completions(path, false);
        Self {
            model: parsed.map(|p| p.raw_model),
            operation: match parsed {
                Some(p) => p.operation,
                None if chat => Operation::ChatCompletions,
                None => Operation::Other,
            },
            body,
        }
    }
}

/// Pluggable estimator.
///
/// Implementations must not panic on any input; see [`HeuristicEstimator`].
pub trait TokenEstimator: std::fmt::Debug + Send + Sync + 'static {
    /// Estimates one request body.
    fn estimate(&self, request: &RequestInfo<'_>) -> BodyEstimate;
}

/// The default estimator: every shape in `bedrock.md`, text counted by
/// [`text::count_tokens`].
///
/// Options: the [image pricing](ImageCost) and per-model
/// [output limit overrides](OutputLimits). See the [module example](self).
///
/// ```
/// use bedrock_throttle::estimate::{HeuristicEstimator, Operation, RequestInfo, TokenEstimator};
/// let estimator = HeuristicEstimator::new()
///     .with_output_limit("anthropic.claude-sonnet-4", 8_000)
///     .with_image_tokens_unknown(1_000);
/// let info = RequestInfo {
///     model: Some("global.anthropic.claude-sonnet-4-5-20250929-v1:0"),
///     operation: Operation::ConverseStream,
///     body: br#"{"messages":[{"role":"user","content":[{"image":{"format":"png","source":{"s3Location":{"uri":"s3://b/k"}}}}]}]}"#,
/// };
/// let estimate = estimator.estimate(&info);
/// assert_eq!(estimate.output_limit, 8_000);
/// assert!(!estimate.output_limit_from_body);
/// assert!(estimate.input_tokens >= 1_000);
/// ```
#[derive(Clone, Debug, Default)]
pub struct HeuristicEstimator {
    images: ImageCost,
    output_limits: OutputLimits,
}

impl HeuristicEstimator {
    /// Default options: [`ImageCost::default`], the built-in output limit table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Overrides the output reservation for every model whose base id starts with `model`
    /// (see [`OutputLimits::with`]).
    pub fn with_output_limit(mut self, model: impl AsRef<str>, tokens: u64) -> Self {
        self.output_limits.set(model, tokens);
        self
    }

    /// Replaces the whole output limit table.
    pub fn with_output_limits(mut self, limits: OutputLimits) -> Self {
        self.output_limits = limits;
        self
    }

    /// Replaces the image pricing.
    pub fn with_image_cost(mut self, images: ImageCost) -> Self {
        self.images = images;
        self
    }

    /// Tokens charged for an image whose dimensions cannot be read (default 1,600).
    pub fn with_image_tokens_unknown(mut self, tokens: u64) -> Self {
        self.images.unknown_tokens = tokens;
        self
    }

    /// Most tokens one image can cost (default 1,600).
    pub fn with_image_token_cap(mut self, tokens: u64) -> Self {
        self.images.max_tokens = tokens;
        self
    }

    /// The output limit table in use.
    pub fn output_limits(&self) -> &OutputLimits {
        &self.output_limits
    }

    /// The image pricing in use.
    pub fn image_cost(&self) -> &ImageCost {
        &self.images
    }

    /// Estimates `request` with these options, counting text with `count` and labelling a
    /// successful parse with `method`. This is what [`TokenEstimator::estimate`] calls with
    /// [`text::count_tokens`]; other counters (a real tokenizer) can reuse the shapes.
    ///
    /// The body is not parsed into a tree: it is validated in one pass, then only the fields
    /// the shape needs are read from it. Strings with escapes are unescaped into a temporary
    /// `String` for `count`; the default estimator counts them in place.
    pub fn estimate_with(
        &self,
        request: &RequestInfo<'_>,
        count: &dyn Fn(&str) -> u64,
        method: EstimateMethod,
    ) -> BodyEstimate {
        self.estimate_raw(request, &shapes::CountFn(count), method)
    }

    fn estimate_raw(
        &self,
        request: &RequestInfo<'_>,
        count: &impl shapes::TextCount,
        method: EstimateMethod,
    ) -> BodyEstimate {
        if request.operation == Operation::CountTokens {
            return BodyEstimate {
                input_tokens: 0,
                output_limit: 0,
                output_limit_from_body: false,
                method,
            };
        }
        let model_shape = request.model.and_then(Shape::from_model);
        if request.body.is_empty() {
            return self.by_length(request, "empty body", model_shape, OutputField::Absent);
        }
        let doc = match scan::validate(request.body) {
            Ok(doc) => doc,
            Err(e) => {
                tracing::debug!(error = e.reason(), "request body is not JSON");
                return self.by_length(request, "not JSON", model_shape, OutputField::Absent);
            }
        };
        let body = doc.root();
        let Some(shape) = Shape::detect_raw(request.model, request.operation, body) else {
            return self.by_length(request, "unknown shape", model_shape, OutputField::Absent);
        };
        let measured = shapes::measure_raw(shape, body, count, &self.images);
        self.finish(request, shape, measured, method)
    }

    /// The output limit from the model table for `shape` (0 for embeddings).
    fn table(&self, request: &RequestInfo<'_>, shape: Option<Shape>) -> u64 {
        if shape.is_some_and(Shape::is_embedding) {
            0
        } else {
            request
                .model
                .map_or(UNKNOWN_MODEL_OUTPUT_LIMIT, |m| self.output_limits.get(m))
        }
    }

    /// The estimate of a body that is not understood: its length.
    fn by_length(
        &self,
        request: &RequestInfo<'_>,
        reason: &str,
        shape: Option<Shape>,
        output: OutputField,
    ) -> BodyEstimate {
        tracing::debug!(
            model = request.model,
            operation = ?request.operation,
            body_len = request.body.len(),
            reason,
            "request body estimated by its length"
        );
        let (output_limit, output_limit_from_body) = match output {
            OutputField::Value(n) if !shape.is_some_and(Shape::is_embedding) => (n, true),
            _ => (self.table(request, shape), false),
        };
        BodyEstimate {
            input_tokens: text::count_bytes(request.body.len()),
            output_limit,
            output_limit_from_body,
            method: EstimateMethod::BodyLength,
        }
    }

    /// The estimate from what the walk of a body of `shape` measured.
    fn finish(
        &self,
        request: &RequestInfo<'_>,
        shape: Shape,
        measured: shapes::Measured,
        method: EstimateMethod,
    ) -> BodyEstimate {
        if measured.partial {
            return self.by_length(
                request,
                "field of unexpected type",
                Some(shape),
                measured.output,
            );
        }
        let (output_limit, output_limit_from_body) = match measured.output {
            _ if shape.is_embedding() => (0, false),
            OutputField::Value(n) => (n, true),
            OutputField::Absent | OutputField::Invalid => (self.table(request, Some(shape)), false),
        };
        BodyEstimate {
            input_tokens: measured.input_tokens,
            output_limit,
            output_limit_from_body,
            method,
        }
    }

    /// The former path, kept as the reference for the raw walk: parse the body into a
    /// `serde_json::Value`, then walk it with `shapes::measure`.
    #[cfg(test)]
    fn estimate_with_value(
        &self,
        request: &RequestInfo<'_>,
        count: &dyn Fn(&str) -> u64,
        method: EstimateMethod,
    ) -> BodyEstimate {
        if request.operation == Operation::CountTokens {
            return BodyEstimate {
                input_tokens: 0,
                output_limit: 0,
                output_limit_from_body: false,
                method,
            };
        }
        let model_shape = request.model.and_then(Shape::from_model);
        if request.body.is_empty() {
            return self.by_length(request, "empty body", model_shape, OutputField::Absent);
        }
        let value: serde_json::Value = match serde_json::from_slice(request.body) {
            Ok(v) => v,
            Err(_) => return self.by_length(request, "not JSON", model_shape, OutputField::Absent),
        };
        let Some(shape) = Shape::detect(request.model, request.operation, &value) else {
            return self.by_length(request, "unknown shape", model_shape, OutputField::Absent);
        };
        let measured = shapes::measure(shape, &value, count, &self.images);
        self.finish(request, shape, measured, method)
    }
}

impl TokenEstimator for HeuristicEstimator {
    fn estimate(&self, request: &RequestInfo<'_>) -> BodyEstimate {
        self.estimate_raw(request, &shapes::Heuristic, EstimateMethod::Heuristic)
    }
}

/// Estimator that counts text with the real cl100k tokenizer (`tiktoken-rs`), over the same
/// shapes as [`HeuristicEstimator`] (whose options it carries).
///
/// cl100k is OpenAI's tokenizer, not Claude's: it is exact for no Bedrock model, but closer
/// than the heuristic for text unlike the heuristic's calibration corpus. Texts longer than
/// [`Cl100kEstimator::MAX_TOKENIZED_LEN`] bytes are counted by the heuristic instead, because
/// byte-pair merging is quadratic on long runs without spaces. Loading the tokenizer takes
/// some milliseconds on first use.
///
/// ```
/// # #[cfg(feature = "cl100k")] {
/// use bedrock_throttle::estimate::{
///     Cl100kEstimator, EstimateMethod, Operation, RequestInfo, TokenEstimator,
/// };
/// let info = RequestInfo {
///     model: Some("meta.llama3-8b-instruct-v1:0"),
///     operation: Operation::Invoke,
///     body: br#"{"prompt": "hello world", "max_gen_len": 10}"#,
/// };
/// let estimate = Cl100kEstimator::new().estimate(&info);
/// assert_eq!(estimate.input_tokens, 2);
/// assert_eq!(estimate.method, EstimateMethod::Tokenizer);
/// # }
/// ```
#[cfg(feature = "cl100k")]
#[cfg_attr(docsrs, doc(cfg(feature = "cl100k")))]
#[derive(Clone, Debug, Default)]
pub struct Cl100kEstimator {
    options: HeuristicEstimator,
}

#[cfg(feature = "cl100k")]
impl Cl100kEstimator {
    /// Texts longer than this many bytes are counted by the heuristic.
    pub const MAX_TOKENIZED_LEN: usize = 256 * 1024;

    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses the options (image pricing, output limits) of `options`.
    pub fn from_heuristic(options: HeuristicEstimator) -> Self {
        Self { options }
    }

    /// Counts `text` with cl100k (or the heuristic past [`Self::MAX_TOKENIZED_LEN`]).
    pub fn count(text: &str) -> u64 {
        if text.len() > Self::MAX_TOKENIZED_LEN {
            return text::count_tokens(text);
        }
        tiktoken_rs::cl100k_base_singleton()
            .encode_ordinary(text)
            .len() as u64
    }
}

#[cfg(feature = "cl100k")]
impl TokenEstimator for Cl100kEstimator {
    fn estimate(&self, request: &RequestInfo<'_>) -> BodyEstimate {
        self.options
            .estimate_with(request, &Self::count, EstimateMethod::Tokenizer)
    }
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
    /// The estimator's input count before calibration, to learn from.
    raw_input_tokens: u64,
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
            raw_input_tokens: input_tokens,
            output_limit,
            method: EstimateMethod::Manual,
        }
    }

    /// Charges the request to `key`.
    pub fn with_key(mut self, key: QuotaKey) -> Self {
        self.key = Some(key);
        self
    }

    pub(crate) fn from_body(
        key: QuotaKey,
        operation: Operation,
        body: BodyEstimate,
        calibrated_input: u64,
    ) -> Self {
        Self {
            key: Some(key),
            operation,
            input_tokens: calibrated_input,
            raw_input_tokens: body.input_tokens,
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

    /// Estimated input tokens, calibrated.
    pub fn input_tokens(&self) -> u64 {
        self.input_tokens
    }

    /// The estimator's input tokens before calibration.
    pub fn raw_input_tokens(&self) -> u64 {
        self.raw_input_tokens
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

#[cfg(test)]
mod tests {
    use super::*;

    fn est(model: Option<&str>, operation: Operation, body: &[u8]) -> BodyEstimate {
        HeuristicEstimator::new().estimate(&RequestInfo {
            model,
            operation,
            body,
        })
    }

    const SONNET4: &str = "us.anthropic.claude-sonnet-4-20250514-v1:0";

    #[test]
    fn fallbacks() {
        let e = est(Some(SONNET4), Operation::Invoke, b"");
        assert_eq!(e.method, EstimateMethod::BodyLength);
        assert_eq!((e.input_tokens, e.output_limit), (0, 64_000));
        let e = est(None, Operation::Invoke, b"{not json");
        assert_eq!((e.input_tokens, e.output_limit), (3, 4_096));
        let e = est(
            Some("cohere.embed-english-v3"),
            Operation::Invoke,
            b"\xff\xfe{}",
        );
        assert_eq!((e.method, e.output_limit), (EstimateMethod::BodyLength, 0));
        let e = est(None, Operation::Other, br#"{"foo": "bar"}"#);
        assert_eq!(e.method, EstimateMethod::BodyLength);
        let e = est(
            Some("amazon.titan-text-express-v1"),
            Operation::Invoke,
            b"{\"inputText\": \"a\xff\"}",
        );
        assert_eq!(e.method, EstimateMethod::BodyLength);
        // Too deep for serde_json's recursion limit.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = est(Some(SONNET4), Operation::Invoke, deep.as_bytes());
        assert_eq!(e.method, EstimateMethod::BodyLength);
        assert_eq!(e.input_tokens, 5_000);
    }

    #[test]
    fn wrong_typed_fields() {
        let e = est(
            Some(SONNET4),
            Operation::Invoke,
            br#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":"200"}"#,
        );
        assert_eq!(
            (e.method, e.output_limit, e.output_limit_from_body),
            (EstimateMethod::Heuristic, 200, true)
        );
        let e = est(
            Some(SONNET4),
            Operation::Invoke,
            br#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":-1}"#,
        );
        assert_eq!((e.output_limit, e.output_limit_from_body), (64_000, false));
        let e = est(
            Some(SONNET4),
            Operation::Invoke,
            br#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":1e30}"#,
        );
        assert_eq!(e.output_limit, shapes::MAX_OUTPUT_LIMIT);
        let e = est(
            Some("meta.llama3-8b-instruct-v1:0"),
            Operation::Invoke,
            br#"{"prompt": 42, "max_gen_len": 99}"#,
        );
        assert_eq!(
            (e.method, e.output_limit, e.output_limit_from_body),
            (EstimateMethod::BodyLength, 99, true)
        );
        let e = est(
            Some("meta.llama3-8b-instruct-v1:0"),
            Operation::Invoke,
            br#"{"prompt": 42}"#,
        );
        assert_eq!((e.output_limit, e.output_limit_from_body), (512, false));
    }

    #[test]
    fn defaults_and_overrides() {
        let e = est(
            Some("amazon.titan-text-lite-v1"),
            Operation::InvokeStream,
            br#"{"inputText":"hello there"}"#,
        );
        assert_eq!(
            (e.input_tokens, e.output_limit, e.output_limit_from_body),
            (2, 512, false)
        );
        let e = est(
            Some("amazon.titan-embed-text-v2:0"),
            Operation::Invoke,
            br#"{"inputText":"hello there"}"#,
        );
        assert_eq!((e.output_limit, e.output_limit_from_body), (0, false));
        let e = est(
            Some("us.amazon.nova-lite-v1:0"),
            Operation::Invoke,
            br#"{"messages":[{"role":"user","content":[{"text":"x"}]}]}"#,
        );
        assert_eq!(e.output_limit, 5_000);
        let e = est(None, Operation::Converse, br#"{"messages":[]}"#);
        assert_eq!(e.output_limit, 4_096);
        let e = est(Some(SONNET4), Operation::CountTokens, b"{}");
        assert_eq!((e.input_tokens, e.output_limit), (0, 0));
        let h = HeuristicEstimator::new().with_output_limit("meta.llama3", 2_000);
        let e = h.estimate(&RequestInfo {
            model: Some("meta.llama3-8b-instruct-v1:0"),
            operation: Operation::Invoke,
            body: br#"{"prompt":"x"}"#,
        });
        assert_eq!(e.output_limit, 2_000);
        assert_eq!(h.output_limits().get("meta.llama3-70b"), 2_000);
    }

    #[test]
    fn images_priced_by_dimensions() {
        use base64::Engine as _;
        let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        png.extend_from_slice(&300u32.to_be_bytes());
        png.extend_from_slice(&250u32.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0]);
        let data = base64::engine::general_purpose::STANDARD.encode(&png);
        let body = format!(
            r#"{{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[{{"role":"user","content":[{{"type":"image","source":{{"type":"base64","media_type":"image/png","data":"{data}"}}}}]}}]}}"#
        );
        let e = est(Some(SONNET4), Operation::Invoke, body.as_bytes());
        // 300×250/750 = 100, + 4 message + 3 block
        assert_eq!(e.input_tokens, 107);
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":[{{"image":{{"format":"png","source":{{"bytes":"{data}"}}}}}}]}}]}}"#
        );
        let e = est(Some(SONNET4), Operation::Converse, body.as_bytes());
        assert_eq!(e.input_tokens, 107);
    }

    #[test]
    fn paths() {
        let i = RequestInfo::from_path("/model/us.amazon.nova-pro-v1%3A0/converse-stream?x=1", b"");
        assert_eq!(
            (i.model, i.operation),
            (Some("us.amazon.nova-pro-v1%3A0"), Operation::ConverseStream)
        );
        let i = RequestInfo::from_path(
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x/count-tokens",
            b"",
        );
        assert_eq!(i.operation, Operation::CountTokens);
        let i = RequestInfo::from_path("/other", b"");
        assert_eq!((i.model, i.operation), (None, Operation::Other));
        let i = RequestInfo::from_path("/model//invoke", b"");
        assert_eq!(i.model, None);
    }
}
