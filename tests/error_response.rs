//! Bedrock-shaped error responses.
//!
//! `ThrottleError::to_response` as the real `aws-sdk-bedrockruntime` client reads it: each
//! refusal becomes the SDK's own modelled error (or, for a body timeout, an unmodelled one
//! that its retry logic treats as transient), with the message intact. Virtual time.
//!
//! `ThrottledHttpClient::refusals_as_service_errors`: the crate's refusals reach the real
//! SDK client as its own service errors, and `aws::throttle_error` finds them either way.
//!
//! `ErrorResponseLayer` over the whole stack: a service a server can take (`Error =
//! Infallible`), through tower's `ServiceBuilder` in virtual time and behind a real hyper
//! server over loopback, called by the real SDK client.

#![cfg(feature = "aws-sdk")]

mod sdk;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_sdk_bedrockruntime::{
    config::retry::RetryConfig, error::ProvideErrorMetadata,
    operation::invoke_model::InvokeModelError,
};
use aws_smithy_runtime_api::client::{
    http::{
        HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
    },
    orchestrator::{HttpRequest, HttpResponse},
    result::SdkError,
    runtime_components::RuntimeComponents,
};
use aws_smithy_types::body::SdkBody;
use bedrock_throttle::{
    aws::{throttle_error, ThrottledHttpClient},
    error_response::ErrorResponseLayer,
    BedrockThrottleLayer, LedgerError, Quota, QuotaKey, RefusedBy, Tenant, ThrottleConfig,
    ThrottleError,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn as hyper_service_fn};
use hyper_util::rt::TokioIo;
use sdk::{anthropic_body, sdk_client, MODEL};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

/// An upstream that answers every request with `error.to_response()` and records when.
#[derive(Clone, Debug)]
struct Refusing {
    error: Arc<ThrottleError>,
    attempts: Arc<Mutex<Vec<Instant>>>,
}

impl Refusing {
    fn new(error: ThrottleError) -> Self {
        Self {
            error: Arc::new(error),
            attempts: Arc::default(),
        }
    }

    fn attempts(&self) -> Vec<Instant> {
        self.attempts.lock().unwrap().clone()
    }
}

impl HttpConnector for Refusing {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        self.attempts.lock().unwrap().push(Instant::now());
        let response: http::Response<SdkBody> = self.error.to_response();
        HttpConnectorFuture::ready(Ok(HttpResponse::try_from(response).unwrap()))
    }
}

