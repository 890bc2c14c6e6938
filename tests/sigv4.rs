//! `SigV4Layer` below the throttle: the signature matches one computed by hand from the AWS
//! documentation's algorithm, every attempt (retries included) is signed afresh with its own
//! `X-Amz-Date`, bearer-token requests pass untouched and signed requests carry their
//! signature's send deadline. Virtual time.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use aws_credential_types::Credentials;
use aws_smithy_async::time::{StaticTimeSource, TimeSource};
use bedrock_throttle::{
    sigv4::{SigV4Layer, SignError},
    BedrockThrottleLayer, BoxError, Quota, SendDeadline, ThrottleConfig,
};
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tower::{service_fn, BoxError as TowerBoxError, Layer, Service, ServiceExt};

const MODEL: &str = "amazon.nova-lite-v1:0";
const URI: &str =
    "https://bedrock-runtime.us-west-2.amazonaws.com/model/amazon.nova-lite-v1%3A0/converse";
const BODY: &str = r#"{"messages":[{"role":"user","content":[{"text":"Hello"}]}],"inferenceConfig":{"maxTokens":64}}"#;
const ACCESS_KEY: &str = "AKIDEXAMPLE";
const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

/// What the upstream saw of one attempt.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    headers: HeaderMap,
    deadline: Option<SendDeadline>,
    body: Bytes,
}

type Recorded = Arc<Mutex<Vec<Seen>>>;

/// An upstream that records each attempt and answers with `statuses` in turn (then 200).
fn recording_upstream(
    statuses: Vec<u16>,
) -> (
    impl Service<
            Request<Full<Bytes>>,
            Response = Response<Full<Bytes>>,
            Error = TowerBoxError,
            Future = impl Send,
        > + Clone
        + Send,
    Recorded,
) {
    let seen = Recorded::default();
    let recorder = seen.clone();
    let statuses = Arc::new(Mutex::new(statuses.into_iter()));
    let service = service_fn(move |request: Request<Full<Bytes>>| {
        let recorder = recorder.clone();
        let status = statuses.lock().unwrap().next().unwrap_or(200);
        async move {
            let deadline = request.extensions().get::<SendDeadline>().copied();
            let (parts, body) = request.into_parts();
            let body = http_body_util::BodyExt::collect(body).await?.to_bytes();
            recorder.lock().unwrap().push(Seen {
                at: Instant::now(),
                headers: parts.headers,
                deadline,
                body,
            });
            let mut response = Response::builder().status(status);
            if status == 429 {
                response = response
                    .header(
                        "x-amzn-errortype",
                        "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
                    )
                    .header("retry-after", "3");
            } else {
                response = response
                    .header("x-amzn-bedrock-input-token-count", "12")
                    .header("x-amzn-bedrock-output-token-count", "20");
            }
            Ok::<_, TowerBoxError>(response.body(Full::new(Bytes::from_static(b"{}"))).unwrap())
        }
    });
    (service, seen)
}

fn config() -> ThrottleConfig {
    ThrottleConfig::builder()
        .model_quota(MODEL, Quota::new(1_000, 10_000_000))
        .max_attempts(4)
        .build()
        .unwrap()
}

fn converse() -> Request<Full<Bytes>> {
    Request::post(URI)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap()
}

fn static_credentials() -> Credentials {
    Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test")
}

/// The signature time stamps follow tokio's clock, so backoff in paused time moves them.
#[derive(Debug)]
struct TokioClock {
    system: SystemTime,
    start: Instant,
}

impl TimeSource for TokioClock {
    fn now(&self) -> SystemTime {
        self.system + self.start.elapsed()
    }
}

