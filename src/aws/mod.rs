//! The throttle as an HTTP client of the AWS SDK for Rust: [`ThrottledHttpClient`] sends
//! every call of an `aws-sdk-bedrockruntime` client through the same estimate → retry →
//! gate stack as [`BedrockThrottleLayer`].
//!
//! ```no_run
//! use aws_sdk_bedrockruntime::config::{retry::RetryConfig, BehaviorVersion, Region};
//! use bedrock_throttle::{aws::ThrottledHttpClient, Quota, ThrottleConfig};
//!
//! # async fn run(inner: aws_smithy_runtime_api::client::http::SharedHttpClient,
//! #              credentials: aws_sdk_bedrockruntime::config::Credentials)
//! #     -> Result<(), bedrock_throttle::BoxError> {
//! let cfg = ThrottleConfig::builder()
//!     .model_quota("anthropic.claude-3-5-sonnet-20240620-v1:0", Quota::new(50, 400_000))
//!     .build()?;
//! // `inner` is the HTTP client the SDK would otherwise use, e.g.
//! // `aws_smithy_http_client::Builder::new().build_https()`.
//! let conf = aws_sdk_bedrockruntime::Config::builder()
//!     .behavior_version(BehaviorVersion::latest())
//!     .region(Region::new("us-east-1"))
//!     .credentials_provider(credentials)
//!     .http_client(ThrottledHttpClient::new(inner, cfg.clone()))
//!     .retry_config(RetryConfig::disabled()) // the throttle retries
//!     .build();
//! let client = aws_sdk_bedrockruntime::Client::from_conf(conf);
//! let answer = client
//!     .invoke_model()
//!     .model_id("anthropic.claude-3-5-sonnet-20240620-v1:0")
//!     .body(aws_sdk_bedrockruntime::primitives::Blob::new(
//!         r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":256,
//!            "messages":[{"role":"user","content":"Hello"}]}"#,
//!     ))
//!     .send()
//!     .await?;
//! # let _ = answer;
//! # Ok(()) }
//! ```
//!
//! `examples/aws_sdk.rs` runs this against Bedrock or the crate's emulator.
//!
//! # One budget
//! The budget belongs to the [`ThrottleConfig`]: every `ThrottledHttpClient` and every
//! [`BedrockThrottleLayer`] built from one configuration or its
//! clones spends from the same quotas, the same retry budget and the same calibration. Give
//! each SDK client (one per Region or per credentials, say) and each plain HTTP stack a
//! clone of one `ThrottleConfig` and together they stay inside the account's quotas; build
//! a second configuration only for a quota that is really separate (another account).
//!
//! # What goes through the stack
//! The SDK signs a request, then hands it to the HTTP client. Each request with an in-memory
//! body (every bedrock-runtime operation but the bidirectional stream) is estimated from its
//! body, retried and gated exactly as with the tower layer: the signed request is resent
//! unchanged on a retry. A request with a streaming body is not read and cannot be resent:
//! it goes through the gate alone, charged from its `Content-Length`. Responses are settled
//! from the real `x-amzn-bedrock-*-token-count` headers (InvokeModel) or the JSON usage of
//! the body (Converse) as the SDK reads it.
//!
//! # Event streams
//! ConverseStream and InvokeModelWithResponseStream go through the whole stack too (their
//! requests are in memory), with the gate's handling of event streams
//! ([`gate`](crate::gate#event-streams)):
//! - the SDK's `EventReceiver` reads the frames exactly as Bedrock sent them, and the
//!   reservation settles from the usage frame (`metadata`, or the last `chunk` with
//!   `amazon-bedrock-invocationMetrics`) as it passes;
//! - a `throttlingException`, `serviceUnavailableException` or `internalServerException` in
//!   the first frame is retried through the gate, so the SDK sees the successful stream of
//!   a later attempt. If every attempt fails that way, the SDK gets the error as Bedrock
//!   answers it without a stream: the 429, 503 or 500 with `x-amzn-errortype` and a JSON
//!   body `{"message": ...}`, which it reads as its `ThrottlingException`,
//!   `ServiceUnavailableException` or `InternalServerException`;
//! - an exception later in the stream reaches the `EventReceiver` unchanged, after the
//!   events before it (the SDK does not retry it); a throttle there also slows the gate
//!   down.
//!
//! # The SDK's own retry
//! Turn it off with `RetryConfig::disabled()`: this crate already retries throttles and
//! transient failures, with the server's hints, in token-aware backoff. Left on, each SDK
//! attempt runs through the whole throttle, so a call makes at most
//! **SDK max attempts × [`max_attempts`](crate::ThrottleConfigBuilder::max_attempts)** HTTP
//! requests (3 × 8 = 24 with both defaults), and the SDK's backoff comes on top of this
//! crate's. It still ends: the SDK retries only the final response or connection error
//! this crate hands back.
//!
//! # Errors
//! By default a [`ThrottleError`](crate::ThrottleError) reaches the caller as the SDK's
//! dispatch failure (`SdkError::DispatchFailure`) whose [`ConnectorError`] has the
//! `ThrottleError` as its source. The kind is chosen so the SDK's retry never repeats what
//! this crate decided. With
//! [`refusals_as_service_errors(true)`](ThrottledHttpClient::refusals_as_service_errors)
//! the crate's refusals come back instead as the responses Bedrock would send
//! ([`ThrottleError::to_response`](crate::ThrottleError::to_response)), which the SDK
//! reads as the operation's own modelled errors, so code and dashboards written for
//! Bedrock's `ThrottlingException` see them. Either way [`throttle_error`] gets the
//! `ThrottleError` back out of the `SdkError`.
//!
//! | error | default: `ConnectorError` kind | SDK retries | as service errors |
//! |---|---|---|---|
//! | `BodyTooLarge`, `NeverFits`, `Body` (the request is at fault) | `user` | no | `ValidationException` (400) |
//! | `BodyTimeout` | `user` | no | unmodelled `RequestTimeoutException` (408) |
//! | `MaxWaitExceeded` (the quota stayed full) | `other(_, None)` | no: waiting again would only queue behind the same demand | `ThrottlingException` (429) |
//! | `Overloaded` (the key's queue was full) | `other(_, None)` | no | `ThrottlingException` (429) |
//! | `SendDeadlinePassed` (the signature's window ended while waiting) | `other(_, None)` | no | `ThrottlingException` (429) |
//! | `DailyQuotaExhausted` (a daily token quota has no room) | `other(_, None)` | no | `ThrottlingException` (429) "Too many tokens per day…", no `Retry-After`; the SDK's standard retry treats it as it treats Bedrock's own |
//! | `LedgerUnavailable` (the shared ledger is down, `FailClosed`) | `other(_, None)` | no | `ServiceUnavailableException` (503) |
//! | `Upstream` with an inner connector error (the last attempt's) | the inner `ConnectorError` itself | as the SDK would have (I/O errors and timeouts are retried) | the same |
//! | `Upstream` with another error | `other(_, None)` | no | the same |
//!
//! As service errors the responses carry `Retry-After` and `x-amz-retry-after` where
//! waiting helps; the SDK's standard retry, if left on, retries the 429s after that hint
//! (and the 408 as transient), each attempt queueing in the gate again.
//!
//! ```
//! use aws_sdk_bedrockruntime::{error::SdkError, operation::converse::ConverseError};
//! use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
//! use bedrock_throttle::{aws::throttle_error, ThrottleError};
//!
//! fn report(err: &SdkError<ConverseError, HttpResponse>) -> String {
//!     match throttle_error(err) {
//!         Some(ThrottleError::Overloaded { key, .. }) => format!("shed at {key}"),
//!         Some(refusal) => format!("refused: {refusal}"),
//!         None => match err.as_service_error() {
//!             Some(e) if e.is_throttling_exception() => "throttled by Bedrock".into(),
//!             _ => format!("failed: {err}"),
//!         },
//!     }
//! }
//! # let _ = report;
//! ```
//!
//! # Timeouts and signatures
//! A request may wait in the gate up to `max_wait` per attempt. The SDK's operation and
//! attempt timeouts count that wait: leave them unset or longer than the throttle may wait.
//! The SDK's read and connect timeouts apply to each HTTP request as usual.
//!
//! AWS accepts a SigV4-signed request for about five minutes after its time stamp, and a
//! retry resends the request signed for the first attempt. Every SigV4-signed request
//! therefore gets a [`SendDeadline`] of [`SendDeadline::SIGV4_WINDOW`] (4.5 minutes) when it
//! reaches this client: no retry starts after it (the SDK gets the last response, and signs
//! again if its own retry is on), and a request still waiting in the gate then fails with
//! [`ThrottleError::SendDeadlinePassed`](crate::ThrottleError::SendDeadlinePassed) (`ConnectorError` kind `other`, not retried by the
//! SDK). No request leaves with an expired signature, whatever `max_wait` and the retry
//! settings are. A bearer-token API key (`Config::builder().bearer_token(..)`,
//! `AWS_BEARER_TOKEN_BEDROCK`) has no such window and gets no deadline.
//!
//! # Compared with the SDK's adaptive retry
//! The SDK's adaptive mode starts limiting only after the first throttle, counts requests
//! (not tokens), is per client and per process, and learns the rate from 429s. This
//! throttle knows the quotas up front, charges each request the tokens Bedrock reserves
//! (input + `max_tokens` × burndown), gives back what the response reports unused, queues
//! waiters in FIFO order per model, and shares one budget between every SDK client and
//! HTTP stack built from one configuration.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use aws_smithy_runtime_api::client::{
    connector_metadata::ConnectorMetadata,
    http::{
        HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
        SharedHttpConnector,
    },
    orchestrator::{HttpRequest, HttpResponse},
    result::ConnectorError,
    runtime_components::{RuntimeComponents, RuntimeComponentsBuilder},
};
use aws_smithy_types::{body::SdkBody, config_bag::ConfigBag};
use http::{
    header::{CONTENT_LENGTH, CONTENT_TYPE},
    HeaderValue,
};
use tower_layer::Layer;
use tower_service::Service;

