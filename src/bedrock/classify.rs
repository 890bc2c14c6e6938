//! What a response's status means: for retrying it, for the reservation it was sent under.

use http::{HeaderMap, StatusCode};

use super::errors::error_type;

/// What a response means for retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Throttled,
    Transient,
    Final,
}

/// Error codes the AWS SDK treats as throttling, whatever the status
/// (`THROTTLING_ERRORS` of `aws-runtime` 1.10, `retries/classifiers.rs`).
const THROTTLING_CODES: [&str; 14] = [
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// Error codes the AWS SDK retries as transient: `TRANSIENT_ERRORS` of `aws-runtime` 1.10,
/// and Bedrock's `ModelNotReadyException` (a 429 the Smithy model marks `@retryable`, not a
/// throttle: `retryable_error_kind` is `ClientError` in `aws-sdk-bedrockruntime` 1.153).
const TRANSIENT_CODES: [&str; 3] = [
    "RequestTimeout",
    "RequestTimeoutException",
    "ModelNotReadyException",
];

/// A response head, classified the way the AWS SDK retries: by the `x-amzn-errortype`
/// error code first (see [`classify_code`]), by the status when there is none.
pub(crate) fn classify(status: StatusCode, headers: &HeaderMap) -> Outcome {
    classify_code(status, error_type(headers))
}

/// A response by its status and error code (from the header or the body), the code first:
/// a throttling code throttles on any error status; a transient code is retried; another
/// named error is no throttle even on a 429 (Bedrock's `ModelNotReadyException` is one).
/// Without a code any 429 is a throttle (proxies and other APIs send no code);
/// 500/502/503/504 are transient; other errors are final.
pub(crate) fn classify_code(status: StatusCode, code: Option<&str>) -> Outcome {
    if status.is_success() || status.is_redirection() || status.is_informational() {
        return Outcome::Success;
    }
    match code {
        Some(code) if THROTTLING_CODES.contains(&code) => return Outcome::Throttled,
        Some(code) if TRANSIENT_CODES.contains(&code) => return Outcome::Transient,
        Some(_) => {}
        None if status == StatusCode::TOO_MANY_REQUESTS => return Outcome::Throttled,
        None => {}
    }
    match status.as_u16() {
        500 | 502 | 503 | 504 => Outcome::Transient,
        _ => Outcome::Final,
    }
}

/// What an error status does to the reservation of the request it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusSettlement {
    /// Refused by a throttle before running: the reservation comes back and the budget
    /// slows.
    Refused,
    /// Rejected before running (validation, access, unknown model, too large, unavailable):
    /// the reservation comes back.
    Refund,
    /// It may have run (a 500, a model timeout): the reservation is kept.
    Keep,
}

/// The settlement of a non-2xx response by its head: a throttle ([`classify`]) is refused;
/// otherwise 400, 403, 404, 413, 429 (a named error that is no throttle, such as
/// `ModelNotReadyException`) and 503 are refunded; anything else is kept.
pub(crate) fn settlement(status: StatusCode, headers: &HeaderMap) -> StatusSettlement {
    if classify(status, headers) == Outcome::Throttled {
        return StatusSettlement::Refused;
    }
    match status {
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_REQUEST
        | StatusCode::FORBIDDEN
        | StatusCode::NOT_FOUND
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::SERVICE_UNAVAILABLE => StatusSettlement::Refund,
        _ => StatusSettlement::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn classification_follows_bedrock_and_the_aws_sdk() {
        let none = HeaderMap::new();
        assert_eq!(classify(StatusCode::OK, &none), Outcome::Success);
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &none),
            Outcome::Throttled
        );
        for s in [500, 502, 503, 504] {
            assert_eq!(
                classify(StatusCode::from_u16(s).unwrap(), &none),
                Outcome::Transient
            );
        }
        for s in [400, 401, 403, 404, 408, 413, 424] {
            assert_eq!(
                classify(StatusCode::from_u16(s).unwrap(), &none),
                Outcome::Final,
                "{s}"
            );
        }
        let throttling = headers(&[(
            "x-amzn-errortype",
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
        )]);
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, &throttling),
            Outcome::Throttled
        );
        let quota = headers(&[(
            "x-amzn-errortype",
            "ServiceQuotaExceededException:http://x/",
        )]);
        assert_eq!(classify(StatusCode::BAD_REQUEST, &quota), Outcome::Final);
    }

    #[test]
    fn the_error_code_goes_before_the_status() {
        let too_many = StatusCode::TOO_MANY_REQUESTS;
        // Bedrock's other 429: retried, but no throttle.
        let not_ready = headers(&[("x-amzn-errortype", "ModelNotReadyException:http://x/")]);
        assert_eq!(classify(too_many, &not_ready), Outcome::Transient);
        // A named error that is neither is final, whatever the status says.
        let validation = headers(&[("x-amzn-errortype", "ValidationException")]);
        assert_eq!(classify(too_many, &validation), Outcome::Final);
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, &validation),
            Outcome::Final
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &validation),
            Outcome::Transient
        );
        let timeout = Some("RequestTimeout");
        assert_eq!(
            classify_code(StatusCode::BAD_REQUEST, timeout),
            Outcome::Transient
        );
        assert_eq!(
            classify_code(StatusCode::FORBIDDEN, Some("ThrottlingException")),
            Outcome::Throttled
        );
    }

    #[test]
    fn every_throttling_code_throttles_on_any_error_status() {
        for code in THROTTLING_CODES {
            let h = headers(&[("x-amzn-errortype", code)]);
            for s in [400, 403, 500, 503] {
                assert_eq!(
                    classify(StatusCode::from_u16(s).unwrap(), &h),
                    Outcome::Throttled,
                    "{code} {s}"
                );
            }
            // A success is a success whatever the header says.
            assert_eq!(classify(StatusCode::OK, &h), Outcome::Success);
        }
    }

    #[test]
    fn error_statuses_settle_as_the_gate_settles_them() {
        let none = HeaderMap::new();
        assert_eq!(
            settlement(StatusCode::TOO_MANY_REQUESTS, &none),
            StatusSettlement::Refused
        );
        let throttling = headers(&[("x-amzn-errortype", "ThrottlingException")]);
        assert_eq!(
            settlement(StatusCode::BAD_REQUEST, &throttling),
            StatusSettlement::Refused
        );
        let not_ready = headers(&[("x-amzn-errortype", "ModelNotReadyException")]);
        assert_eq!(
            settlement(StatusCode::TOO_MANY_REQUESTS, &not_ready),
            StatusSettlement::Refund
        );
        for s in [400, 403, 404, 413, 503] {
            assert_eq!(
                settlement(StatusCode::from_u16(s).unwrap(), &none),
                StatusSettlement::Refund,
                "{s}"
            );
        }
        for s in [401, 408, 424, 500, 502, 504, 302] {
            assert_eq!(
                settlement(StatusCode::from_u16(s).unwrap(), &none),
                StatusSettlement::Keep,
                "{s}"
            );
        }
    }
}