/// 2015-08-30T12:36:00Z, the time of the AWS documentation's signing examples.
fn example_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The `Authorization` header for [`converse`] at [`example_time`], computed step by step as
/// in the AWS IAM User Guide, "Create a signed AWS API request": the canonical request (the
/// path's segments URI-encoded again, as every AWS service but S3 expects), the string to
/// sign, the signing key derived from the secret, date, Region and service.
fn expected_authorization() -> String {
    let date = "20150830";
    let amz_date = "20150830T123600Z";
    let canonical_request = [
        "POST",
        "/model/amazon.nova-lite-v1%253A0/converse",
        "",
        "content-type:application/json",
        "host:bedrock-runtime.us-west-2.amazonaws.com",
        &format!("x-amz-date:{amz_date}"),
        "",
        "content-type;host;x-amz-date",
        &hex::encode(Sha256::digest(BODY.as_bytes())),
    ]
    .join("\n");
    let scope = format!("{date}/us-west-2/bedrock/aws4_request");
    let string_to_sign = [
        "AWS4-HMAC-SHA256",
        amz_date,
        &scope,
        &hex::encode(Sha256::digest(canonical_request.as_bytes())),
    ]
    .join("\n");
    let key = hmac(format!("AWS4{SECRET_KEY}").as_bytes(), date);
    let key = hmac(&key, "us-west-2");
    let key = hmac(&key, "bedrock");
    let key = hmac(&key, "aws4_request");
    let signature = hex::encode(hmac(&key, &string_to_sign));
    format!(
        "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders=content-type;host;x-amz-date, Signature={signature}"
    )
}

#[tokio::test(start_paused = true)]
async fn the_signature_is_the_one_the_sigv4_algorithm_gives() {
    let (upstream, seen) = recording_upstream(vec![]);
    let signing =
        SigV4Layer::new(static_credentials()).time_source(StaticTimeSource::new(example_time()));
    let client = BedrockThrottleLayer::new(config()).layer(signing.layer(upstream));

    let response = client.oneshot(converse()).await.unwrap();
    assert_eq!(response.status(), 200);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let headers = &seen[0].headers;
    assert_eq!(headers["x-amz-date"], "20150830T123600Z");
    assert_eq!(headers["authorization"], expected_authorization().as_str());
    assert!(headers.get("x-amz-security-token").is_none());
    assert_eq!(
        &seen[0].body[..],
        BODY.as_bytes(),
        "the body is sent as signed"
    );
}

#[tokio::test(start_paused = true)]
async fn each_retry_is_signed_afresh_with_its_own_date() {
    // Two throttles with `Retry-After: 3`, then a success: three attempts, seconds apart.
    let (upstream, seen) = recording_upstream(vec![429, 429]);
    let clock = TokioClock {
        system: example_time(),
        start: Instant::now(),
    };
    let signing = SigV4Layer::new(static_credentials()).time_source(clock);
    let client = BedrockThrottleLayer::new(config()).layer(signing.layer(upstream));

    let response = client.oneshot(converse()).await.unwrap();
    assert_eq!(response.status(), 200);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "two retries");
    let start = seen[0].at;
    let mut signatures = Vec::new();
    for attempt in seen.iter() {
        // The date of each attempt is the (virtual) time it was sent.
        let elapsed = (attempt.at - start).as_secs();
        let date = attempt.headers["x-amz-date"].to_str().unwrap();
        let seconds_of_day: u64 = date[9..11].parse::<u64>().unwrap() * 3600
            + date[11..13].parse::<u64>().unwrap() * 60
            + date[13..15].parse::<u64>().unwrap();
        assert_eq!(seconds_of_day, 12 * 3600 + 36 * 60 + elapsed, "{date}");
        // And each attempt carries the deadline of its own signature.
        assert_eq!(
            attempt.deadline,
            Some(SendDeadline(attempt.at + SendDeadline::SIGV4_WINDOW))
        );
        signatures.push(attempt.headers["authorization"].clone());
    }
    assert!(seen[1].at - seen[0].at >= Duration::from_secs(3));
    assert!(seen[2].at - seen[1].at >= Duration::from_secs(3));
    signatures.dedup();
    assert_eq!(signatures.len(), 3, "three different signatures");
}

#[tokio::test(start_paused = true)]
async fn a_bearer_token_request_passes_untouched() {
    let (upstream, seen) = recording_upstream(vec![]);
    let client = BedrockThrottleLayer::new(config())
        .layer(SigV4Layer::new(static_credentials()).layer(upstream));

    let mut request = converse();
    request.headers_mut().insert(
        "authorization",
        "Bearer ABSKQmVkcm9ja0FQSUtleQ==".parse().unwrap(),
    );
    let sent = request.headers().clone();
    client.oneshot(request).await.unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].headers, sent);
    assert_eq!(seen[0].deadline, None);
}