use self::errors::into_sdk_outcome;
use crate::{
    gate::{FirstFrameException, Gate, GateLayer, SettlingBody},
    BedrockThrottle, BedrockThrottleLayer, BoxError, SendDeadline, ThrottleConfig,
};

mod errors;

pub use self::errors::throttle_error;

/// An AWS SDK HTTP client that throttles every request of the SDK clients using it. See
/// the [module docs](self).
///
/// It wraps any inner SDK HTTP client (the one the SDK would use without it) and spends
/// from the budget of the [`ThrottleConfig`] it was made with.
#[derive(Clone)]
pub struct ThrottledHttpClient {
    inner: SharedHttpClient,
    cfg: ThrottleConfig,
    refusals_as_service_errors: bool,
}

impl ThrottledHttpClient {
    /// Sends the requests of `inner` through the throttle of `cfg`. Pass a clone of one
    /// configuration to every client that shares its quotas.
    pub fn new(inner: impl HttpClient + 'static, cfg: ThrottleConfig) -> Self {
        Self {
            inner: SharedHttpClient::new(inner),
            cfg,
            refusals_as_service_errors: false,
        }
    }

    /// With `true`, the crate's refusals reach the SDK as the error responses Bedrock
    /// would send ([`ThrottleError::to_response`](crate::ThrottleError::to_response)), so
    /// the SDK reports them as its own service errors: a shed or timed-out call is the
    /// operation's `ThrottlingException` (`is_throttling_exception()`), one that never fits
    /// its `ValidationException`, a lost ledger its `ServiceUnavailableException`. Off by
    /// default: they are dispatch failures. Either way [`throttle_error`] finds the
    /// [`ThrottleError`](crate::ThrottleError). See "Errors" in the [module docs](self).
    ///
    /// Keep the SDK's own retry off (`RetryConfig::disabled()`): with it on, the SDK
    /// retries these throttles too, after the `x-amz-retry-after` they carry, and each of
    /// its attempts queues in the gate again.
    pub fn refusals_as_service_errors(mut self, yes: bool) -> Self {
        self.refusals_as_service_errors = yes;
        self
    }

