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

/// Error codes the AWS SDK treats as throttling, whatever the status.
const THROTTLING_CODES: [&str; 11] = [
    "ThrottlingException",
    "TooManyRequestsException",
    "ThrottledException",
    "RequestThrottledException",
    "RequestThrottled",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "SlowDown",
];

/// A response head, classified the way Bedrock and the AWS SDK retry: any 429 or
/// throttling error type is a throttle, 500/502/503/504 transient, other errors final.
pub(crate) fn classify(status: StatusCode, headers: &HeaderMap) -> Outcome {
    if status.is_success() || status.is_redirection() || status.is_informational() {
        return Outcome::Success;
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Outcome::Throttled;
    }
    if error_type(headers).is_some_and(|t| THROTTLING_CODES.contains(&t)) {
        return Outcome::Throttled;
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

/// The settlement of a non-2xx status: 429 is refused; 400, 403, 404, 413 and 503 are
/// refunded; anything else is kept.
pub(crate) fn settlement(status: StatusCode) -> StatusSettlement {
    match status {
        StatusCode::TOO_MANY_REQUESTS => StatusSettlement::Refused,
        StatusCode::BAD_REQUEST
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
        assert_eq!(
            settlement(StatusCode::TOO_MANY_REQUESTS),
            StatusSettlement::Refused
        );
        for s in [400, 403, 404, 413, 503] {
            assert_eq!(
                settlement(StatusCode::from_u16(s).unwrap()),
                StatusSettlement::Refund,
                "{s}"
            );
        }
        for s in [401, 408, 424, 500, 502, 504, 302] {
            assert_eq!(
                settlement(StatusCode::from_u16(s).unwrap()),
                StatusSettlement::Keep,
                "{s}"
            );
        }
    }
}