#[tokio::test(start_paused = true)]
async fn a_signed_request_is_signed_again() {
    let (upstream, seen) = recording_upstream(vec![]);
    let signing =
        SigV4Layer::new(static_credentials()).time_source(StaticTimeSource::new(example_time()));
    let client = BedrockThrottleLayer::new(config()).layer(signing.layer(upstream));

    // As a client that signed for a gateway would send it: another key, date and token.
    let mut request = converse();
    let headers = request.headers_mut();
    headers.insert(
        "authorization",
        "AWS4-HMAC-SHA256 Credential=AKIDCLIENT/20140101/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=00".parse().unwrap(),
    );
    headers.insert("x-amz-date", "20140101T000000Z".parse().unwrap());
    headers.insert("x-amz-security-token", "client-token".parse().unwrap());
    client.oneshot(request).await.unwrap();

    let seen = seen.lock().unwrap();
    let headers = &seen[0].headers;
    assert_eq!(headers["authorization"], expected_authorization().as_str());
    assert_eq!(headers["x-amz-date"], "20150830T123600Z");
    assert!(headers.get("x-amz-security-token").is_none());
}

#[tokio::test(start_paused = true)]
async fn hop_by_hop_headers_are_sent_but_not_signed() {
    let (upstream, seen) = recording_upstream(vec![]);
    let signing =
        SigV4Layer::new(static_credentials()).time_source(StaticTimeSource::new(example_time()));
    let mut request = converse();
    request
        .headers_mut()
        .insert("connection", "keep-alive".parse().unwrap());
    request
        .headers_mut()
        .insert("te", "trailers".parse().unwrap());
    signing.layer(upstream).oneshot(request).await.unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].headers["connection"], "keep-alive");
    assert_eq!(
        seen[0].headers["authorization"],
        expected_authorization().as_str()
    );
}

#[tokio::test(start_paused = true)]
async fn temporary_credentials_send_their_session_token() {
    let (upstream, seen) = recording_upstream(vec![]);
    let credentials = Credentials::new(ACCESS_KEY, SECRET_KEY, Some("session".into()), None, "t");
    let client = SigV4Layer::new(credentials).layer(upstream);
    client.oneshot(converse()).await.unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].headers["x-amz-security-token"], "session");
    let authorization = seen[0].headers["authorization"].to_str().unwrap();
    assert!(
        authorization.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token"),
        "{authorization}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_region_comes_from_the_host_else_from_the_layer() {
    let local = || {
        Request::post("http://127.0.0.1:8080/model/amazon.nova-lite-v1%3A0/converse")
            .body(Full::new(Bytes::from_static(BODY.as_bytes())))
            .unwrap()
    };

    // No Region anywhere: refused before it is sent.
    let (upstream, seen) = recording_upstream(vec![]);
    let error: BoxError = SigV4Layer::new(static_credentials())
        .layer(upstream)
        .oneshot(local())
        .await
        .unwrap_err();
    assert!(
        matches!(error.downcast_ref::<SignError>(), Some(SignError::NoRegion { host: Some(h) }) if h == "127.0.0.1"),
        "{error:?}"
    );
    assert!(seen.lock().unwrap().is_empty());

    // A configured Region for a host that names none.
    let (upstream, seen) = recording_upstream(vec![]);
    let signing = SigV4Layer::new(static_credentials()).region("eu-central-1");
    signing
        .layer(upstream.clone())
        .oneshot(local())
        .await
        .unwrap();
    // The host's Region wins over the configured one.
    signing.layer(upstream).oneshot(converse()).await.unwrap();

    let seen = seen.lock().unwrap();
    let scope = |i: usize| {
        let authorization = seen[i].headers["authorization"]
            .to_str()
            .unwrap()
            .to_owned();
        authorization.split('/').nth(2).unwrap().to_owned()
    };
    assert_eq!(scope(0), "eu-central-1");
    assert_eq!(scope(1), "us-west-2");
}