    /// The configuration whose budget this client spends.
    pub fn config(&self) -> &ThrottleConfig {
        &self.cfg
    }

    /// The wrapped client.
    pub fn get_ref(&self) -> &SharedHttpClient {
        &self.inner
    }
}

impl fmt::Debug for ThrottledHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottledHttpClient")
            .field("inner", &self.inner)
            .field(
                "refusals_as_service_errors",
                &self.refusals_as_service_errors,
            )
            .finish_non_exhaustive()
    }
}

impl HttpClient for ThrottledHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let sdk = SdkConnector(self.inner.http_connector(settings, components));
        SharedHttpConnector::new(ThrottledConnector {
            full: BedrockThrottleLayer::new(self.cfg.clone()).layer(sdk.clone()),
            gate_only: GateLayer::new(self.cfg.clone()).layer(sdk),
            refusals_as_service_errors: self.refusals_as_service_errors,
        })
    }

    fn validate_base_client_config(
        &self,
        runtime_components: &RuntimeComponentsBuilder,
        cfg: &ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        self.inner
            .validate_base_client_config(runtime_components, cfg)
    }

    fn validate_final_config(
        &self,
        runtime_components: &RuntimeComponents,
        cfg: &ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        self.inner.validate_final_config(runtime_components, cfg)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.inner.connector_metadata()
    }
}

/// The connector handed to the SDK: the throttle stack over the inner client's connector.
#[derive(Debug)]
struct ThrottledConnector {
    full: BedrockThrottle<SdkConnector>,
    gate_only: Gate<SdkConnector>,
    refusals_as_service_errors: bool,
}

