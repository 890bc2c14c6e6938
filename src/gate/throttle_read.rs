//! Reading a 429's body to learn which limit it names, without taking it from the caller.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Buf;
use http::{response::Parts, Response};
use http_body::{Body, Frame};

use super::{settle::Charge, SettlingBody};
use crate::ThrottleKind;

/// A throttle body larger than this is passed on unread (Bedrock's are under 100 bytes);
/// its class is then [`ThrottleKind::Unknown`].
pub(crate) const MAX_THROTTLE_BODY: usize = 64 << 10;

/// A 429 whose body is being read before the head goes to the caller.
pub(crate) struct ThrottleRead<R: Body> {
    pub(crate) parts: Parts,
    pub(crate) body: Pin<Box<R>>,
    pub(crate) frames: VecDeque<Result<Frame<R::Data>, R::Error>>,
    pub(crate) buf: Vec<u8>,
    /// The body could not be kept whole in `buf` (too large, or not in one piece).
    pub(crate) unreadable: bool,
    pub(crate) ended: bool,
    pub(crate) charge: Charge,
}

impl<R: Body> ThrottleRead<R> {
    pub(crate) fn new(response: Response<R>, charge: Charge) -> Self {
        let (parts, body) = response.into_parts();
        Self {
            parts,
            body: Box::pin(body),
            frames: VecDeque::new(),
            buf: Vec::new(),
            unreadable: false,
            ended: false,
            charge,
        }
    }

    /// Reads to the end of the body, an error, or the size cap.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while !self.ended && !self.unreadable {
            if self.body.is_end_stream() {
                self.ended = true;
                break;
            }
            match ready!(self.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let chunk = data.chunk();
                        if chunk.len() == data.remaining()
                            && self.buf.len() + chunk.len() <= MAX_THROTTLE_BODY
                        {
                            self.buf.extend_from_slice(chunk);
                        } else {
                            self.unreadable = true;
                        }
                    }
                    self.frames.push_back(Ok(frame));
                }
                Some(Err(e)) => {
                    self.frames.push_back(Err(e));
                    self.unreadable = true;
                    self.ended = true;
                }
                None => self.ended = true,
            }
        }
        Poll::Ready(())
    }

    /// Classifies the throttle, tells the ledger, and hands the caller the response with
    /// every byte read so far in front of the rest of the body.
    pub(crate) fn finish(mut self) -> Response<SettlingBody<R>> {
        let kind = if self.unreadable {
            ThrottleKind::Unknown
        } else {
            ThrottleKind::from_error_body(&self.buf)
        };
        self.charge.refused(kind);
        self.parts.extensions.insert(kind);
        let body = SettlingBody::prefetched(self.body, self.frames, self.ended, None);
        Response::from_parts(self.parts, body)
    }
}
