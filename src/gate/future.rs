use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::Buf;
use http::{
    header::{CONTENT_LENGTH, CONTENT_TYPE},
    response::Parts,
    HeaderValue, Request, Response, StatusCode,
};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{
    body::StreamSettle,
    stream::{FrameReader, StreamException},
    throttle_read::ThrottleRead,
    SettlingBody,
};
use crate::{
    config::Shared,
    diagnosis::KeyRecord,
    ledger::{Acquire, Reservation},
    usage, BoxError, QuotaKey, ThrottleError, ThrottleKind,
};

/// How reported usage turns into a charge, and what the estimator may learn from it.
#[derive(Debug)]
pub(crate) struct Terms {
    pub(super) burndown: f64,
    /// Output quota tokens reserved: the output limit times the burndown.
    pub(super) reserved_output: u64,
    /// Where demand, grant and throttles of the key are counted.
    pub(super) record: Arc<KeyRecord>,
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
        terms.record.granted(reservation.tokens());
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
        let used_output = (usage.output_tokens as f64 * self.terms.burndown).ceil() as u64;
        self.terms
            .record
            .output(self.terms.reserved_output, used_output);
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

    /// Upstream throttled after it had started: the reservation is kept (Bedrock charges
    /// what was generated, and the throttle empties the key's buckets anyway), and the key
    /// slows down.
    pub(super) fn throttled(self, kind: ThrottleKind) {
        self.terms.record.throttled(kind);
        self.reservation.throttled(false, kind);
    }

    /// Upstream refused before running (a 429): the reservation comes back at once, and
    /// the budget `kind` names slows down.
    pub(super) fn refused(self, kind: ThrottleKind) {
        self.terms.record.throttled(kind);
        self.reservation.throttled(true, kind);
    }
}

/// Read-ahead of an event stream beyond this many bytes stops waiting for a whole first
/// frame: the response goes to the caller as it is.
const MAX_PREFETCH: usize = 1 << 20;

pin_project! {
    /// Response future of [`Gate`](super::Gate): waits for room, calls the inner service,
    /// settles the reservation. For a 2xx event stream it also waits for the first frame,
    /// and turns an exception there into the equivalent error response.
    pub struct ResponseFuture<S, B, ResB>
    where
        S: Service<Request<B>>,
        ResB: Body,
    {
        #[pin]
        state: State<S::Future, Prefetch<ResB>, ThrottleRead<ResB>>,
        parked: Option<Parked<S, B>>,
        charge: Option<Charge>,
        error: Option<ThrottleError>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, P, T> {
        Waiting { #[pin] acquire: Acquire },
        Calling { #[pin] future: F },
        Prefetching { prefetch: Option<P> },
        // A 429 whose body is read to tell which limit it hit.
        ReadingThrottle { read: Option<T> },
        Failed,
    }
}

/// A 2xx event stream whose first frame is being read before the head goes to the caller.
struct Prefetch<R: Body> {
    parts: Parts,
    body: Pin<Box<R>>,
    frames: VecDeque<Result<Frame<R::Data>, R::Error>>,
    bytes: usize,
    ended: bool,
    settle: StreamSettle,
}

impl<R: Body> Prefetch<R> {
    /// Reads until the first whole frame (or the end, an error, an unreadable stream).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.settle.reader.frames() == 0
            && !self.settle.reader.disabled()
            && self.bytes <= MAX_PREFETCH
        {
            match ready!(self.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let chunk = data.chunk();
                        if chunk.len() == data.remaining() {
                            self.settle.reader.feed(chunk);
                        } else {
                            self.settle.reader.disable();
                        }
                        self.bytes += data.remaining();
                    }
                    self.frames.push_back(Ok(frame));
                }
                Some(Err(e)) => {
                    self.frames.push_back(Err(e));
                    self.settle.reader.disable();
                    self.ended = true;
                }
                None => {
                    self.settle.reader.disable();
                    self.ended = true;
                }
            }
        }
        Poll::Ready(())
    }

    /// The response for the caller: the stream as it came, or, when an exception frame
    /// arrived before anything was passed on, the equivalent error response.
    fn finish(mut self) -> Response<SettlingBody<R>> {
        if let Some(exception) = self.settle.reader.take_exception() {
            if let Some((status, error_type)) = error_for(&exception) {
                let mut parts = self.parts;
                parts.status = status;
                parts.headers.remove(CONTENT_LENGTH);
                parts
                    .headers
                    .insert("x-amzn-errortype", HeaderValue::from_static(error_type));
                let charge = self.settle.charge;
                let kind = ThrottleKind::from_message(&exception.message);
                parts.extensions.insert(FirstFrameException {
                    message: exception.message,
                });
                let response = if status == StatusCode::TOO_MANY_REQUESTS {
                    parts.extensions.insert(kind);
                    charge.refused(kind);
                    Response::from_parts(parts, ())
                } else {
                    let response = Response::from_parts(parts, ());
                    let _ = settle_head(charge, &response);
                    response
                };
                let body = SettlingBody::prefetched(self.body, self.frames, true, None);
                return response.map(|()| body);
            }
            // Not retryable: it goes to the caller in the stream, as Bedrock sent it.
            self.settle.reader.disable();
        }
        let settle = if self.ended {
            None // ended without usage: the whole reservation is kept
        } else {
            self.settle.absorb()
        };
        let body = SettlingBody::prefetched(self.body, self.frames, self.ended, settle);
        Response::from_parts(self.parts, body)
    }
}