impl HttpConnector for ThrottledConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        // A streaming body can be neither estimated nor resent: gate it only.
        let in_memory = request.body().bytes().is_some();
        let mut request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        // The SDK signed it just now; it must reach AWS within the signature's window.
        if is_sigv4_signed(request.headers())
            && request.extensions().get::<SendDeadline>().is_none()
        {
            let deadline = SendDeadline::after(SendDeadline::SIGV4_WINDOW);
            request.extensions_mut().insert(deadline);
        }
        let as_responses = self.refusals_as_service_errors;
        if in_memory {
            HttpConnectorFuture::new(send(self.full.clone(), request, as_responses))
        } else {
            HttpConnectorFuture::new(send(self.gate_only.clone(), request, as_responses))
        }
    }
}

/// Whether the request carries a SigV4 (or SigV4a) signature, which AWS accepts only for a
/// few minutes; a bearer-token API key has no such window.
fn is_sigv4_signed(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().starts_with(b"AWS4-"))
}

/// Sends `request` through the stack; with `as_responses`, a refusal comes back as
/// Bedrock's error response.
async fn send<S>(
    mut service: S,
    request: http::Request<SdkBody>,
    as_responses: bool,
) -> Result<HttpResponse, ConnectorError>
where
    S: Service<
        http::Request<SdkBody>,
        Response = http::Response<SettlingBody<SdkBody>>,
        Error = BoxError,
    >,
{
    // Every layer of the stack delegates readiness to the SDK connector, which is always
    // ready; poll anyway, as the `Service` contract asks.
    if let Err(e) = std::future::poll_fn(|cx| service.poll_ready(cx)).await {
        return into_sdk_outcome(e, as_responses);
    }
    let response = match service.call(request).await {
        Ok(response) => response,
        Err(e) => return into_sdk_outcome(e, as_responses),
    };
    let response = match response.extensions().get::<FirstFrameException>() {
        Some(e) => {
            let json = serde_json::json!({ "message": e.message }).to_string();
            let (mut parts, _frame) = response.into_parts();
            parts
                .headers
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            parts.headers.insert(CONTENT_LENGTH, json.len().into());
            http::Response::from_parts(parts, SdkBody::from(json))
        }
        None => response.map(|body| {
            if body.is_settling() {
                SdkBody::from_body_1_x(body)
            } else {
                body.into_inner() // nothing to read from it: hand the SDK its own body back
            }
        }),
    };
    HttpResponse::try_from(response).map_err(|e| ConnectorError::other(e.into(), None))
}

/// The innermost service: the SDK connector of the wrapped client, in http 1.x types.
#[derive(Clone, Debug)]
struct SdkConnector(SharedHttpConnector);

type SdkFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<SdkBody>, ConnectorError>> + Send>>;

