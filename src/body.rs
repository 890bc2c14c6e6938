//! Reading a request body once, within a limit.

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::{BoxError, ThrottleError};

pin_project! {
    /// Collects a body into one `Bytes`, failing with `BodyTooLarge` past `limit` and with
    /// `BodyTimeout` when it has not ended `timeout` after the first poll (a client that
    /// never finishes sending must not hold a place). A body of one `Bytes` chunk (`Full`, a
    /// buffered axum body) is returned without a copy.
    pub(crate) struct CollectBody<B> {
        #[pin]
        body: B,
        first: Option<Bytes>,
        rest: BytesMut,
        len: usize,
        limit: usize,
        timeout: Duration,
        // Armed on the first poll that finds the body not yet complete.
        #[pin]
        deadline: Option<Sleep>,
    }
}

impl<B: Body> CollectBody<B> {
    pub(crate) fn new(body: B, limit: usize, timeout: Duration) -> Self {
        Self {
            body,
            first: None,
            rest: BytesMut::new(),
            len: 0,
            limit,
            timeout,
            deadline: None,
        }
    }
}

impl<B> Future for CollectBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Bytes, ThrottleError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if this.body.size_hint().lower() > *this.limit as u64 {
            return Poll::Ready(Err(ThrottleError::BodyTooLarge { limit: *this.limit }));
        }
        loop {
            let frame = match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    if this.deadline.is_none() {
                        let sleep = tokio::time::sleep(*this.timeout);
                        this.deadline.set(Some(sleep));
                    }
                    let deadline = this.deadline.as_mut().as_pin_mut().expect("armed above");
                    ready!(deadline.poll(cx));
                    return Poll::Ready(Err(ThrottleError::BodyTimeout {
                        timeout: *this.timeout,
                    }));
                }
            };
            let Some(frame) = frame else {
                let bytes = match this.first.take() {
                    Some(first) if this.rest.is_empty() => first,
                    _ => std::mem::take(this.rest).freeze(),
                };
                return Poll::Ready(Ok(bytes));
            };
            let Ok(mut data) = frame
                .map_err(|e| ThrottleError::Body(e.into()))?
                .into_data()
            else {
                continue; // trailers: not part of the payload
            };
            let n = data.remaining();
            *this.len += n;
            if *this.len > *this.limit {
                return Poll::Ready(Err(ThrottleError::BodyTooLarge { limit: *this.limit }));
            }
            let chunk = data.copy_to_bytes(n);
            match this.first.take() {
                None if this.rest.is_empty() => *this.first = Some(chunk),
                first => {
                    if let Some(f) = first {
                        this.rest.extend_from_slice(&f);
                    }
                    this.rest.extend_from_slice(&chunk);
                }
            }
        }
    }
}

/// A copy of a request without its body, from which each attempt is rebuilt.
#[derive(Clone)]
pub(crate) struct RequestTemplate {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    extensions: http::Extensions,
}

/// Header values carry credentials and signatures: only their names are shown.
impl std::fmt::Debug for RequestTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTemplate")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl RequestTemplate {
    pub(crate) fn new(parts: http::request::Parts) -> Self {
        Self {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            extensions: parts.extensions,
        }
    }

    /// The quota key the request is charged to: the estimate's, else read from the head.
    pub(crate) fn quota_key(&self) -> crate::QuotaKey {
        self.extensions
            .get::<crate::estimate::TokenEstimate>()
            .and_then(|e| e.key().cloned())
            .unwrap_or_else(|| crate::QuotaKey::from_uri(&self.uri).0)
    }

    /// The request's send deadline, if it has one.
    pub(crate) fn send_deadline(&self) -> Option<crate::SendDeadline> {
        self.extensions.get().copied()
    }

    /// A request with a copy of the head and `body`.
    pub(crate) fn build<B: From<Bytes>>(&self, body: Bytes) -> http::Request<B> {
        let mut request = http::Request::new(B::from(body));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        *request.extensions_mut() = self.extensions.clone();
        request
    }

    /// The request itself, moving the head (for the last use).
    pub(crate) fn into_request<B: From<Bytes>>(self, body: Bytes) -> http::Request<B> {
        let mut request = http::Request::new(B::from(body));
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        *request.extensions_mut() = self.extensions;
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_template_debug_shows_no_header_value() {
        let (parts, ()) = http::Request::post("/model/m/invoke")
            .header("authorization", "AWS4-HMAC-SHA256 Signature=s3cr3t")
            .header("x-amz-security-token", "t0k3n")
            .body(())
            .unwrap()
            .into_parts();
        let shown = format!("{:?}", RequestTemplate::new(parts));
        assert!(shown.contains("authorization") && shown.contains("/model/m/invoke"));
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("t0k3n"),
            "{shown}"
        );
    }
}
