//! The way to Bedrock: an HTTPS client, the account's credentials below the throttle, and
//! the throttle above them, with every refusal answered as Bedrock would answer it.
//!
//! ```text
//! request ─▶ ErrorResponse ─▶ BedrockThrottle ─▶ SigV4 or API key ─▶ HTTPS client ─▶ Bedrock
//!            (never fails:    (estimate, retry,   (each attempt
//!             Bedrock errors)  gate per model)     signed afresh)
//! ```

use std::{convert::Infallible, time::Duration};

use axum::body::Body;
use bedrock_throttle::{
    emulator::{EmulatedQuota, Emulator, EmulatorHandle, LatencyModel, OutputLength},
    error_response::{ErrorResponseBody, ErrorResponseLayer},
    gate::SettlingBody,
    sigv4::SigV4Layer,
    BedrockThrottleLayer, BoxError, ThrottleConfig,
};
use http::{header::AUTHORIZATION, HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};

use crate::config::{GatewayConfig, UpstreamAuth};

/// The whole stack a forwarded request goes through; it never fails.
pub type Stack = BoxCloneSyncService<
    Request<Body>,
    Response<ErrorResponseBody<SettlingBody<Incoming>>>,
    Infallible,
>;

/// The client below the throttle: credentials and transport.
type Authenticated = BoxCloneSyncService<Request<Body>, Response<Incoming>, BoxError>;

/// The HTTP client: HTTPS to Bedrock, plain HTTP to an emulator or a local proxy.
type Transport = BoxCloneSyncService<Request<Body>, Response<Incoming>, BoxError>;

/// How to reach Bedrock.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// `https://bedrock-runtime.{region}.amazonaws.com`, or the emulator's URL.
    pub endpoint: String,
    auth: Auth,
}

#[derive(Clone, Debug)]
enum Auth {
    SigV4(SigV4Layer),
    ApiKey(HeaderValue),
}

impl Upstream {
    /// Real Bedrock, with the credentials the configuration asks for: the default AWS
    /// chain for SigV4, or `AWS_BEARER_TOKEN_BEDROCK`.
    pub async fn from_config(config: &GatewayConfig) -> Result<Self, BoxError> {
        match config.upstream_auth {
            UpstreamAuth::Sigv4 => {
                let layer = SigV4Layer::from_default_chain().await?;
                Ok(Self::sigv4(config.endpoint(), layer.region(&config.region)))
            }
            UpstreamAuth::ApiKey => {
                let key = std::env::var("AWS_BEARER_TOKEN_BEDROCK").map_err(|_| {
                    "upstream_auth is api-key but AWS_BEARER_TOKEN_BEDROCK is not set"
                })?;
                Self::api_key(config.endpoint(), &key)
            }
        }
    }

    /// `endpoint`, with each attempt signed by `layer`.
    pub fn sigv4(endpoint: String, layer: SigV4Layer) -> Self {
        Self {
            endpoint,
            auth: Auth::SigV4(layer),
        }
    }

    /// `endpoint`, with the gateway's own Bedrock API key on every request.
    pub fn api_key(endpoint: String, key: &str) -> Result<Self, BoxError> {
        let mut value = HeaderValue::try_from(format!("Bearer {key}"))?;
        value.set_sensitive(true);
        Ok(Self {
            endpoint,
            auth: Auth::ApiKey(value),
        })
    }

    /// The crate's emulator on loopback, enforcing the quotas the configuration names, as
    /// if they were the account's. It insists on an `Authorization` header, as Bedrock
    /// does, and the gateway signs with SigV4 with made-up credentials, which the emulator
    /// accepts without checking them.
    pub async fn emulated(config: &GatewayConfig) -> Result<(Self, EmulatorHandle), BoxError> {
        let emulated = |q: &crate::config::QuotaConfig| EmulatedQuota {
            rpm: q.rpm.map(u64::from),
            tpm: q.tpm,
            tpd: None,
            period: Duration::from_secs(q.period_secs),
        };
        let mut builder = Emulator::builder()
            .require_authorization(true)
            .latency(LatencyModel {
                first_token: Duration::from_millis(150),
                per_output_token: Duration::from_millis(2),
            })
            .output_tokens(OutputLength::Uniform { min: 20, max: 200 })
            .stream_chunk_tokens(8);
        if let Some(quota) = &config.default_quota {
            builder = builder.default_quota(emulated(quota));
        }
        for (model, quota) in &config.models {
            builder = builder.model_quota(model, emulated(quota));
        }
        let emulator = builder.spawn().await?;
        let credentials = aws_credential_types::Credentials::new(
            "AKIDEMULATOR",
            "emulator-secret",
            None,
            None,
            "gateway --emulator",
        );
        let layer = SigV4Layer::new(credentials).region(&config.region);
        Ok((Self::sigv4(emulator.endpoint_url(), layer), emulator))
    }

    /// The stack for `throttle`'s quotas.
    pub fn stack(&self, throttle: &ThrottleConfig) -> Result<Stack, BoxError> {
        let transport = self.transport()?;
        let authenticated: Authenticated = match &self.auth {
            // Below the throttle, so each attempt is signed when it is sent.
            Auth::SigV4(layer) => BoxCloneSyncService::new(
                ServiceBuilder::new()
                    .layer(layer.clone())
                    .service(transport),
            ),
            Auth::ApiKey(value) => {
                let value = value.clone();
                BoxCloneSyncService::new(ServiceBuilder::new().service(transport).map_request(
                    move |mut request: Request<Body>| {
                        request.headers_mut().insert(AUTHORIZATION, value.clone());
                        request
                    },
                ))
            }
        };
        Ok(BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(ErrorResponseLayer::new())
                .layer(BedrockThrottleLayer::new(throttle.clone()))
                .service(authenticated),
        ))
    }

    /// HTTPS with the system's root certificates for an `https://` endpoint; plain HTTP,
    /// with no certificates to load, for an emulator or a proxy on the same host.
    fn transport(&self) -> Result<Transport, BoxError> {
        let builder = Client::builder(TokioExecutor::new());
        Ok(if self.endpoint.starts_with("https://") {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()?
                .https_only()
                .enable_http1()
                .build();
            BoxCloneSyncService::new(builder.build(connector).map_err(BoxError::from))
        } else {
            BoxCloneSyncService::new(builder.build_http().map_err(BoxError::from))
        })
    }
}
