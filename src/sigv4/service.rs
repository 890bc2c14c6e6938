//! The service that signs each request with SigV4.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use aws_credential_types::provider::ProvideCredentials;
use bytes::Bytes;
use http::Request;
use http_body::Body;
use http_body_util::BodyExt;
use tower_service::Service;

use super::{
    future::{ResponseFuture, Signing},
    layer::Settings,
    sign::{has_bearer_token, region_of_host, sign_request},
    SigV4Layer, SignError,
};
use crate::{BoxError, SendDeadline};

/// Signs each request with SigV4 before calling the inner service; see [`SigV4Layer`] and
/// the [module docs](super).
#[derive(Clone, Debug)]
pub struct SigV4<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> SigV4<S> {
    /// `inner`, signing as `layer` says.
    pub fn new(inner: S, layer: &SigV4Layer) -> Self {
        Self {
            inner,
            settings: layer.settings.clone(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for SigV4<S>
where
    S: Service<Request<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // A Bedrock API key is the whole authentication: nothing to sign, no time window.
        if has_bearer_token(request.headers()) {
            return ResponseFuture::calling(inner.call(request));
        }
        let signing: Signing<B> = Box::pin(sign_attempt(self.settings.clone(), request));
        ResponseFuture::signing(signing, inner)
    }
}

/// `request`, signed now: reads its body for the payload hash, gets credentials (the
/// provider caches them), signs, and gives the request the signature's [`SendDeadline`].
async fn sign_attempt<B>(
    settings: Arc<Settings>,
    request: Request<B>,
) -> Result<Request<B>, SignError>
where
    B: Body + From<Bytes>,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();
    let host = parts.uri.host().map(str::to_owned).or_else(|| {
        let header = parts.headers.get(http::header::HOST)?.to_str().ok()?;
        Some(header.split(':').next().unwrap_or(header).to_owned())
    });
    let region = host
        .as_deref()
        .and_then(region_of_host)
        .map(str::to_owned)
        .or_else(|| settings.region.clone())
        .ok_or_else(|| SignError::NoRegion { host: host.clone() })?;
    // Below the throttle the body is one buffered chunk: collecting it copies nothing.
    let body = body
        .collect()
        .await
        .map_err(|e| SignError::Body(e.into()))?
        .to_bytes();
    let credentials = settings
        .credentials
        .provide_credentials()
        .await
        .map_err(SignError::Credentials)?;
    let time = settings.time_source.now();
    sign_request(&mut parts, &body, credentials, &region, time)?;
    // The new signature's window replaces any earlier one's.
    parts
        .extensions
        .insert(SendDeadline::after(SendDeadline::SIGV4_WINDOW));
    Ok(Request::from_parts(parts, B::from(body)))
}