/// Marks an error response the gate made from an event stream's first-frame exception, with
/// the exception's message: the AWS SDK wrapper gives it the JSON body of Bedrock's own
/// error responses, which the SDK needs to read the error.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "aws-sdk"), allow(dead_code))]
pub(crate) struct FirstFrameException {
    pub(crate) message: String,
}

/// The HTTP error a stream's first-frame exception stands for, when it is one the retry
/// layer retries.
fn error_for(e: &StreamException) -> Option<(StatusCode, &'static str)> {
    let k = e.kind.as_str();
    if k.eq_ignore_ascii_case("throttlingException") {
        Some((StatusCode::TOO_MANY_REQUESTS, "ThrottlingException"))
    } else if k.eq_ignore_ascii_case("serviceUnavailableException") {
        Some((
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
        ))
    } else if k.eq_ignore_ascii_case("internalServerException") {
        Some((StatusCode::INTERNAL_SERVER_ERROR, "InternalServerException"))
    } else {
        None
    }
}

fn is_event_stream<B>(response: &Response<B>) -> bool {
    response.status().is_success()
        && response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/vnd.amazon.eventstream"))
}

/// A request waiting for admission, with the ready service that will send it.
struct Parked<S, B> {
    service: S,
    request: Request<B>,
    terms: Terms,
}

impl<S, B> Unpin for Parked<S, B> {}

impl<S, B, ResB> ResponseFuture<S, B, ResB>
where
    S: Service<Request<B>>,
    ResB: Body,
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

impl<S, B, ResB> Future for ResponseFuture<S, B, ResB>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body,
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
                    if is_event_stream(&response) {
                        if let Some(charge) = this.charge.take() {
                            let (parts, body) = response.into_parts();
                            this.state.set(State::Prefetching {
                                prefetch: Some(Prefetch {
                                    parts,
                                    body: Box::pin(body),
                                    frames: VecDeque::new(),
                                    bytes: 0,
                                    ended: false,
                                    settle: StreamSettle {
                                        charge,
                                        reader: FrameReader::new(),
                                    },
                                }),
                            });
                            continue;
                        }
                    }
                    if response.status() == StatusCode::TOO_MANY_REQUESTS {
                        if let Some(charge) = this.charge.take() {
                            let read = ThrottleRead::new(response, charge);
                            this.state.set(State::ReadingThrottle { read: Some(read) });
                            continue;
                        }
                    }
                    let settle_from_body =
                        this.charge.take().and_then(|c| settle_head(c, &response));
                    return Poll::Ready(Ok(
                        response.map(|b| SettlingBody::new(b, settle_from_body))
                    ));
                }
                StateProj::Prefetching { prefetch } => {
                    ready!(prefetch.as_mut().expect("prefetching").poll(cx));
                    let prefetch = prefetch.take().expect("prefetching");
                    this.state.set(State::Failed); // polling again panics, as for any future
                    return Poll::Ready(Ok(prefetch.finish()));
                }
                StateProj::ReadingThrottle { read } => {
                    ready!(read.as_mut().expect("reading a throttle").poll(cx));
                    let read = read.take().expect("reading a throttle");
                    this.state.set(State::Failed);
                    return Poll::Ready(Ok(read.finish()));
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
        // Refused before running, its body unread: the reservation comes back at once, and
        // both budgets slow. (The response future reads a 429's body to tell which.)
        StatusCode::TOO_MANY_REQUESTS => charge.refused(ThrottleKind::Unknown),
        StatusCode::BAD_REQUEST
        | StatusCode::FORBIDDEN
        | StatusCode::NOT_FOUND
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::SERVICE_UNAVAILABLE => charge.refund(),
        _ => {}
    }
    None
}

impl<S, B, ResB> std::fmt::Debug for ResponseFuture<S, B, ResB>
where
    S: Service<Request<B>>,
    ResB: Body,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("charge", &self.charge)
            .finish_non_exhaustive()
    }
}
