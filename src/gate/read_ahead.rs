//! Reads the start of a response body held back from the caller, keeping every frame for it.
//!
//! The gate reads ahead twice: a 2xx event stream up to its first whole frame (to turn an
//! exception there into a retryable error), and a 429's body (to tell which limit it names).
//! Both keep the response's head and every frame they read, errors included, so the caller
//! later gets the body exactly as it came.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Buf;
use http::{response::Parts, Response};
use http_body::{Body, Frame};

/// The frames read ahead of the caller, in order.
pub(crate) type Frames<R> = VecDeque<Result<Frame<<R as Body>::Data>, <R as Body>::Error>>;

/// A response held back from the caller while the start of its body is read.
pub(crate) struct ReadAhead<R: Body> {
    head: Parts,
    body: Pin<Box<R>>,
    frames: Frames<R>,
    /// Data bytes read so far.
    bytes: usize,
    /// Reading stops once more than this many bytes are read.
    limit: usize,
    /// A copy of the bytes read, when asked for: `None` once they cannot be kept whole (a
    /// chunk not in one piece, more than `limit` bytes, an error).
    kept: Option<Vec<u8>>,
    /// The body ended or failed: it is not polled again.
    ended: bool,
}

impl<R: Body> ReadAhead<R> {
    /// Holds back `response` to read at most about `limit` bytes of its body; with `keep` a
    /// copy of those bytes is kept.
    pub(crate) fn new(response: Response<R>, limit: usize, keep: bool) -> Self {
        let (head, body) = response.into_parts();
        Self {
            head,
            body: Box::pin(body),
            frames: VecDeque::new(),
            bytes: 0,
            limit,
            kept: keep.then(Vec::new),
            ended: false,
        }
    }

    /// Reads until `enough` says so, more than the limit is read, or the body ends or fails.
    ///
    /// `enough` looks at every data chunk as it is read, `None` for one that does not come
    /// in one piece: nothing can look at that one, so reading stops after it too.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        mut enough: impl FnMut(Option<&[u8]>) -> bool,
    ) -> Poll<()> {
        while self.bytes <= self.limit {
            if self.body.is_end_stream() {
                self.ended = true;
                break;
            }
            match ready!(self.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let stop = frame.data_ref().is_some_and(|data| {
                        let chunk = data.chunk();
                        let whole = (chunk.len() == data.remaining()).then_some(chunk);
                        self.bytes += data.remaining();
                        match (&mut self.kept, whole) {
                            (Some(kept), Some(chunk)) if self.bytes <= self.limit => {
                                kept.extend_from_slice(chunk)
                            }
                            _ => self.kept = None,
                        }
                        enough(whole) || whole.is_none()
                    });
                    self.frames.push_back(Ok(frame));
                    if stop {
                        break;
                    }
                }
                Some(Err(e)) => {
                    self.frames.push_back(Err(e));
                    self.kept = None;
                    self.ended = true;
                    break;
                }
                None => {
                    self.ended = true;
                    break;
                }
            }
        }
        Poll::Ready(())
    }

    /// Whether the body ended (or failed) while it was read.
    pub(crate) fn ended(&self) -> bool {
        self.ended
    }

    /// The bytes read, when they were to be kept and could be kept whole.
    pub(crate) fn kept(&self) -> Option<&[u8]> {
        self.kept.as_deref()
    }

    /// Hands back the head, the body, and the frames read from it (which go first).
    pub(crate) fn into_parts(self) -> (Parts, Pin<Box<R>>, Frames<R>) {
        (self.head, self.body, self.frames)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use bytes::Bytes;
    use http_body_util::BodyExt;

    use super::*;

    /// A body of given frames, errors included.
    struct Chunks(VecDeque<Result<Frame<Bytes>, std::io::Error>>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front())
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn response(chunks: &[&'static [u8]]) -> Response<Chunks> {
        let frames = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))));
        Response::new(Chunks(frames.collect()))
    }

    async fn read(ahead: &mut ReadAhead<Chunks>, mut enough: impl FnMut(Option<&[u8]>) -> bool) {
        poll_fn(|cx| ahead.poll_read(cx, &mut enough)).await;
    }

    #[tokio::test]
    async fn stops_when_told_and_keeps_every_frame_for_the_caller() {
        let mut ahead = ReadAhead::new(response(&[b"ab", b"cd", b"ef"]), 1 << 10, false);
        let mut seen = Vec::new();
        read(&mut ahead, |chunk| {
            seen.push(chunk.map(<[u8]>::to_vec));
            seen.len() == 2
        })
        .await;
        assert_eq!(seen, [Some(b"ab".to_vec()), Some(b"cd".to_vec())]);
        assert!(!ahead.ended());
        assert_eq!(ahead.kept(), None);
        let (_, body, frames) = ahead.into_parts();
        assert_eq!(frames.len(), 2);
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, Bytes::from_static(b"ef"));
    }

    #[tokio::test]
    async fn keeps_a_whole_body_within_the_limit() {
        let mut ahead = ReadAhead::new(response(&[b"ab", b"cd"]), 4, true);
        read(&mut ahead, |_| false).await;
        assert!(ahead.ended());
        assert_eq!(ahead.kept(), Some(&b"abcd"[..]));
        assert_eq!(ahead.into_parts().2.len(), 2);
    }

    #[tokio::test]
    async fn stops_past_the_limit_without_the_bytes_kept() {
        let mut ahead = ReadAhead::new(response(&[b"ab", b"cd", b"ef"]), 3, true);
        read(&mut ahead, |_| false).await;
        assert!(!ahead.ended());
        assert_eq!(ahead.kept(), None);
        assert_eq!(ahead.into_parts().2.len(), 2);
    }

    #[tokio::test]
    async fn an_error_ends_the_reading_and_goes_to_the_caller() {
        let frames = [
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err(std::io::Error::other("reset")),
            Ok(Frame::data(Bytes::from_static(b"cd"))),
        ];
        let mut ahead = ReadAhead::new(Response::new(Chunks(frames.into())), 1 << 10, true);
        read(&mut ahead, |_| false).await;
        assert!(ahead.ended());
        assert_eq!(ahead.kept(), None);
        let frames = ahead.into_parts().2;
        assert_eq!(frames.len(), 2);
        assert!(frames.back().unwrap().is_err());
    }
}
