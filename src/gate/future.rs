use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
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
    admit::{Entered, Parked},
    body::StreamSettle,
    settle::{settle_head, Charge},
    stream::{FrameReader, StreamException},
    throttle_read::ThrottleRead,
    SettlingBody,
};
use crate::{ledger::Acquire, telemetry::Trace, BoxError, ThrottleError, ThrottleKind};

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
        trace: Trace,
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

impl<S, B, ResB> ResponseFuture<S, B, ResB>
where
    S: Service<Request<B>>,
    ResB: Body,
{
    pub(super) fn new(entered: Entered<S, B>, trace: Trace) -> Self {
        let (state, parked, charge, error) = match entered {
            Entered::Calling(future, charge, _) => (State::Calling { future }, None, charge, None),
            Entered::Waiting(acquire, parked) => {
                (State::Waiting { acquire }, Some(parked), None, None)
            }
            Entered::Failed(error) => (State::Failed, None, None, Some(error)),
        };
        Self {
            state,
            parked,
            charge,
            error,
            trace,
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
                StateProj::Waiting { acquire } => {
                    let reservation = match ready!(acquire.poll(cx)) {
                        Ok(r) => r,
                        Err(e) => {
                            let e = e.into();
                            this.trace.error(&e);
                            return Poll::Ready(Err(e));
                        }
                    };
                    let parked = this.parked.take().expect("parked request");
                    match parked.admitted(reservation) {
                        Entered::Calling(future, charge, wait) => {
                            this.trace.waited(wait);
                            *this.charge = charge;
                            this.state.set(State::Calling { future });
                        }
                        Entered::Waiting(acquire, parked) => {
                            *this.parked = Some(parked);
                            this.state.set(State::Waiting { acquire });
                        }
                        Entered::Failed(error) => {
                            this.state.set(State::Failed);
                            let e = error.into();
                            this.trace.error(&e);
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                StateProj::Calling { future } => {
                    let response = match ready!(future.poll(cx)) {
                        Ok(r) => r,
                        Err(e) => {
                            let e = e.into();
                            this.trace.error(&e);
                            return Poll::Ready(Err(e));
                        }
                    };
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
                    this.trace.response(response.status());
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
                    let response = prefetch.finish();
                    this.trace.response(response.status());
                    return Poll::Ready(Ok(response));
                }
                StateProj::ReadingThrottle { read } => {
                    ready!(read.as_mut().expect("reading a throttle").poll(cx));
                    let read = read.take().expect("reading a throttle");
                    this.state.set(State::Failed);
                    let response = read.finish();
                    this.trace.response(response.status());
                    return Poll::Ready(Ok(response));
                }
                StateProj::Failed => {
                    let error = this.error.take().expect("polled after completion").into();
                    this.trace.error(&error);
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
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
