//! How the emulated bedrock-runtime reads `Authorization`: a SigV4 (or SigV4a) signature or
//! a Bedrock API key (`Bearer …`, short- or long-term), both as Bedrock accepts them
//! (<https://docs.aws.amazon.com/bedrock/latest/userguide/api-keys.html>). Neither is
//! verified; with [`require_authorization`](super::EmulatorBuilder::require_authorization)
//! a request with neither is refused as AWS refuses one: 403.

use http::{HeaderMap, StatusCode};

/// Why a request was refused, as AWS says it: (error type, message).
pub(crate) type Refusal = (&'static str, &'static str);

/// Checks a request's `Authorization` header: `Ok` for a SigV4 signature or a non-empty
/// bearer token, and, unless `required`, for none at all.
pub(crate) fn check(headers: &HeaderMap, required: bool) -> Result<(), Refusal> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return if required {
            Err((
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            ))
        } else {
            Ok(())
        };
    };
    let value = value.to_str().unwrap_or("");
    let bearer = value
        .strip_prefix("Bearer ")
        .is_some_and(|token| !token.trim().is_empty());
    if bearer || value.starts_with("AWS4-") {
        Ok(())
    } else {
        Err((
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ))
    }
}

/// The status of every refusal.
pub(crate) const STATUS: StatusCode = StatusCode::FORBIDDEN;

#[cfg(test)]
mod tests {
    use super::*;

    fn with(auth: Option<&str>, required: bool) -> Result<(), &'static str> {
        let mut headers = HeaderMap::new();
        if let Some(a) = auth {
            headers.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        check(&headers, required).map_err(|(kind, _)| kind)
    }

    #[test]
    fn sigv4_and_bearer_keys_pass_anything_else_is_refused() {
        let sigv4 = "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=00";
        for required in [false, true] {
            assert_eq!(with(Some(sigv4), required), Ok(()));
            assert_eq!(with(Some("Bearer ABSKbedrock-api-key"), required), Ok(()));
            for bad in ["Bearer ", "Bearer  ", "Basic dXNlcjpwdw==", "bearer x", "x"] {
                assert_eq!(
                    with(Some(bad), required),
                    Err("UnrecognizedClientException"),
                    "{bad:?}"
                );
            }
        }
        assert_eq!(with(None, false), Ok(()));
        assert_eq!(with(None, true), Err("MissingAuthenticationTokenException"));
    }
}
