//! The response future of [`SigV4`](super::SigV4).

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use http::Request;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::SignError;
use crate::BoxError;

/// Signing one request: boxed, as the credentials provider's future borrows the provider.
pub(super) type Signing<B> = Pin<Box<dyn Future<Output = Result<Request<B>, SignError>> + Send>>;

pin_project! {
    /// Response future of [`SigV4`](super::SigV4): signs the request, then calls the inner
    /// service.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Signing { signing: Signing<B>, inner: Option<S> },
        Calling { #[pin] future: S::Future },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(super) fn signing(signing: Signing<B>, inner: S) -> Self {
        Self {
            state: State::Signing {
                signing,
                inner: Some(inner),
            },
        }
    }

    pub(super) fn calling(future: S::Future) -> Self {
        Self {
            state: State::Calling { future },
        }
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Signing { signing, inner } => {
                    let request = ready!(signing.as_mut().poll(cx))?;
                    let mut inner = inner.take().expect("polled after completion");
                    let future = inner.call(request);
                    state.set(State::Calling { future });
                }
                StateProj::Calling { future } => return future.poll(cx).map_err(Into::into),
            }
        }
    }
}
