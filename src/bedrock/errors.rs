//! What an error says it is: the error type of a response, the HTTP error of a stream
//! exception; and an error response in Bedrock's own format.
//!
//! Read as the AWS SDK for Rust reads a restJson1 error (`json_errors.rs` of
//! `aws-sdk-bedrockruntime` 1.153): the code is the `x-amzn-errortype` header, else the
//! body's `code`, else its `__type`; a trailing `:…` (Bedrock appends
//! `:http://internal.amazon.com/coral/com.amazon.bedrock/`) and a leading `…#` namespace are
//! trimmed; the message is the body's `message`, `Message` or `errorMessage`.

use std::time::Duration;

use bytes::Bytes;
use http::{
    header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER},
    HeaderMap, HeaderValue, Response, StatusCode,
};

/// Bedrock's error type for a throttled request (HTTP 429).
pub(crate) const THROTTLING: &str = "ThrottlingException";
/// Bedrock's error type for a request it will not accept as sent (HTTP 400).
pub(crate) const VALIDATION: &str = "ValidationException";
/// Bedrock's error type for a service that cannot answer now (HTTP 503).
pub(crate) const SERVICE_UNAVAILABLE: &str = "ServiceUnavailableException";
/// The error type the AWS SDKs retry as a transient timeout (`aws-runtime`'s
/// `TRANSIENT_ERRORS`); Bedrock's model does not list it, so the SDK reports it unmodelled.
pub(crate) const REQUEST_TIMEOUT: &str = "RequestTimeoutException";

/// The header in which AWS services give a retry delay in milliseconds; the AWS SDKs wait
/// that long before their next attempt (`aws-runtime`'s `retry_after_from_ctx`).
pub(crate) const X_AMZ_RETRY_AFTER: &str = "x-amz-retry-after";

