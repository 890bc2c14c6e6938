//! Reads the start of a response body held back from the caller, keeping every frame for it.
//!
//! The gate reads ahead twice: a 2xx event stream up to its first whole frame (to turn an
//! exception there into a retryable error), and a 429's body (to tell which limit it names).
//! Both keep the response's head and every frame they read, errors included, so the caller
//! later gets the body exactly as it came. Neither waits longer than its timeout for a body
//! that stalls: the head then goes on with what was read.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::Buf;
use http::{response::Parts, Response};
use http_body::{Body, Frame};
use tokio::time::Sleep;

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
    timeout: Duration,
    /// Armed when the body first has nothing to read.
    deadline: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
}

impl<R: Body> ReadAhead<R> {
    /// Holds back `response` to read at most about `limit` bytes of its body, for at most
    /// `timeout` of waiting; with `keep` a copy of those bytes is kept.
    pub(crate) fn new(response: Response<R>, limit: usize, keep: bool, timeout: Duration) -> Self {
        let (head, body) = response.into_parts();
        Self {
            head,
            body: Box::pin(body),
            frames: VecDeque::new(),
            bytes: 0,
            limit,
            kept: keep.then(Vec::new),
            ended: false,
            timeout,
            deadline: None,
            timed_out: false,
        }
    }

    /// Reads until `enough` says so, more than the limit is read, the body ends or fails, or
    /// the timeout passes (then what was read cannot be kept whole).
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
            let frame = match self.body.as_mut().poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    let timeout = self.timeout;
                    let deadline = self
                        .deadline
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    ready!(deadline.as_mut().poll(cx));
                    self.timed_out = true;
                    self.kept = None;
                    break;
                }
            };
            match frame {
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

    /// The response's head.
    pub(crate) fn head(&self) -> &Parts {
        &self.head
    }

    /// Whether reading gave up because the body stalled past the timeout.
    pub(crate) fn timed_out(&self) -> bool {
        self.timed_out
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

    const SECOND: Duration = Duration::from_secs(1);

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

    /// A body that sends `first`, then nothing, never ending.
    struct Stalls(Option<Bytes>);

    impl Body for Stalls {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            match self.0.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_waited_for_no_longer_than_the_timeout() {
        let start = tokio::time::Instant::now();
        let stalls = Response::new(Stalls(Some(Bytes::from_static(b"{\"mes"))));
        let mut ahead = ReadAhead::new(stalls, 1 << 10, true, SECOND);
        poll_fn(|cx| ahead.poll_read(cx, |_| false)).await;
        assert_eq!(start.elapsed(), SECOND);
        assert!(ahead.timed_out() && !ahead.ended());
        // What was read cannot be known whole, and goes to the caller first.
        assert_eq!(ahead.kept(), None);
        assert_eq!(ahead.into_parts().2.len(), 1);
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
        let mut ahead = ReadAhead::new(response(&[b"ab", b"cd", b"ef"]), 1 << 10, false, SECOND);
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
        let mut ahead = ReadAhead::new(response(&[b"ab", b"cd"]), 4, true, SECOND);
        read(&mut ahead, |_| false).await;
        assert!(ahead.ended());
        assert_eq!(ahead.kept(), Some(&b"abcd"[..]));
        assert_eq!(ahead.into_parts().2.len(), 2);
    }

    #[tokio::test]
    async fn stops_past_the_limit_without_the_bytes_kept() {
        let mut ahead = ReadAhead::new(response(&[b"ab", b"cd", b"ef"]), 3, true, SECOND);
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
        let mut ahead = ReadAhead::new(Response::new(Chunks(frames.into())), 1 << 10, true, SECOND);
        read(&mut ahead, |_| false).await;
        assert!(ahead.ended());
        assert_eq!(ahead.kept(), None);
        let frames = ahead.into_parts().2;
        assert_eq!(frames.len(), 2);
        assert!(frames.back().unwrap().is_err());
    }
}
