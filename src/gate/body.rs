//! The gate's response body, which settles the reservation from the usage passing through.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::settle::{BodyUsage, Charge};
use crate::bedrock::{event_stream::FrameReader, sse::SseReader, usage};

/// JSON bodies larger than this are passed on without looking for usage.
const MAX_USAGE_BODY: usize = 4 << 20;

pin_project! {
    /// The response body of [`Gate`](super::Gate): passes every frame through unchanged and
    /// settles the reservation from the usage it reads on the way: at the end of a JSON body
    /// whose head carried no usage, in the last frames of an event stream
    /// (`application/vnd.amazon.eventstream`), or in the last chunk of a streamed Chat
    /// Completions answer (`text/event-stream`). See the [module docs](super#charging).
    ///
    /// For an event stream the gate has already read the first frame (to retry an exception
    /// that arrives before any byte reached the caller); this body yields those frames first,
    /// exactly as they came, then the rest of the stream.
    pub struct SettlingBody<B>
    where
        B: Body,
    {
        #[pin]
        inner: Inner<B>,
        // Frames the gate read ahead; yielded before the inner body is polled again.
        prefix: VecDeque<Result<Frame<B::Data>, B::Error>>,
        // The inner body is not polled again (it ended, or the gate replaced the response).
        inner_done: bool,
        settle: Settle,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        Direct { #[pin] body: B },
        // An event stream whose first frame the response future read: it had to be pinned
        // before the body was handed over.
        Boxed { body: Pin<Box<B>> },
    }
}

/// What the body still has to settle.
#[derive(Debug)]
enum Settle {
    Nothing,
    Json { charge: Charge, buf: Vec<u8> },
    Stream(StreamSettle),
    ServerSentEvents { charge: Charge, reader: SseReader },
}

/// An event stream's pending settlement and the reader that looks for its usage.
#[derive(Debug)]
pub(crate) struct StreamSettle {
    pub(crate) charge: Charge,
    pub(crate) reader: FrameReader,
}

impl StreamSettle {
    /// Acts on what the reader found; returns `None` once nothing is left to settle.
    pub(crate) fn absorb(mut self) -> Option<Self> {
        if let Some(u) = self.reader.take_usage() {
            self.charge.settle_usage(u);
            return None;
        }
        if let Some(e) = self.reader.take_exception() {
            // After bytes reached the caller the exception passes on unchanged; the
            // reservation is kept, and a throttle still slows the gate down.
            if e.is_throttling() {
                self.charge
                    .throttled(crate::ThrottleKind::from_message(&e.message));
            }
            return None;
        }
        // An unreadable stream keeps its whole reservation.
        (!self.reader.disabled()).then_some(self)
    }
}

impl<B: Body> SettlingBody<B> {
    pub(crate) fn new(inner: B, charge: Option<(Charge, BodyUsage)>) -> Self {
        Self {
            inner: Inner::Direct { body: inner },
            prefix: VecDeque::new(),
            inner_done: false,
            settle: match charge {
                Some((charge, BodyUsage::Json)) => Settle::Json {
                    charge,
                    buf: Vec::new(),
                },
                Some((charge, BodyUsage::ServerSentEvents)) => Settle::ServerSentEvents {
                    charge,
                    reader: SseReader::new(),
                },
                None => Settle::Nothing,
            },
        }
    }

    /// An event stream the response future has read the start of: `prefix` comes first.
    pub(crate) fn prefetched(
        inner: Pin<Box<B>>,
        prefix: VecDeque<Result<Frame<B::Data>, B::Error>>,
        inner_done: bool,
        settle: Option<StreamSettle>,
    ) -> Self {
        Self {
            inner: Inner::Boxed { body: inner },
            prefix,
            inner_done,
            settle: settle.map_or(Settle::Nothing, Settle::Stream),
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        match &self.inner {
            Inner::Direct { body } => body,
            Inner::Boxed { body } => body,
        }
    }

    /// Whether unwrapping would lose something: usage still to read, or frames read ahead.
    #[cfg_attr(not(feature = "aws-sdk"), allow(dead_code))]
    pub(crate) fn is_settling(&self) -> bool {
        !matches!(self.settle, Settle::Nothing) || matches!(self.inner, Inner::Boxed { .. })
    }

    /// Unwraps the body; a settlement still pending keeps the whole reservation. For an
    /// event stream, the frames the gate read ahead are not in it.
    pub fn into_inner(self) -> B
    where
        B: Unpin,
    {
        match self.inner {
            Inner::Direct { body } => body,
            Inner::Boxed { body } => *Pin::into_inner(body),
        }
    }
}

impl<B: Body> Body for SettlingBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(frame) = this.prefix.pop_front() {
            return Poll::Ready(Some(frame));
        }
        if *this.inner_done {
            return Poll::Ready(None);
        }
        let (frame, end) = match this.inner.project() {
            InnerProj::Direct { mut body } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                (frame, body.is_end_stream())
            }
            InnerProj::Boxed { body } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                (frame, body.is_end_stream())
            }
        };
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    observe(this.settle, data);
                }
                if end {
                    finish(this.settle);
                }
            }
            // An error or an end without usage keeps the whole reservation.
            Some(Err(_)) => *this.settle = Settle::Nothing,
            None => finish(this.settle),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        if !self.prefix.is_empty() {
            return false;
        }
        self.inner_done || self.get_ref().is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let prefix: u64 = self
            .prefix
            .iter()
            .filter_map(|f| f.as_ref().ok()?.data_ref())
            .map(|d| d.remaining() as u64)
            .sum();
        if self.inner_done {
            return SizeHint::with_exact(prefix);
        }
        let inner = self.get_ref().size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + prefix);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + prefix);
        }
        hint
    }
}