/// An error response as Bedrock sends one (restJson1): `status`, `x-amzn-errortype`, a JSON
/// body `{"message": ...}`, and when `retry_after` is given, `Retry-After` in whole seconds
/// (rounded up) and `x-amz-retry-after` in milliseconds (rounded up).
///
/// The AWS SDKs read the error type from `x-amzn-errortype` and the message from the
/// body's `message` (`aws-sdk-bedrockruntime`'s `json_errors::parse_error_metadata`).
pub(crate) fn error_response<B: From<Bytes>>(
    status: StatusCode,
    error_type: &'static str,
    message: &str,
    retry_after: Option<Duration>,
) -> Response<B> {
    let json = Bytes::from(serde_json::json!({ "message": message }).to_string());
    let mut response = Response::new(B::from(Bytes::new()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert("x-amzn-errortype", HeaderValue::from_static(error_type));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, json.len().into());
    if let Some(after) = retry_after {
        let millis = after.as_nanos().div_ceil(1_000_000);
        let secs = millis.div_ceil(1_000);
        headers.insert(RETRY_AFTER, HeaderValue::from(saturate(secs)));
        headers.insert(X_AMZ_RETRY_AFTER, HeaderValue::from(saturate(millis)));
    }
    *response.body_mut() = B::from(json);
    response
}

fn saturate(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A response's error type from its `x-amzn-errortype` header, trimmed as the SDK trims it.
pub(crate) fn error_type(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("x-amzn-errortype")?.to_str().ok()?;
    Some(sanitize_error_code(value))
}

/// An error code without its trailing `:…` URL and its leading `…#` namespace (the SDK's
/// `sanitize_error_code`).
fn sanitize_error_code(code: &str) -> &str {
    let code = code.split(':').next().unwrap_or(code);
    code.rsplit_once('#').map_or(code, |(_, name)| name)
}

/// The fields of a JSON error body the AWS SDK reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ErrorBody {
    /// `code`, else `__type`, untrimmed.
    code: Option<String>,
    /// `message`, `Message` or `errorMessage`.
    pub(crate) message: Option<String>,
}

impl ErrorBody {
    /// The error fields of `body`; empty when it is not a JSON object.
    pub(crate) fn parse(body: &[u8]) -> Self {
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(body) else {
            return Self::default();
        };
        let text = |key: &str| fields.get(key).and_then(|v| v.as_str()).map(String::from);
        Self {
            code: text("code").or_else(|| text("__type")),
            message: text("message")
                .or_else(|| text("Message"))
                .or_else(|| text("errorMessage")),
        }
    }
}

/// The error code of a response: its header first, then its body's, trimmed.
pub(crate) fn error_code<'a>(headers: &'a HeaderMap, body: &'a ErrorBody) -> Option<&'a str> {
    error_type(headers).or_else(|| body.code.as_deref().map(sanitize_error_code))
}

/// The HTTP status and error type an event stream's exception frame stands for, for the
/// exceptions the retry layer retries; `None` for the others (validation, model errors),
/// which reach the caller in the stream.
pub(crate) fn exception_error(exception_type: &str) -> Option<(StatusCode, &'static str)> {
    let is = |name: &str| exception_type.eq_ignore_ascii_case(name);
    if is("throttlingException") {
        Some((StatusCode::TOO_MANY_REQUESTS, "ThrottlingException"))
    } else if is("serviceUnavailableException") {
        Some((
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
        ))
    } else if is("internalServerException") {
        Some((StatusCode::INTERNAL_SERVER_ERROR, "InternalServerException"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};

    use super::*;

    #[tokio::test]
    async fn an_error_response_is_what_bedrock_sends() {
        let r: Response<Full<Bytes>> = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            THROTTLING,
            "busy \"now\"",
            Some(Duration::from_micros(1_200_001)),
        );
        assert_eq!(r.status(), 429);
        assert_eq!(error_type(r.headers()), Some("ThrottlingException"));
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()[RETRY_AFTER], "2");
        assert_eq!(r.headers()[X_AMZ_RETRY_AFTER], "1201");
        let len: usize = r.headers()[CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(len, body.len());
        assert_eq!(&body[..], br#"{"message":"busy \"now\""}"#);

        let r: Response<Full<Bytes>> =
            error_response(StatusCode::BAD_REQUEST, VALIDATION, "no", None);
        assert!(r.headers().get(RETRY_AFTER).is_none());
        assert!(r.headers().get(X_AMZ_RETRY_AFTER).is_none());
        let r: Response<Full<Bytes>> = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            THROTTLING,
            "",
            Some(Duration::ZERO),
        );
        assert_eq!(r.headers()[RETRY_AFTER], "0");
    }

    #[test]
    fn the_error_type_is_the_header_before_its_namespace() {
        let mut h = HeaderMap::new();
        assert_eq!(error_type(&h), None);
        h.insert(
            "x-amzn-errortype",
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
                .parse()
                .unwrap(),
        );
        assert_eq!(error_type(&h), Some("ThrottlingException"));
        h.insert("x-amzn-errortype", "ValidationException".parse().unwrap());
        assert_eq!(error_type(&h), Some("ValidationException"));
        h.insert("x-amzn-errortype", ":x".parse().unwrap());
        assert_eq!(error_type(&h), Some(""));
        h.insert(
            "x-amzn-errortype",
            "com.amazon.coral#ThrottlingException:http://x/"
                .parse()
                .unwrap(),
        );
        assert_eq!(error_type(&h), Some("ThrottlingException"));
    }

    #[test]
    fn the_code_is_the_header_then_the_body_code_then_its_type() {
        let body = ErrorBody::parse(
            br#"{"__type":"aws#ValidationException","code":"ThrottlingException","message":"m"}"#,
        );
        assert_eq!(body.message.as_deref(), Some("m"));
        let mut h = HeaderMap::new();
        assert_eq!(error_code(&h, &body), Some("ThrottlingException"));
        h.insert(
            "x-amzn-errortype",
            "ModelNotReadyException:x".parse().unwrap(),
        );
        assert_eq!(error_code(&h, &body), Some("ModelNotReadyException"));
        let typed = ErrorBody::parse(br#"{"__type":"aws#ValidationException:u","Message":"M"}"#);
        assert_eq!(
            error_code(&HeaderMap::new(), &typed),
            Some("ValidationException")
        );
        assert_eq!(typed.message.as_deref(), Some("M"));
        let lambda = ErrorBody::parse(br#"{"errorMessage":"e","code":7}"#);
        assert_eq!(lambda.message.as_deref(), Some("e"));
        assert_eq!(error_code(&HeaderMap::new(), &lambda), None);
        for not_an_object in [&b"<html>"[..], b"[]", b"\"oops\"", b""] {
            assert_eq!(ErrorBody::parse(not_an_object), ErrorBody::default());
        }
    }

    #[test]
    fn retried_stream_exceptions_become_their_http_errors() {
        assert_eq!(
            exception_error("throttlingException"),
            Some((StatusCode::TOO_MANY_REQUESTS, "ThrottlingException"))
        );
        assert_eq!(
            exception_error("ThrottlingException"),
            Some((StatusCode::TOO_MANY_REQUESTS, "ThrottlingException"))
        );
        assert_eq!(
            exception_error("serviceUnavailableException"),
            Some((
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException"
            ))
        );
        assert_eq!(
            exception_error("internalServerException"),
            Some((StatusCode::INTERNAL_SERVER_ERROR, "InternalServerException"))
        );
        for other in [
            "validationException",
            "modelStreamErrorException",
            "modelTimeoutException",
            "",
        ] {
            assert_eq!(exception_error(other), None, "{other}");
        }
    }
}