impl HttpClient for Refusing {
    fn http_connector(
        &self,
        _: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

fn key() -> QuotaKey {
    QuotaKey::new(Some(MODEL), Some("us-east-1"))
}

/// The SDK's error for one InvokeModel answered with `error`, SDK retries off.
async fn sdk_error(error: ThrottleError) -> InvokeModelError {
    let upstream = Refusing::new(error);
    let client = sdk_client("http://bedrock.test", upstream, RetryConfig::disabled());
    client
        .invoke_model()
        .model_id(MODEL)
        .body(anthropic_body("hi", 10))
        .send()
        .await
        .unwrap_err()
        .into_service_error()
}

#[tokio::test(start_paused = true)]
async fn throttles_reach_the_sdk_as_its_throttling_exception() {
    let refusals = [
        ThrottleError::Overloaded {
            key: key(),
            tenant: None,
            refused_by: RefusedBy::ModelQueue,
            queued: 8,
            retry_after: Duration::from_secs(3),
        },
        ThrottleError::MaxWaitExceeded {
            key: key(),
            tenant: None,
            refused_by: RefusedBy::ModelQuota,
            waited: Duration::from_secs(90),
            retry_after: Duration::from_secs(20),
        },
        ThrottleError::SendDeadlinePassed {
            key: key(),
            tenant: Some(Tenant::new("gold")),
            waited: Duration::from_secs(200),
            retry_after: Duration::from_secs(1),
        },
    ];
    for refusal in refusals {
        let message = refusal.to_string();
        let e = sdk_error(refusal).await;
        assert!(e.is_throttling_exception(), "{e:?}");
        assert_eq!(e.message(), Some(message.as_str()));
    }
}

#[tokio::test(start_paused = true)]
async fn requests_that_can_never_pass_reach_the_sdk_as_its_validation_exception() {
    let refusals = [
        ThrottleError::NeverFits {
            key: key(),
            tokens: 300_000,
            quota_tokens: 200_000,
        },
        ThrottleError::BodyTooLarge { limit: 1_000 },
        ThrottleError::Body("reset by peer".into()),
    ];
    for refusal in refusals {
        let e = sdk_error(refusal).await;
        assert!(e.is_validation_exception(), "{e:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_lost_ledger_and_a_failed_upstream_are_the_sdks_service_unavailable() {
    let lost = ThrottleError::LedgerUnavailable {
        key: key(),
        source: Box::new(LedgerError::new("connection refused by 10.0.0.7:6379")),
    };
    let e = sdk_error(lost).await;
    assert!(e.is_service_unavailable_exception(), "{e:?}");
    let message = e.message().unwrap();
    assert!(message.contains(MODEL), "{message}");
    assert!(
        !message.contains("10.0.0.7"),
        "no internal detail: {message}"
    );

    let failed = ThrottleError::Upstream {
        attempts: 3,
        source: "tcp connect to 10.0.0.8 refused".into(),
    };
    let e = sdk_error(failed).await;
    assert!(e.is_service_unavailable_exception(), "{e:?}");
    assert_eq!(e.message(), Some("upstream failed after 3 attempt(s)"));
}

#[tokio::test(start_paused = true)]
async fn a_body_timeout_is_unmodelled_but_named() {
    let e = sdk_error(ThrottleError::BodyTimeout {
        timeout: Duration::from_secs(30),
    })
    .await;
    assert!(e.meta().code() == Some("RequestTimeoutException"), "{e:?}");
}

/// With the SDK's own standard retries on, it retries a throttle and a body timeout (as
/// transient) but not a validation error.
#[tokio::test(start_paused = true)]
async fn the_sdk_retries_what_waiting_can_fix() {
    let cases = [
        (
            ThrottleError::Overloaded {
                key: key(),
                tenant: None,
                refused_by: RefusedBy::ModelQueue,
                queued: 8,
                retry_after: Duration::from_secs(3),
            },
            3,
        ),
        (
            ThrottleError::BodyTimeout {
                timeout: Duration::from_secs(30),
            },
            3,
        ),
        (
            ThrottleError::NeverFits {
                key: key(),
                tokens: 300_000,
                quota_tokens: 200_000,
            },
            1,
        ),
    ];
    for (refusal, attempts) in cases {
        let name = refusal.error_type();
        let upstream = Refusing::new(refusal);
        let client = sdk_client(
            "http://bedrock.test",
            upstream.clone(),
            RetryConfig::standard().with_max_attempts(3),
        );
        let result = client
            .invoke_model()
            .model_id(MODEL)
            .body(anthropic_body("hi", 10))
            .send()
            .await;
        assert!(result.is_err());
        assert_eq!(upstream.attempts().len(), attempts, "{name}");
    }
}

/// What axum's `Router::route_service` asks of a service (with axum's `Body` for `B`).
fn assert_servable<S, B>(_: &S)
where
    S: Service<Request<B>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
}

/// An upstream that answers 200 with `{}` and no usage (so the whole reservation stands),
/// or fails when the prompt says so.
async fn upstream(request: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let body = request.into_body().collect().await.unwrap().to_bytes();
    if body.windows(4).any(|w| w == b"FAIL") {
        return Err(std::io::Error::other("connection reset by 10.0.0.9"));
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"{}"))))
}

/// A 1 000-token quota for [`MODEL`] that sheds as soon as a request would wait.
fn shedding() -> ThrottleConfig {
    sdk::config(Quota::tokens_per_minute(1_000))
        .max_queued(0)
        .max_attempts(2)
        .build()
        .unwrap()
}

