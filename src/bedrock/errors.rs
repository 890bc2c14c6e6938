//! What an error says it is: the error type of a response, the HTTP error of a stream exception.

use http::{HeaderMap, StatusCode};

/// A response's error type: `x-amzn-errortype` up to its first `:` (Bedrock appends a
/// namespace, as in `ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/`).
pub(crate) fn error_type(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("x-amzn-errortype")?.to_str().ok()?;
    value.split(':').next()
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
    use super::*;

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
