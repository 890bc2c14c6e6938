use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{header::CONTENT_TYPE, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::SettlingBody;
use crate::{
    config::Shared,
    ledger::{Acquire, Reservation},
    usage, BoxError, QuotaKey, ThrottleError,
};

/// How reported usage turns into a charge, and what the estimator may learn from it.
#[derive(Debug)]
pub(crate) struct Terms {
    pub(super) burndown: f64,
    pub(super) learn: Option<Learn>,
}

/// The estimator's raw input count for a model, to compare with the reported one.
#[derive(Debug)]
pub(crate) struct Learn {
    pub(super) shared: Arc<Shared>,
    pub(super) model: QuotaKey,
    pub(super) raw_input: u64,
}

/// A reservation and the terms of its settlement.
#[derive(Debug)]
pub(crate) struct Charge {
    reservation: Reservation,
    terms: Terms,
}

impl Charge {
    pub(super) fn new(reservation: Reservation, terms: Terms) -> Self {
        Self { reservation, terms }
    }

    pub(super) fn settle_usage(self, usage: usage::Usage) {
        if let Some(l) = &self.terms.learn {
            if let Some(model) = l.model.model() {
                let actual_input = usage.input_tokens
                    + usage.cache_read_input_tokens
                    + usage.cache_write_input_tokens;
                l.shared
                    .calibration
                    .observe(model, l.raw_input, actual_input);
            }
        }
        let actual = usage.charge(self.terms.burndown);
        tracing::trace!(
            quota_key = %self.reservation.ledger().key(),
            reserved = self.reservation.tokens(),
            actual,
            "settled"
        );
        self.reservation.settle(actual);
    }

    fn refund(self) {
        self.reservation.settle(0);
    }
}

pin_project! {
    /// Response future of [`Gate`](super::Gate): waits for room, calls the inner service,
    /// settles the reservation.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        parked: Option<Parked<S, B>>,
        charge: Option<Charge>,
        error: Option<ThrottleError>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Waiting { #[pin] acquire: Acquire },
        Calling { #[pin] future: F },
        Failed,
    }
}

/// A request waiting for admission, with the ready service that will send it.
struct Parked<S, B> {
    service: S,
    request: Request<B>,
    terms: Terms,
}

impl<S, B> Unpin for Parked<S, B> {}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(super) fn calling(future: S::Future, charge: Option<Charge>) -> Self {
        Self {
            state: State::Calling { future },
            parked: None,
            charge,
            error: None,
        }
    }

    pub(super) fn waiting(acquire: Acquire, service: S, request: Request<B>, terms: Terms) -> Self {
        Self {
            state: State::Waiting { acquire },
            parked: Some(Parked {
                service,
                request,
                terms,
            }),
            charge: None,
            error: None,
        }
    }

    pub(super) fn failed(error: ThrottleError) -> Self {
        Self {
            state: State::Failed,
            parked: None,
            charge: None,
            error: Some(error),
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<SettlingBody<ResB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { acquire } => {
                    let reservation = ready!(acquire.poll(cx))?;
                    let Parked {
                        mut service,
                        request,
                        terms,
                    } = this.parked.take().expect("parked request");
                    *this.charge = Some(Charge::new(reservation, terms));
                    let future = service.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    let settle_from_body =
                        this.charge.take().and_then(|c| settle_head(c, &response));
                    return Poll::Ready(Ok(
                        response.map(|b| SettlingBody::new(b, settle_from_body))
                    ));
                }
                StateProj::Failed => {
                    let error = this.error.take().expect("polled after completion");
                    return Poll::Ready(Err(error.into()));
                }
            }
        }
    }
}

/// Settles what the response head tells; hands the charge on when the body must tell.
fn settle_head<B>(charge: Charge, response: &Response<B>) -> Option<Charge> {
    let status = response.status();
    if status.is_success() {
        if let Some(u) = usage::from_headers(response.headers()) {
            charge.settle_usage(u);
            return None;
        }
        let json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        // Streams and unknown bodies keep the whole reservation.
        return json.then_some(charge);
    }
    match status {
        StatusCode::TOO_MANY_REQUESTS => {
            let ledger = charge.reservation.ledger().clone();
            charge.refund();
            ledger.throttled();
        }
        StatusCode::BAD_REQUEST
        | StatusCode::FORBIDDEN
        | StatusCode::NOT_FOUND
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::SERVICE_UNAVAILABLE => charge.refund(),
        _ => {}
    }
    None
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("charge", &self.charge)
            .finish_non_exhaustive()
    }
}
