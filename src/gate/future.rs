//! The gate's response future: the states of a request from its admission to its response head.

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use http::{
    header::{CONTENT_LENGTH, CONTENT_TYPE},
    response::Parts,
    HeaderValue, Request, Response, StatusCode,
};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{
    admit::{Entered, Parked},
    body::StreamSettle,
    read_ahead::ReadAhead,
    settle::{settle_head, settle_not_throttled, Charge},
    SettlingBody,
};
use crate::{
    bedrock::{
        classify::{classify, Outcome},
        errors::{error_type, exception_error},
        event_stream::{FrameReader, StreamException},
    },
    ledger::Acquire,
    telemetry::Trace,
    BoxError, ThrottleError, ThrottleKind,
};

/// Read-ahead of an event stream beyond this many bytes stops waiting for a whole first
/// frame: the response goes to the caller as it is.
const MAX_PREFETCH: usize = 1 << 20;

/// An error body larger than this is passed on unread (Bedrock's are under 100 bytes); a
/// throttle's class is then [`ThrottleKind::Unknown`].
const MAX_THROTTLE_BODY: usize = 64 << 10;

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
        state: State<S, B, ResB>,
        trace: Trace,
        // How long a read-ahead may hold the head back.
        read_ahead_timeout: Duration,
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateOwn]
    enum State<S, B, R>
    where
        S: Service<Request<B>>,
        R: Body,
    {
        /// Waiting for room under the tenant's cap or at the key.
        Waiting { #[pin] acquire: Acquire, parked: Option<Parked<S, B>> },
        /// Sent; the response settles `charge` (none when no quota applies).
        Calling { #[pin] future: S::Future, charge: Option<Charge> },
        /// A 2xx event stream whose first frame is read before the head goes to the caller.
        FirstFrame { ahead: ReadAhead<R>, settle: StreamSettle },
        /// An error whose body is read to tell whether it is a throttle, and which limit it
        /// hit.
        Throttled { ahead: ReadAhead<R>, charge: Charge },
        Failed { error: Option<ThrottleError> },
        Done,
    }
}

impl<S, B, R> State<S, B, R>
where
    S: Service<Request<B>>,
    R: Body,
{
    fn entered(entered: Entered<S, B>) -> Self {
        match entered {
            Entered::Calling(future, charge, _) => State::Calling { future, charge },
            Entered::Waiting(acquire, parked) => State::Waiting {
                acquire,
                parked: Some(parked),
            },
            Entered::Failed(error) => State::Failed { error: Some(error) },
        }
    }
}

impl<S, B, ResB> ResponseFuture<S, B, ResB>
where
    S: Service<Request<B>>,
    ResB: Body,
{
    pub(super) fn new(entered: Entered<S, B>, trace: Trace, read_ahead_timeout: Duration) -> Self {
        Self {
            state: State::entered(entered),
            trace,
            read_ahead_timeout,
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
        let _span = this.trace.entered();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { acquire, parked } => {
                    let reservation = match ready!(acquire.poll(cx)) {
                        Ok(r) => r,
                        Err(e) => {
                            let e = match parked.as_ref() {
                                Some(p) => p.timed_out(e),
                                None => e,
                            };
                            return Poll::Ready(Err(failed(this.trace, e)));
                        }
                    };
                    let parked = parked.take().expect("parked request");
                    let entered = parked.admitted(reservation);
                    if let Entered::Calling(_, _, wait) = &entered {
                        this.trace.waited(*wait);
                    }
                    this.state.set(State::entered(entered));
                }
                StateProj::Calling { future, charge } => {
                    let response = match ready!(future.poll(cx)) {
                        Ok(r) => r,
                        Err(e) => return Poll::Ready(Err(failed(this.trace, e))),
                    };
                    let Some(charge) = charge.take() else {
                        this.trace.response(response.status());
                        return Poll::Ready(Ok(response.map(|b| SettlingBody::new(b, None))));
                    };
                    if is_event_stream(&response) {
                        let timeout = *this.read_ahead_timeout;
                        let ahead = ReadAhead::new(response, MAX_PREFETCH, false, timeout);
                        let reader = FrameReader::new();
                        let settle = StreamSettle { charge, reader };
                        this.state.set(State::FirstFrame { ahead, settle });
                    } else if may_be_throttle(&response) {
                        let timeout = *this.read_ahead_timeout;
                        let ahead = ReadAhead::new(response, MAX_THROTTLE_BODY, true, timeout);
                        this.state.set(State::Throttled { ahead, charge });
                    } else {
                        this.trace.response(response.status());
                        let settle_from_body = settle_head(charge, &response);
                        return Poll::Ready(Ok(
                            response.map(|b| SettlingBody::new(b, settle_from_body))
                        ));
                    }
                }
                StateProj::FirstFrame { ahead, settle } => {
                    let reader = &mut settle.reader;
                    ready!(ahead.poll_read(cx, |chunk| {
                        match chunk {
                            Some(chunk) => reader.feed(chunk),
                            None => reader.disable(),
                        }
                        reader.frames() > 0 || reader.disabled()
                    }));
                    // Polling again panics, as for any future.
                    let StateOwn::FirstFrame { ahead, settle } =
                        this.state.as_mut().project_replace(State::Done)
                    else {
                        unreachable!("reading the first frame")
                    };
                    let response = first_frame_read(ahead, settle);
                    this.trace.response(response.status());
                    return Poll::Ready(Ok(response));
                }
                StateProj::Throttled { ahead, .. } => {
                    ready!(ahead.poll_read(cx, |_| false));
                    let StateOwn::Throttled { ahead, charge } =
                        this.state.as_mut().project_replace(State::Done)
                    else {
                        unreachable!("reading a throttle")
                    };
                    let response = throttle_read(ahead, charge);
                    this.trace.response(response.status());
                    return Poll::Ready(Ok(response));
                }
                StateProj::Failed { error } => {
                    let error = error.take().expect("polled after completion");
                    return Poll::Ready(Err(failed(this.trace, error)));
                }
                StateProj::Done => panic!("polled after completion"),
            }
        }
    }
}

