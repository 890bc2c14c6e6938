//! The gate as a tower service: hands each request, with the service made ready for it, to
//! admission.

use std::{
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::PollSemaphore;
use tower_service::Service;

use super::{
    admit::{Entered, Plan},
    ResponseFuture, SettlingBody,
};
use crate::{config::Shared, telemetry::Trace, BoxError, ThrottleConfig};

/// Admits each request against its key's request and token budgets. See the
/// [module docs](super).
#[derive(Debug)]
pub struct Gate<S> {
    inner: S,
    shared: Arc<Shared>,
    /// Under `Overload::Backpressure`: the places of waiting requests, and the one
    /// `poll_ready` took for the next request.
    places: Option<PollSemaphore>,
    place: Option<OwnedSemaphorePermit>,
}

impl<S: Clone> Clone for Gate<S> {
    fn clone(&self) -> Self {
        // A clone has to be made ready on its own: the place stays with this one.
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            places: self.places.clone(),
            place: None,
        }
    }
}

impl<S> Gate<S> {
    /// Wraps `inner`, spending from `cfg`'s quotas.
    pub fn new(inner: S, cfg: ThrottleConfig) -> Self {
        Self::from_shared(inner, cfg.shared)
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        let places = shared.waiting_places.clone().map(PollSemaphore::new);
        Self {
            inner,
            shared,
            places,
            place: None,
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for Gate<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    ResB: http_body::Body,
{
    type Response = Response<SettlingBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReqB, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.place.is_none() {
            if let Some(places) = &mut self.places {
                // The semaphore is never closed.
                self.place = ready!(places.poll_acquire(cx));
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<ReqB>) -> Self::Future {
        let trace = Trace::attach(&mut request);
        let plan = Plan::new(&self.shared, &request, &trace);
        // The service `poll_ready` made ready goes with the request, also while it waits:
        // a clone would need readiness of its own, which a concurrency limit below could
        // not give while the ready ones sit idle.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // The waiting place `poll_ready` took goes with a request that reserves (it holds it
        // while it waits); any other gives it back now, or an unmetered call in flight (or
        // this service, never called again) would keep it from every other caller.
        let place = self.place.take();
        let entered = match plan {
            Plan::Unmetered => Entered::Calling(inner.call(request), None, Duration::ZERO),
            Plan::Refused(error) => Entered::Failed(error),
            Plan::Reserve(reserve) => reserve.enter(inner, request, place),
        };
        ResponseFuture::new(entered, trace, self.shared.settings.read_ahead_timeout)
    }
}
