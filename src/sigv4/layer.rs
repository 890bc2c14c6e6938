//! The layer that signs each request with SigV4.

use std::sync::Arc;

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_smithy_async::time::{SharedTimeSource, SystemTimeSource, TimeSource};
use tower_layer::Layer;

use super::{SigV4, SignError};

/// Signs each request with AWS Signature Version 4 for Bedrock (signing name `bedrock`),
/// with credentials from a [`ProvideCredentials`]. Put it *below* the throttle, so each
/// attempt is signed when it is sent. See the [module docs](super) for an example.
///
/// The Region signed for is the one in the request's host
/// (`bedrock-runtime.{region}.amazonaws.com`), else the one set with
/// [`region`](Self::region) (for a proxy or a custom endpoint); a request with neither
/// fails with [`SignError::NoRegion`].
#[derive(Clone, Debug)]
pub struct SigV4Layer {
    pub(super) settings: Arc<Settings>,
}

#[derive(Clone, Debug)]
pub(super) struct Settings {
    pub(super) credentials: SharedCredentialsProvider,
    pub(super) region: Option<String>,
    pub(super) time_source: SharedTimeSource,
}

impl SigV4Layer {
    /// Signs with credentials from `credentials` (the SDK's providers, or
    /// `aws_credential_types::Credentials` for fixed keys), for the Region of each request's
    /// host.
    pub fn new(credentials: impl ProvideCredentials + 'static) -> Self {
        Self {
            settings: Arc::new(Settings {
                credentials: SharedCredentialsProvider::new(credentials),
                region: None,
                time_source: SharedTimeSource::new(SystemTimeSource::new()),
            }),
        }
    }

    /// Signs with the credentials and Region of the default AWS chain, as the AWS SDK finds
    /// them (`aws_config::load_defaults`): environment, shared config and credentials files,
    /// SSO tokens already in the cache, web identity, ECS and EC2 instance metadata. Its HTTP
    /// providers use rustls with ring.
    pub async fn from_default_chain() -> Result<Self, SignError> {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http_client)
            .load()
            .await;
        Self::from_sdk_config(&config)
    }

    /// Signs with the credentials provider and Region of an SDK configuration.
    pub fn from_sdk_config(config: &aws_config::SdkConfig) -> Result<Self, SignError> {
        let credentials = config
            .credentials_provider()
            .ok_or(SignError::NoCredentialsProvider)?;
        let mut layer = Self::new(credentials);
        if let Some(region) = config.region() {
            layer = layer.region(region.as_ref());
        }
        if let Some(time_source) = config.time_source() {
            layer = layer.time_source(time_source);
        }
        Ok(layer)
    }

    /// The Region to sign for when the request's host names none (a proxy, a VPC endpoint
    /// by a private DNS name, an emulator).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.settings).region = Some(region.into());
        self
    }

    /// The clock of the signatures' time stamps (the system clock unless set; tests set a
    /// fixed or a tokio-driven one).
    pub fn time_source(mut self, time_source: impl TimeSource + 'static) -> Self {
        Arc::make_mut(&mut self.settings).time_source = SharedTimeSource::new(time_source);
        self
    }
}

impl<S> Layer<S> for SigV4Layer {
    type Service = SigV4<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SigV4::new(inner, self)
    }
}