#[tokio::test]
async fn the_default_chain_reads_credentials_and_region_from_the_environment() {
    // Only this test reads the environment; no profile files, no instance metadata.
    for (name, value) in [
        ("AWS_ACCESS_KEY_ID", "AKIDFROMENV"),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "ap-south-1"),
        ("AWS_CONFIG_FILE", "/nonexistent/aws/config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws/credentials",
        ),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        std::env::set_var(name, value);
    }
    std::env::remove_var("AWS_SESSION_TOKEN");
    std::env::remove_var("AWS_PROFILE");
    let signing = SigV4Layer::from_default_chain().await.unwrap();

    // A host that names no Region: the chain's Region is used.
    let (upstream, seen) = recording_upstream(vec![]);
    let request = Request::post("http://127.0.0.1:8080/model/amazon.nova-lite-v1%3A0/converse")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap();
    signing.layer(upstream).oneshot(request).await.unwrap();

    let seen = seen.lock().unwrap();
    let authorization = seen[0].headers["authorization"].to_str().unwrap();
    assert!(
        authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDFROMENV/")
            && authorization.contains("/ap-south-1/bedrock/aws4_request"),
        "{authorization}"
    );
}

/// The AWS SDK for Rust's own signature of an InvokeModel call (the one Bedrock accepts) is
/// the one this layer gives the same request at the same time.
#[cfg(feature = "aws-sdk")]
mod same_as_the_sdk {
    use aws_sdk_bedrockruntime::{
        config::{BehaviorVersion, Region},
        primitives::Blob,
    };
    use aws_smithy_runtime_api::client::{
        http::{
            HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings,
            SharedHttpConnector,
        },
        orchestrator::{HttpRequest, HttpResponse},
        runtime_components::RuntimeComponents,
    };
    use aws_smithy_types::body::SdkBody;

    use super::*;

    /// Records the request the SDK sends and answers 200.
    #[derive(Clone, Debug, Default)]
    struct Capture(Arc<Mutex<Option<Request<Full<Bytes>>>>>);

    impl HttpConnector for Capture {
        fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
            let request = request.try_into_http1x().unwrap();
            let (parts, body) = request.into_parts();
            let body = Bytes::copy_from_slice(body.bytes().unwrap());
            *self.0.lock().unwrap() = Some(Request::from_parts(parts, Full::new(body)));
            let response = http::Response::builder()
                .status(200)
                .body(SdkBody::from("{}"))
                .unwrap();
            HttpConnectorFuture::ready(Ok(HttpResponse::try_from(response).unwrap()))
        }
    }

    impl HttpClient for Capture {
        fn http_connector(
            &self,
            _: &HttpConnectorSettings,
            _: &RuntimeComponents,
        ) -> SharedHttpConnector {
            SharedHttpConnector::new(self.clone())
        }
    }

    #[tokio::test]
    async fn the_layer_signs_as_the_sdk_does() {
        let capture = Capture::default();
        let config = aws_sdk_bedrockruntime::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-west-2"))
            .credentials_provider(Credentials::new(
                ACCESS_KEY,
                SECRET_KEY,
                Some("session".into()),
                None,
                "test",
            ))
            .time_source(StaticTimeSource::new(example_time()))
            .http_client(capture.clone())
            .build();
        aws_sdk_bedrockruntime::Client::from_conf(config)
            .invoke_model()
            .model_id(MODEL)
            .content_type("application/json")
            .body(Blob::new(BODY))
            .send()
            .await
            .unwrap();
        let mut sent_by_sdk = capture.0.lock().unwrap().take().unwrap();
        // The SDK adds these two after signing (they change per attempt), unsigned.
        sent_by_sdk.headers_mut().remove("amz-sdk-invocation-id");
        sent_by_sdk.headers_mut().remove("amz-sdk-request");
        let sdk_authorization = sent_by_sdk.headers()["authorization"].clone();
        assert!(sent_by_sdk
            .uri()
            .path()
            .ends_with("/model/amazon.nova-lite-v1%3A0/invoke"));

        // The same request, signature and all, through the layer: signed again, identically.
        let (upstream, seen) = recording_upstream(vec![]);
        let credentials =
            Credentials::new(ACCESS_KEY, SECRET_KEY, Some("session".into()), None, "test");
        let signing =
            SigV4Layer::new(credentials).time_source(StaticTimeSource::new(example_time()));
        signing.layer(upstream).oneshot(sent_by_sdk).await.unwrap();

        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].headers["authorization"], sdk_authorization);
        assert_eq!(seen[0].headers["x-amz-security-token"], "session");
    }
}