impl Service<http::Request<SdkBody>> for SdkConnector {
    type Response = http::Response<SdkBody>;
    type Error = ConnectorError;
    type Future = SdkFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<SdkBody>) -> Self::Future {
        let connector = self.0.clone();
        Box::pin(async move {
            let request =
                HttpRequest::try_from(request).map_err(|e| ConnectorError::user(e.into()))?;
            let response = connector.call(request).await?;
            response
                .try_into_http1x()
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use super::*;
    use crate::{Quota, ThrottleError};

    /// An SDK connector that answers `status` and records, per call, whether the request
    /// body was in memory.
    #[derive(Debug, Clone)]
    struct Recording {
        status: u16,
        calls: Arc<Mutex<Vec<bool>>>,
    }

    impl HttpConnector for Recording {
        fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
            self.calls
                .lock()
                .unwrap()
                .push(request.body().bytes().is_some());
            let response = http::Response::builder()
                .status(self.status)
                .header("x-amzn-bedrock-input-token-count", "10")
                .header("x-amzn-bedrock-output-token-count", "5")
                .body(SdkBody::from("{}"))
                .unwrap();
            HttpConnectorFuture::ready(Ok(HttpResponse::try_from(response).unwrap()))
        }
    }

    fn connector(status: u16, tpm: u64) -> (ThrottledConnector, Arc<Mutex<Vec<bool>>>) {
        let cfg = ThrottleConfig::builder()
            .quota(Quota::tokens_per_minute(tpm))
            .max_attempts(3)
            .base_delay(Duration::from_millis(1))
            .max_delay(Duration::from_millis(2))
            .build()
            .unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let sdk = SdkConnector(SharedHttpConnector::new(Recording {
            status,
            calls: calls.clone(),
        }));
        let throttled = ThrottledConnector {
            full: BedrockThrottleLayer::new(cfg.clone()).layer(sdk.clone()),
            gate_only: GateLayer::new(cfg).layer(sdk),
            refusals_as_service_errors: false,
        };
        (throttled, calls)
    }

    fn request(body: SdkBody) -> HttpRequest {
        let request = http::Request::post(
            "http://localhost/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke",
        )
        .body(body)
        .unwrap();
        HttpRequest::try_from(request).unwrap()
    }

    #[tokio::test]
    async fn in_memory_requests_are_retried_by_the_throttle() {
        let (throttled, calls) = connector(503, 100_000);
        let body = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[]}"#;
        let response = throttled.call(request(SdkBody::from(body))).await.unwrap();
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(*calls.lock().unwrap(), vec![true; 3], "three attempts");
    }

    #[tokio::test]
    async fn streaming_requests_are_gated_but_neither_read_nor_resent() {
        let (throttled, calls) = connector(503, 100_000);
        let stream = SdkBody::from_body_1_x(Full::new(Bytes::from_static(b"frames")));
        let response = throttled.call(request(stream)).await.unwrap();
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(
            *calls.lock().unwrap(),
            vec![false],
            "one attempt, body unread"
        );

        let (throttled, _) = connector(200, 100_000);
        let body = SdkBody::from_body_1_x(Full::new(Bytes::from_static(b"frames")));
        let response = throttled.call(request(body)).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"{}");

        // Gated: without a body to read it reserves the model's default output limit,
        // which a 1,000-token quota can never hold.
        let (throttled, calls) = connector(200, 1_000);
        let body = SdkBody::from_body_1_x(Full::new(Bytes::from_static(b"frames")));
        let err = throttled.call(request(body)).await.unwrap_err();
        assert!(err.is_user(), "{err:?}");
        let source = std::error::Error::source(&err).unwrap();
        assert!(
            matches!(
                source.downcast_ref::<ThrottleError>(),
                Some(ThrottleError::NeverFits { .. })
            ),
            "{source}"
        );
        assert!(calls.lock().unwrap().is_empty(), "not sent");
    }

    /// An SDK connector whose every answer is a 200 event stream that opens with an
    /// exception frame.
    #[derive(Debug)]
    struct FirstFrame {
        kind: &'static str,
        calls: Arc<Mutex<u32>>,
    }

    impl HttpConnector for FirstFrame {
        fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
            use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
            *self.calls.lock().unwrap() += 1;
            let message = Message::new(r#"{"message":"Bedrock is unavailable."}"#)
                .add_header(Header::new(
                    ":exception-type",
                    HeaderValue::String(self.kind.into()),
                ))
                .add_header(Header::new(
                    ":message-type",
                    HeaderValue::String("exception".into()),
                ));
            let mut frame = Vec::new();
            aws_smithy_eventstream::frame::write_message_to(&message, &mut frame).unwrap();
            let response = http::Response::builder()
                .header(CONTENT_TYPE, "application/vnd.amazon.eventstream")
                .body(SdkBody::from(frame))
                .unwrap();
            HttpConnectorFuture::ready(Ok(HttpResponse::try_from(response).unwrap()))
        }
    }

    #[tokio::test]
    async fn a_first_frame_exception_past_the_last_attempt_reaches_the_sdk_as_json() {
        let cfg = ThrottleConfig::builder()
            .quota(Quota::tokens_per_minute(100_000))
            .max_attempts(2)
            .base_delay(Duration::from_millis(1))
            .max_delay(Duration::from_millis(2))
            .build()
            .unwrap();
        let calls = Arc::new(Mutex::new(0));
        let sdk = SdkConnector(SharedHttpConnector::new(FirstFrame {
            kind: "serviceUnavailableException",
            calls: calls.clone(),
        }));
        let throttled = ThrottledConnector {
            full: BedrockThrottleLayer::new(cfg.clone()).layer(sdk.clone()),
            gate_only: GateLayer::new(cfg).layer(sdk),
            refusals_as_service_errors: false,
        };
        let body = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[]}"#;
        let response = throttled.call(request(SdkBody::from(body))).await.unwrap();
        assert_eq!(*calls.lock().unwrap(), 2, "retried once");
        assert_eq!(response.status().as_u16(), 503);
        let headers = response.headers();
        assert_eq!(
            headers.get("x-amzn-errortype"),
            Some("ServiceUnavailableException")
        );
        assert_eq!(headers.get("content-type"), Some("application/json"));
        assert_eq!(
            response.body().bytes(),
            Some(&br#"{"message":"Bedrock is unavailable."}"#[..])
        );
    }
}
