//! Signing one request head and body with SigV4, and finding its Region.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::{
    http_request::{sign, SignableBody, SignableRequest, SigningSettings},
    sign::v4,
};
use aws_smithy_runtime_api::client::identity::Identity;
use http::{header::AUTHORIZATION, HeaderMap, HeaderName};

use super::SignError;

/// The signing name of `bedrock-runtime` (`aws-sdk-bedrockruntime`'s
/// `Config::signing_name`).
pub(super) const SIGNING_NAME: &str = "bedrock";

/// Headers of an earlier signature, removed before signing anew.
const SIGNATURE_HEADERS: [HeaderName; 4] = [
    AUTHORIZATION,
    HeaderName::from_static("x-amz-date"),
    HeaderName::from_static("x-amz-security-token"),
    HeaderName::from_static("x-amz-content-sha256"),
];

/// Whether the request authenticates with a bearer token (a Bedrock API key), which is
/// sent as it is.
pub(super) fn has_bearer_token(headers: &HeaderMap) -> bool {
    headers.get(AUTHORIZATION).is_some_and(|v| {
        v.as_bytes()
            .get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
    })
}

/// The Region in a Bedrock runtime host: `bedrock-runtime.{region}.amazonaws.com`, its
/// `-fips` form, the `.amazonaws.com.cn` partition and VPC endpoint names
/// (`vpce-….bedrock-runtime.{region}.vpce.amazonaws.com`).
///
/// The endpoint forms are those of the AWS General Reference, "Amazon Bedrock endpoints and
/// quotas".
pub(super) fn region_of_host(host: &str) -> Option<&str> {
    let host = host.trim_end_matches('.');
    if !(host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn")) {
        return None;
    }
    let mut labels = host.split('.');
    labels.find(|l| *l == "bedrock-runtime" || *l == "bedrock-runtime-fips")?;
    labels.next().filter(|region| {
        region.contains('-')
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

/// Signs `parts` with `body` as its payload: removes an earlier signature and adds
/// `X-Amz-Date`, `Authorization` and, for temporary credentials, `X-Amz-Security-Token`.
///
/// The settings are those the AWS SDK for Rust signs Bedrock with (`aws-runtime`'s
/// `SigningOptions::default()`: double URI encoding, normalised path, the payload's SHA-256
/// in the canonical request, no `x-amz-content-sha256` header).
pub(super) fn sign_request(
    parts: &mut http::request::Parts,
    body: &[u8],
    credentials: Credentials,
    region: &str,
    time: SystemTime,
) -> Result<(), SignError> {
    for name in &SIGNATURE_HEADERS {
        parts.headers.remove(name);
    }
    let identity = Identity::from(credentials);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_NAME)
        .time(time)
        .settings(settings())
        .build()
        .map_err(|e| SignError::Sign(e.into()))?
        .into();
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let value = value
            .to_str()
            .map_err(|_| SignError::HeaderNotText(name.clone()))?;
        headers.push((name.as_str(), value));
    }
    let uri = parts.uri.to_string();
    let signable = SignableRequest::new(
        parts.method.as_str(),
        uri.as_str(),
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| SignError::Sign(e.into()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| SignError::Sign(e.into()))?
        .into_parts();
    let mut request = http::Request::from_parts(std::mem::replace(parts, empty_parts()), ());
    instructions.apply_to_request_http1x(&mut request);
    *parts = request.into_parts().0;
    Ok(())
}

/// The SDK's settings, also leaving out the hop-by-hop headers (RFC 9110, section 7.6.1) a
/// forwarding server may pass on: an HTTP/2 client drops them, which would void a signature
/// that covered them.
fn settings() -> SigningSettings {
    let mut settings = SigningSettings::default();
    if let Some(excluded) = &mut settings.excluded_headers {
        excluded.extend(
            [
                "connection",
                "keep-alive",
                "proxy-connection",
                "te",
                "upgrade",
            ]
            .map(Into::into),
        );
    }
    settings
}

fn empty_parts() -> http::request::Parts {
    http::Request::new(()).into_parts().0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_comes_from_bedrock_runtime_hosts_only() {
        for (host, region) in [
            ("bedrock-runtime.us-east-1.amazonaws.com", Some("us-east-1")),
            (
                "bedrock-runtime-fips.us-west-2.amazonaws.com",
                Some("us-west-2"),
            ),
            (
                "bedrock-runtime.cn-north-1.amazonaws.com.cn",
                Some("cn-north-1"),
            ),
            (
                "vpce-0abc-1xyz.bedrock-runtime.eu-central-1.vpce.amazonaws.com",
                Some("eu-central-1"),
            ),
            ("bedrock.us-east-1.amazonaws.com", None),
            ("bedrock-runtime.us-east-1.example.com", None),
            ("localhost", None),
            ("bedrock-runtime.amazonaws.com", None),
        ] {
            assert_eq!(region_of_host(host), region, "{host}");
        }
    }

    #[test]
    fn only_the_bearer_scheme_is_a_bearer_token() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, value.parse().unwrap());
            headers
        };
        assert!(has_bearer_token(&with("Bearer ABSK-key")));
        assert!(has_bearer_token(&with("bearer ABSK-key")));
        assert!(!has_bearer_token(&with(
            "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/bedrock/aws4_request"
        )));
        assert!(!has_bearer_token(&with("Bearer")));
        assert!(!has_bearer_token(&HeaderMap::new()));
    }
}