/// Records the request's failure; the error for the caller.
fn failed(trace: &Trace, error: impl Into<BoxError>) -> BoxError {
    let error = error.into();
    trace.error(&error);
    error
}

/// The response for the caller once a 2xx event stream's first frame was read (or the
/// read gave up): the stream as it came, or, when an exception frame arrived before
/// anything was passed on, the equivalent error response.
fn first_frame_read<R: Body>(
    ahead: ReadAhead<R>,
    mut settle: StreamSettle,
) -> Response<SettlingBody<R>> {
    let ended = ahead.ended();
    if ended {
        settle.reader.disable();
    }
    if ahead.timed_out() {
        tracing::debug!(
            "no whole first frame within read_ahead_timeout: the stream goes on as it is"
        );
    }
    if let Some(exception) = settle.reader.take_exception() {
        if let Some((status, error_type)) = exception_error(&exception.kind) {
            let (parts, body, frames) = ahead.into_parts();
            let response = exception_response(parts, status, error_type, exception, settle.charge);
            // The head was replaced: the stream ends with the exception frame.
            let body = SettlingBody::prefetched(body, frames, true, None);
            return response.map(|()| body);
        }
        // Not retryable: it goes to the caller in the stream, as Bedrock sent it.
        settle.reader.disable();
    }
    let settle = if ended {
        None // ended without usage: the whole reservation is kept
    } else {
        settle.absorb()
    };
    let (parts, body, frames) = ahead.into_parts();
    Response::from_parts(parts, SettlingBody::prefetched(body, frames, ended, settle))
}

/// Turns a 2xx event stream's head into the error `exception` stands for, and settles the
/// charge as that error.
fn exception_response(
    mut parts: Parts,
    status: StatusCode,
    error_type: &'static str,
    exception: StreamException,
    charge: Charge,
) -> Response<()> {
    parts.status = status;
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert("x-amzn-errortype", HeaderValue::from_static(error_type));
    let kind = ThrottleKind::from_message(&exception.message);
    parts.extensions.insert(FirstFrameException {
        message: exception.message,
    });
    if status == StatusCode::TOO_MANY_REQUESTS {
        parts.extensions.insert(kind);
        charge.refused(kind);
        Response::from_parts(parts, ())
    } else {
        let response = Response::from_parts(parts, ());
        let _ = settle_head(charge, &response);
        response
    }
}

/// Whether an error response's body must be read to settle it: its head reads as a throttle
/// (a 429 or a throttling `x-amzn-errortype`), or it is a JSON error without the header,
/// whose body's `code` or `__type` then tells (as the AWS SDK reads it).
fn may_be_throttle<B>(response: &Response<B>) -> bool {
    let (status, headers) = (response.status(), response.headers());
    if status.is_success() {
        return false;
    }
    classify(status, headers) == Outcome::Throttled
        || (error_type(headers).is_none() && status.as_u16() >= 400 && is_json(headers))
}

/// Whether a head says its body is JSON.
fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"))
}

/// The response for the caller once an error's body was read (or the read gave up): a
/// throttle by its code and status ([`ThrottleKind::from_response`]) is told to the ledger
/// with the limit its message names, which is set in the extensions; any other error
/// settles by its status. Every byte read goes first.
fn throttle_read<R: Body>(ahead: ReadAhead<R>, charge: Charge) -> Response<SettlingBody<R>> {
    if ahead.timed_out() {
        tracing::debug!("an error body stalled past read_ahead_timeout: its head decides");
    }
    let head = ahead.head();
    let kind = match ahead.kept() {
        Some(body) => ThrottleKind::from_response(head.status, &head.headers, body),
        None => (classify(head.status, &head.headers) == Outcome::Throttled)
            .then_some(ThrottleKind::Unknown),
    };
    match kind {
        Some(kind) => charge.refused(kind),
        None => settle_not_throttled(charge, head.status, &head.headers),
    }
    let ended = ahead.ended();
    let (mut parts, body, frames) = ahead.into_parts();
    if let Some(kind) = kind {
        parts.extensions.insert(kind);
    }
    Response::from_parts(parts, SettlingBody::prefetched(body, frames, ended, None))
}

/// Marks an error response the gate made from an event stream's first-frame exception, with
/// the exception's message: the AWS SDK wrapper gives it the JSON body of Bedrock's own
/// error responses, which the SDK needs to read the error.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "aws-sdk"), allow(dead_code))]
pub(crate) struct FirstFrameException {
    pub(crate) message: String,
}

/// Whether a response is a 2xx event stream (`application/vnd.amazon.eventstream`).
fn is_event_stream<B>(response: &Response<B>) -> bool {
    response.status().is_success()
        && response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/vnd.amazon.eventstream"))
}

impl<S, B, ResB> std::fmt::Debug for ResponseFuture<S, B, ResB>
where
    S: Service<Request<B>>,
    ResB: Body,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let charge = match &self.state {
            State::Calling { charge, .. } => charge.as_ref(),
            _ => None,
        };
        f.debug_struct("ResponseFuture")
            .field("charge", &charge)
            .finish_non_exhaustive()
    }
}
