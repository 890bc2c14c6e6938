use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::future::Charge;
use crate::usage;

/// JSON bodies larger than this are passed on without looking for usage.
const MAX_USAGE_BODY: usize = 4 << 20;

pin_project! {
    /// The response body of [`Gate`](super::Gate): passes every frame through unchanged and,
    /// for a JSON body whose head carried no usage, reads the usage at the end of the body
    /// to settle the reservation.
    pub struct SettlingBody<B> {
        #[pin]
        inner: B,
        pending: Option<PendingSettle>,
    }
}

#[derive(Debug)]
struct PendingSettle {
    charge: Charge,
    buf: Vec<u8>,
}

impl<B> SettlingBody<B> {
    pub(crate) fn new(inner: B, charge: Option<Charge>) -> Self {
        Self {
            inner,
            pending: charge.map(|charge| PendingSettle {
                charge,
                buf: Vec::new(),
            }),
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Whether the body still has usage to read before its reservation is settled.
    #[cfg_attr(not(feature = "aws-sdk"), allow(dead_code))]
    pub(crate) fn is_settling(&self) -> bool {
        self.pending.is_some()
    }

    /// Unwraps the body; a settlement still pending keeps the whole reservation.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for SettlingBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(p), Some(data)) = (this.pending.as_mut(), f.data_ref()) {
                    let chunk = data.chunk();
                    if chunk.len() == data.remaining()
                        && p.buf.len() + chunk.len() <= MAX_USAGE_BODY
                    {
                        p.buf.extend_from_slice(chunk);
                    } else {
                        *this.pending = None; // unreadable: keep the reservation
                    }
                }
                if this.inner.is_end_stream() {
                    finish(this.pending);
                }
            }
            Some(Err(_)) => *this.pending = None,
            None => finish(this.pending),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn finish(pending: &mut Option<PendingSettle>) {
    if let Some(p) = pending.take() {
        if let Some(u) = usage::from_json(&p.buf) {
            p.charge.settle_usage(u);
        }
    }
}

impl<B> std::fmt::Debug for SettlingBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettlingBody")
            .field("pending", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}
