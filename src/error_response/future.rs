//! The response future of [`ErrorResponse`](super::ErrorResponse).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Either;
use pin_project_lite::pin_project;

use super::ErrorResponseBody;
use crate::{
    bedrock::errors::{error_response, SERVICE_UNAVAILABLE},
    BoxError, ThrottleError,
};

pin_project! {
    /// Response future of [`ErrorResponse`](super::ErrorResponse).
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F },
        Failed { error: Option<BoxError> },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn called(future: F) -> Self {
        Self {
            state: State::Called { future },
        }
    }

    pub(super) fn failed(error: BoxError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ErrorResponseBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let error = match self.project().state.project() {
            StateProj::Called { future } => match ready!(future.poll(cx)) {
                Ok(response) => return Poll::Ready(Ok(response.map(Either::Left))),
                Err(e) => e.into(),
            },
            StateProj::Failed { error } => error.take().expect("polled after completion"),
        };
        Poll::Ready(Ok(answer(&*error).map(Either::Right)))
    }
}

/// The response for `error`: its [`ThrottleError`]'s, else a 502.
fn answer(error: &(dyn std::error::Error + 'static)) -> Response<http_body_util::Full<Bytes>> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(throttle) = e.downcast_ref::<ThrottleError>() {
            return throttle.to_response();
        }
        source = e.source();
    }
    tracing::warn!(error = %error, "the service below failed: answered 502");
    error_response(
        StatusCode::BAD_GATEWAY,
        SERVICE_UNAVAILABLE,
        "upstream request failed",
        None,
    )
}
