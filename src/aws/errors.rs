//! What the SDK sees of an error of the stack: a connector error, or Bedrock's own error
//! response; and the way back from an `SdkError` to the [`ThrottleError`].

use std::sync::Arc;

use aws_smithy_runtime_api::client::{
    orchestrator::HttpResponse,
    result::{ConnectorError, SdkError},
};
use aws_smithy_types::body::SdkBody;

use crate::{BoxError, ThrottleError};

/// The [`ThrottleError`] behind an SDK call's error, if this crate refused the call: found
/// in the error's sources (a dispatch failure, the default) or on the raw response (with
/// [`refusals_as_service_errors`](super::ThrottledHttpClient::refusals_as_service_errors)).
/// `None` for errors Bedrock or the network made. See "Errors" in the
/// [module docs](super).
///
/// ```
/// use aws_sdk_bedrockruntime::{error::SdkError, operation::invoke_model::InvokeModelError};
/// use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
/// use bedrock_throttle::{aws::throttle_error, ThrottleError};
///
/// fn wait_hint(err: &SdkError<InvokeModelError, HttpResponse>) -> Option<std::time::Duration> {
///     throttle_error(err).and_then(ThrottleError::retry_after)
/// }
/// # let _ = wait_hint;
/// ```
pub fn throttle_error<E>(error: &SdkError<E, HttpResponse>) -> Option<&ThrottleError>
where
    E: std::error::Error + 'static,
{
    if let Some(Refusal(e)) = error.raw_response().and_then(|r| r.extension::<Refusal>()) {
        return Some(e);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(throttle) = e.downcast_ref::<ThrottleError>() {
            return Some(throttle);
        }
        source = e.source();
    }
    None
}

/// The refusal a response was made from, in its extensions for [`throttle_error`].
#[derive(Clone, Debug)]
struct Refusal(Arc<ThrottleError>);

/// The SDK's view of an error of the stack: with `as_responses`, the crate's refusals
/// (every `ThrottleError` but `Upstream`) become Bedrock's error response; everything
/// else a connector error.
pub(super) fn into_sdk_outcome(
    error: BoxError,
    as_responses: bool,
) -> Result<HttpResponse, ConnectorError> {
    if !as_responses {
        return Err(into_connector_error(error));
    }
    match error.downcast::<ThrottleError>() {
        Ok(e) if !matches!(*e, ThrottleError::Upstream { .. }) => Ok(refusal_response(*e)),
        Ok(e) => Err(into_connector_error(e)),
        Err(other) => Err(into_connector_error(other)),
    }
}

/// `error` as Bedrock would answer it, carrying the error for [`throttle_error`].
fn refusal_response(error: ThrottleError) -> HttpResponse {
    let response: http::Response<SdkBody> = error.to_response();
    let mut response =
        HttpResponse::try_from(response).expect("a status, ASCII headers and a body");
    response.add_extension(Refusal(Arc::new(error)));
    response
}

/// A connector error; see "Errors" in the [module docs](super).
pub(super) fn into_connector_error(error: BoxError) -> ConnectorError {
    let error = match error.downcast::<ConnectorError>() {
        Ok(e) => return *e,
        Err(e) => e,
    };
    match error.downcast::<ThrottleError>() {
        Ok(e) => match *e {
            ThrottleError::Upstream { attempts, source } => {
                match source.downcast::<ConnectorError>() {
                    Ok(inner) => {
                        tracing::debug!(attempts, error = %inner, "connector failed on every attempt");
                        *inner
                    }
                    Err(source) => ConnectorError::other(
                        Box::new(ThrottleError::Upstream { attempts, source }),
                        None,
                    ),
                }
            }
            e @ (ThrottleError::BodyTooLarge { .. }
            | ThrottleError::NeverFits { .. }
            | ThrottleError::Body(_)
            | ThrottleError::BodyTimeout { .. }) => ConnectorError::user(Box::new(e)),
            e => ConnectorError::other(Box::new(e), None),
        },
        Err(other) => ConnectorError::other(other, None),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{QuotaKey, RefusedBy};

    fn source_is<T: std::error::Error + 'static>(e: &ConnectorError) -> bool {
        std::error::Error::source(e).is_some_and(|s| s.is::<T>())
    }

    #[test]
    fn throttle_errors_become_connector_errors_the_sdk_does_not_retry() {
        let e = into_connector_error(Box::new(ThrottleError::BodyTooLarge { limit: 10 }));
        assert!(e.is_user() && source_is::<ThrottleError>(&e));
        let e = into_connector_error(Box::new(ThrottleError::NeverFits {
            key: QuotaKey::default(),
            tokens: 10,
            quota_tokens: 5,
        }));
        assert!(e.is_user());
        let e = into_connector_error(Box::new(ThrottleError::MaxWaitExceeded {
            key: QuotaKey::default(),
            tenant: None,
            refused_by: RefusedBy::ModelQuota,
            waited: Duration::from_secs(1),
            retry_after: Duration::from_secs(2),
        }));
        assert!(e.is_other() && e.as_other().is_none() && source_is::<ThrottleError>(&e));
    }

    #[test]
    fn the_inner_connector_error_comes_back_as_it_was() {
        let io = ConnectorError::io("reset".into());
        let e = into_connector_error(Box::new(ThrottleError::Upstream {
            attempts: 3,
            source: Box::new(io),
        }));
        assert!(e.is_io());
        let e = into_connector_error(Box::new(ConnectorError::timeout("slow".into())));
        assert!(e.is_timeout());
        let e = into_connector_error(Box::new(ThrottleError::Upstream {
            attempts: 2,
            source: "not a connector error".into(),
        }));
        assert!(e.is_other() && source_is::<ThrottleError>(&e));
    }

    #[test]
    fn as_responses_refusals_are_bedrocks_errors_and_failures_stay_connector_errors() {
        let shed = ThrottleError::Overloaded {
            key: QuotaKey::default(),
            tenant: None,
            refused_by: RefusedBy::ModelQueue,
            queued: 4,
            retry_after: Duration::from_secs(2),
        };
        let response = into_sdk_outcome(Box::new(shed), true).unwrap();
        assert_eq!(response.status().as_u16(), 429);
        assert_eq!(
            response.headers().get("x-amzn-errortype"),
            Some("ThrottlingException")
        );
        assert!(matches!(
            response.extension::<Refusal>(),
            Some(Refusal(e)) if matches!(**e, ThrottleError::Overloaded { queued: 4, .. })
        ));

        let failed = ThrottleError::Upstream {
            attempts: 3,
            source: Box::new(ConnectorError::io("reset".into())),
        };
        assert!(into_sdk_outcome(Box::new(failed), true)
            .unwrap_err()
            .is_io());
        let shed = ThrottleError::Overloaded {
            key: QuotaKey::default(),
            tenant: None,
            refused_by: RefusedBy::ModelQueue,
            queued: 4,
            retry_after: Duration::from_secs(2),
        };
        assert!(into_sdk_outcome(Box::new(shed), false)
            .unwrap_err()
            .is_other());
    }
}
