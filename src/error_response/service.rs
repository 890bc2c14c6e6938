//! The service that answers its inner service's errors as Bedrock's error responses.

use std::{
    convert::Infallible,
    task::{ready, Context, Poll},
};

use http::{Request, Response};
use tower_service::Service;

use super::{ErrorResponseBody, ResponseFuture};
use crate::BoxError;

/// Answers every error of `S` with the response Bedrock would send, so it never fails.
/// See the [module docs](super).
#[derive(Debug)]
pub struct ErrorResponse<S> {
    inner: S,
    /// An error from the inner `poll_ready`, answered to the next request.
    not_ready: Option<BoxError>,
}

impl<S: Clone> Clone for ErrorResponse<S> {
    fn clone(&self) -> Self {
        // The error belongs to the request this one was made ready for.
        Self::new(self.inner.clone())
    }
}

impl<S> ErrorResponse<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            not_ready: None,
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for ErrorResponse<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ErrorResponseBody<ResB>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.not_ready.is_none() {
            if let Err(e) = ready!(self.inner.poll_ready(cx)) {
                self.not_ready = Some(e.into());
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        match self.not_ready.take() {
            Some(error) => ResponseFuture::failed(error),
            None => ResponseFuture::called(self.inner.call(request)),
        }
    }
}