fn invoke(prompt: &str, max_tokens: u64) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    });
    Request::post("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn json(
    response: Response<impl http_body::Body<Data = Bytes, Error: std::fmt::Debug>>,
) -> serde_json::Value {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_layer_answers_every_refusal_and_passes_every_answer() {
    let gateway = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(BedrockThrottleLayer::new(shedding()))
        .service(service_fn(upstream));
    assert_servable::<_, Full<Bytes>>(&gateway);

    // Fits: upstream's answer, untouched.
    let ok = gateway.clone().oneshot(invoke("hi", 900)).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(json(ok).await, serde_json::json!({}));

    // Would wait behind the first: shed, as Bedrock's 429.
    let shed = gateway.clone().oneshot(invoke("hi", 900)).await.unwrap();
    assert_eq!(shed.status(), 429);
    assert_eq!(shed.headers()["x-amzn-errortype"], "ThrottlingException");
    let after: u64 = shed.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Until the ~910 tokens it needs, less the ~90 left, flow back at 1 000 a minute: ~49 s.
    assert!((45..=60).contains(&after), "{after}");
    let message = json(shed).await["message"].as_str().unwrap().to_owned();
    assert!(message.contains("queue of"), "{message}");

    // Can never fit the quota: 400.
    let never = gateway.clone().oneshot(invoke("hi", 5_000)).await.unwrap();
    assert_eq!(never.status(), 400);
    assert_eq!(never.headers()["x-amzn-errortype"], "ValidationException");
    assert!(never.headers().get("retry-after").is_none());

    // Upstream fails on every attempt: 502, no detail of the failure.
    tokio::time::sleep(Duration::from_secs(120)).await; // the quota refills
    let failed = gateway.clone().oneshot(invoke("FAIL", 10)).await.unwrap();
    assert_eq!(failed.status(), 502);
    assert_eq!(
        failed.headers()["x-amzn-errortype"],
        "ServiceUnavailableException"
    );
    let message = json(failed).await["message"].as_str().unwrap().to_owned();
    assert_eq!(message, "upstream failed after 2 attempt(s)");
}

/// An error that is not the crate's, from `call` and from `poll_ready`, is a 502 that
/// names none of it; a `ThrottleError` wrapped in another error is still found.
#[tokio::test]
async fn other_errors_are_bad_gateways() {
    let failing = service_fn(|_req: Request<Full<Bytes>>| async {
        Err::<Response<Full<Bytes>>, _>(std::io::Error::other("secret.internal:443 refused"))
    });
    let response = ErrorResponseLayer::new()
        .layer(failing)
        .oneshot(invoke("hi", 1))
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let message = json(response).await["message"].as_str().unwrap().to_owned();
    assert!(!message.contains("secret"), "{message}");

    #[derive(Debug)]
    struct Wrapped(ThrottleError);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "wrapped")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let wrapping = service_fn(|_req: Request<Full<Bytes>>| async {
        Err::<Response<Full<Bytes>>, _>(Wrapped(ThrottleError::BodyTooLarge { limit: 3 }))
    });
    let response = ErrorResponseLayer::new()
        .layer(wrapping)
        .oneshot(invoke("hi", 1))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let mut not_ready = ErrorResponseLayer::new().layer(NeverReady);
    let response = not_ready
        .ready()
        .await
        .unwrap()
        .call(invoke("hi", 1))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        503,
        "the poll_ready error's own response"
    );
    assert_eq!(
        response.headers()["x-amzn-errortype"],
        "ServiceUnavailableException"
    );
}

/// A service whose `poll_ready` fails with a lost ledger.
struct NeverReady;

impl Service<Request<Full<Bytes>>> for NeverReady {
    type Response = Response<Full<Bytes>>;
    type Error = ThrottleError;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Err(ThrottleError::LedgerUnavailable {
            key: key(),
            source: "down".into(),
        }))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        unreachable!("never made ready")
    }
}