/// Reads one data frame on its way to the caller (in place: this runs for every frame).
fn observe(settle: &mut Settle, data: &impl Buf) {
    let chunk = data.chunk();
    let whole = chunk.len() == data.remaining();
    match settle {
        Settle::Nothing => {}
        Settle::Json { buf, .. } => {
            if whole && buf.len() + chunk.len() <= MAX_USAGE_BODY {
                buf.extend_from_slice(chunk);
            } else {
                *settle = Settle::Nothing; // unreadable: keep the reservation
            }
        }
        Settle::ServerSentEvents { reader, .. } => {
            if whole {
                reader.feed(chunk);
            } else {
                reader.disable();
            }
            if reader.has_news() || reader.disabled() {
                if let Settle::ServerSentEvents { charge, mut reader } =
                    std::mem::replace(settle, Settle::Nothing)
                {
                    // An unreadable stream keeps its whole reservation.
                    if let Some(u) = reader.take_usage() {
                        charge.settle_usage(u);
                    }
                }
            }
        }
        Settle::Stream(s) => {
            if whole {
                s.reader.feed(chunk);
            } else {
                s.reader.disable();
            }
            if s.reader.has_news() {
                if let Settle::Stream(s) = std::mem::replace(settle, Settle::Nothing) {
                    if let Some(s) = s.absorb() {
                        *settle = Settle::Stream(s);
                    }
                }
            }
        }
    }
}

/// The body ended: a JSON body settles from its usage; anything else (a stream that ended
/// without usage) keeps the reservation.
fn finish(settle: &mut Settle) {
    if let Settle::Json { charge, buf } = std::mem::replace(settle, Settle::Nothing) {
        if let Some(u) = usage::from_json(&buf) {
            charge.settle_usage(u);
        }
    }
}

impl<B: Body> std::fmt::Debug for SettlingBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = match self.settle {
            Settle::Nothing => "nothing",
            Settle::Json { .. } => "json",
            Settle::Stream(_) => "event stream",
            Settle::ServerSentEvents { .. } => "server-sent events",
        };
        f.debug_struct("SettlingBody")
            .field("pending", &pending)
            .field("prefix_frames", &self.prefix.len())
            .finish_non_exhaustive()
    }
}
