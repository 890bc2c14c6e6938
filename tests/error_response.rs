//! `ThrottleError::to_response` as the real `aws-sdk-bedrockruntime` client reads it: each
//! refusal becomes the SDK's own modelled error (or, for a body timeout, an unmodelled one
//! that its retry logic treats as transient), with the message intact. Virtual time.

#![cfg(feature = "aws-sdk")]

mod sdk;

use std::{
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
    runtime_components::RuntimeComponents,
};
use aws_smithy_types::body::SdkBody;
use bedrock_throttle::{LedgerError, QuotaKey, ThrottleError};
use sdk::{anthropic_body, sdk_client, MODEL};
use tokio::time::Instant;

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
            queued: 8,
            retry_after: Duration::from_secs(3),
        },
        ThrottleError::MaxWaitExceeded {
            key: key(),
            waited: Duration::from_secs(90),
            retry_after: Duration::from_secs(20),
        },
        ThrottleError::SendDeadlinePassed {
            key: key(),
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