/// The gateway behind a real hyper server over loopback, called by the real SDK client: a
/// shed request reaches it as its `ThrottlingException`, with `Retry-After` on the wire.
#[tokio::test]
async fn a_hyper_server_answers_the_sdk_with_its_throttling_exception() {
    let gateway = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(BedrockThrottleLayer::new(shedding()))
        .service(service_fn(upstream));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let gateway = gateway.clone();
            tokio::spawn(async move {
                let svc = hyper_service_fn(move |request: Request<Incoming>| {
                    let gateway = gateway.clone();
                    async move {
                        // The stack takes bodies made from bytes (axum's `Body` is one).
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let request = Request::from_parts(parts, Full::new(body));
                        gateway.oneshot(request).await
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let inner = aws_smithy_http_client::Builder::new().build_http();
    let client = sdk_client(&url, inner, RetryConfig::disabled());
    let send = || {
        client
            .invoke_model()
            .model_id(MODEL)
            .body(anthropic_body("hi", 900))
            .send()
    };
    send().await.unwrap();
    let err = send().await.unwrap_err();
    let retry_after = err
        .raw_response()
        .unwrap()
        .headers()
        .get("retry-after")
        .map(str::to_owned);
    let e = err.into_service_error();
    assert!(e.is_throttling_exception(), "{e:?}");
    assert!(e.message().unwrap().contains("queue of"), "{e:?}");
    let after: u64 = retry_after.unwrap().parse().unwrap();
    assert!((45..=60).contains(&after), "{after}");
    server.abort();
}

/// An upstream that answers every request 200 with `{}` and no usage.
#[derive(Clone, Debug)]
struct Fine;

impl HttpConnector for Fine {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        let response = http::Response::new(SdkBody::from("{}"));
        HttpConnectorFuture::ready(Ok(HttpResponse::try_from(response).unwrap()))
    }
}

impl HttpClient for Fine {
    fn http_connector(
        &self,
        _: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn sdk_refusals_are_service_errors_when_asked_and_found_either_way() {
    for as_service_errors in [true, false] {
        let http = ThrottledHttpClient::new(Fine, shedding())
            .refusals_as_service_errors(as_service_errors);
        let client = sdk_client("http://bedrock.test", http, RetryConfig::disabled());
        let send = |max_tokens| {
            client
                .invoke_model()
                .model_id(MODEL)
                .body(anthropic_body("hi", max_tokens))
                .send()
        };
        send(900).await.unwrap();

        let shed = send(900).await.unwrap_err();
        assert!(
            matches!(
                throttle_error(&shed),
                Some(ThrottleError::Overloaded { .. })
            ),
            "{shed:?}"
        );
        let never = send(5_000).await.unwrap_err();
        assert!(
            matches!(
                throttle_error(&never),
                Some(ThrottleError::NeverFits { .. })
            ),
            "{never:?}"
        );
        if as_service_errors {
            let after = shed
                .raw_response()
                .unwrap()
                .headers()
                .get("x-amz-retry-after");
            let after: u64 = after.unwrap().parse().unwrap();
            assert!((45_000..=60_000).contains(&after), "{after} ms");
            assert!(shed.into_service_error().is_throttling_exception());
            assert!(never.into_service_error().is_validation_exception());
        } else {
            assert!(matches!(shed, SdkError::DispatchFailure(_)), "{shed:?}");
            assert!(matches!(never, SdkError::DispatchFailure(_)), "{never:?}");
        }
    }
}

/// Bedrock's own throttle is not the crate's: `throttle_error` says `None`.
#[tokio::test(start_paused = true)]
async fn an_upstream_throttle_is_not_a_refusal() {
    let bedrock = Refusing::new(ThrottleError::Overloaded {
        key: key(),
        tenant: None,
        refused_by: RefusedBy::ModelQueue,
        queued: 1,
        retry_after: Duration::from_millis(10),
    });
    let cfg = sdk::config(Quota::tokens_per_minute(100_000))
        .max_attempts(2)
        .build()
        .unwrap();
    let http = ThrottledHttpClient::new(bedrock.clone(), cfg).refusals_as_service_errors(true);
    let client = sdk_client("http://bedrock.test", http, RetryConfig::disabled());
    let err = client
        .invoke_model()
        .model_id(MODEL)
        .body(anthropic_body("hi", 10))
        .send()
        .await
        .unwrap_err();
    assert_eq!(bedrock.attempts().len(), 2, "the throttle retried it");
    assert!(throttle_error(&err).is_none(), "{err:?}");
    assert!(err.into_service_error().is_throttling_exception());
}
