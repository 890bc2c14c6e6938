//! Signs requests to Bedrock with AWS Signature Version 4, each attempt afresh.
//!
//! [`SigV4Layer`] goes *below* the throttle, between it and the HTTP client: the gate may
//! hold a request for minutes and the retry layer sends it again, while AWS accepts a
//! signature only for five minutes after its time stamp. Below the gate, every attempt
//! (retries included) is signed when it is sent, with its own `X-Amz-Date`.
//!
//! ```
//! use aws_credential_types::Credentials;
//! use bedrock_throttle::{sigv4::SigV4Layer, BedrockThrottleLayer, Quota, ThrottleConfig};
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), bedrock_throttle::BoxError> {
//! let cfg = ThrottleConfig::builder()
//!     .quota(Quota::tokens_per_minute(200_000))
//!     .build()?;
//! // In a server: `SigV4Layer::from_default_chain().await?` (environment, profile, SSO,
//! // web identity, ECS, EC2 instance metadata).
//! let credentials = Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", None, None, "doc");
//!
//! // The HTTP client upstream (here a stand-in that shows what it was sent).
//! let upstream = service_fn(|req: http::Request<Full<Bytes>>| async move {
//!     let auth = req.headers()["authorization"].to_str()?.to_owned();
//!     assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));
//!     assert!(auth.contains("/us-west-2/bedrock/aws4_request"));
//!     assert!(req.headers().contains_key("x-amz-date"));
//!     Ok::<_, bedrock_throttle::BoxError>(http::Response::new(Full::new(Bytes::new())))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(BedrockThrottleLayer::new(cfg)) // estimate → retry → gate
//!     .layer(SigV4Layer::new(credentials)) // signs each attempt the gate lets through
//!     .service(upstream);
//!
//! let request = http::Request::post(
//!     "https://bedrock-runtime.us-west-2.amazonaws.com/model/amazon.nova-lite-v1%3A0/converse",
//! )
//! .header("content-type", "application/json")
//! .body(Full::new(Bytes::from(r#"{"messages":[]}"#)))?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(()) }
//! ```
//!
//! What it does with a request:
//! - **`Authorization: Bearer …`** (a Bedrock API key): sent untouched, unsigned, with no
//!   [`SendDeadline`](crate::SendDeadline).
//! - **Already signed** (`Authorization: AWS4-HMAC-SHA256 …`, e.g. forwarded from a client
//!   that signed for the gateway's host): *signed again*. The old `Authorization`,
//!   `X-Amz-Date`, `X-Amz-Security-Token` and `X-Amz-Content-SHA256` are removed first; an
//!   old signature was made for another host or time and would be refused or expire.
//! - **Anything else**: the body is read (below the throttle it is one buffered chunk) and
//!   its SHA-256 goes into the canonical request; the headers present are signed (but
//!   `user-agent`, `x-amzn-trace-id`, `transfer-encoding`, as the SDK does, and the other
//!   hop-by-hop headers); `X-Amz-Date`, `Authorization` and, for temporary credentials,
//!   `X-Amz-Security-Token` are added. Used without the throttle above it, the layer reads
//!   the whole body into memory, with no limit.
//!
//! The signing settings are those of the AWS SDK for Rust for `bedrock-runtime` (signing
//! name `bedrock`, from `aws-sdk-bedrockruntime`'s `Config::signing_name`; `aws-runtime`'s
//! default `SigningOptions`). The signed request gets a
//! [`SendDeadline`](crate::SendDeadline) of [`SIGV4_WINDOW`](crate::SendDeadline::SIGV4_WINDOW):
//! below the gate nothing waits after signing, and were the layer put above the throttle by
//! mistake, the gate and the retry layer would still send no attempt with an expired
//! signature (they would fail it instead).
//!
//! Unlike the AWS SDK's signer, this one signs `http::Request`s of any body that can be
//! rebuilt from `Bytes`, with no SDK client around it; streaming uploads
//! (`aws-chunked`) are not signed chunk by chunk, which Bedrock's runtime API never needs.

mod future;
mod layer;
mod service;
mod sign;

pub use self::{future::ResponseFuture, layer::SigV4Layer, service::SigV4};

use aws_credential_types::provider::error::CredentialsError;
use http::HeaderName;

use crate::BoxError;

/// Why a request could not be signed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SignError {
    /// The AWS configuration has no credentials provider: set credentials in the environment,
    /// a profile or a role, or pass a provider to [`SigV4Layer::new`].
    NoCredentialsProvider,
    /// Neither the request's host (`bedrock-runtime.{region}.amazonaws.com`) nor the layer
    /// ([`SigV4Layer::region`]) names a Region.
    NoRegion {
        /// The request's host, if it had one.
        host: Option<String>,
    },
    /// The credentials provider failed (expired SSO session, unreachable instance metadata,
    /// …); the request was not sent.
    Credentials(CredentialsError),
    /// A header value that is not visible ASCII text cannot be signed.
    HeaderNotText(HeaderName),
    /// Reading the request body failed.
    Body(BoxError),
    /// `aws-sigv4` refused the request (an unparsable URI, bad parameters).
    Sign(BoxError),
}

impl std::fmt::Display for SignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoCredentialsProvider => f.write_str("no AWS credentials provider configured"),
            Self::NoRegion { host: Some(host) } => write!(
                f,
                "no Region to sign for: host {host} is not bedrock-runtime.{{region}}.amazonaws.com and none is configured"
            ),
            Self::NoRegion { host: None } => {
                f.write_str("no Region to sign for: the request has no host and none is configured")
            }
            Self::Credentials(_) => f.write_str("could not get AWS credentials to sign with"),
            Self::HeaderNotText(name) => write!(f, "header {name} is not text and cannot be signed"),
            Self::Body(_) => f.write_str("could not read the request body to sign it"),
            Self::Sign(_) => f.write_str("could not sign the request with SigV4"),
        }
    }
}

impl std::error::Error for SignError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Credentials(e) => Some(e),
            Self::Body(e) | Self::Sign(e) => Some(&**e),
            _ => None,
        }
    }
}
