//! An incremental reader of `application/vnd.amazon.eventstream` frames as they pass by:
//! finds the usage at the end of InvokeModelWithResponseStream and ConverseStream, and the
//! exception frames Bedrock can send after HTTP 200.
//!
//! It keeps only the bytes of an incomplete frame. A frame's own headers are walked in place
//! to learn its kind; only `chunk` events that mention `amazon-bedrock-invocationMetrics`,
//! `metadata` events and exceptions are decoded (and their checksums verified).

use std::sync::OnceLock;

use aws_smithy_eventstream::frame::read_message_from;
use base64::Engine as _;
use memchr::memmem::Finder;
use serde_json::Value;

use super::usage::Usage;

/// Frames larger than this turn the reader off: the stream passes on unread and the
/// reservation is kept.
pub(crate) const MAX_FRAME: usize = 16 << 20;

/// Total length, headers length, prelude checksum.
const PRELUDE: usize = 12;
/// Prelude and message checksum: the smallest possible frame.
const MIN_FRAME: usize = PRELUDE + 4;

const METRICS_KEY: &[u8] = b"amazon-bedrock-invocationMetrics";

/// An exception frame: `:exception-type` and the payload's `message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StreamException {
    pub(crate) kind: String,
    pub(crate) message: String,
}

impl StreamException {
    pub(crate) fn is_throttling(&self) -> bool {
        self.kind.eq_ignore_ascii_case("throttlingException")
    }
}

/// Reads frames from the bytes of a stream fed to it in pieces of any size.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    /// The bytes of a frame not yet complete.
    partial: Vec<u8>,
    disabled: bool,
    frames: u64,
    usage: Option<Usage>,
    exception: Option<StreamException>,
}

impl FrameReader {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Whether the reader gave up (a frame too large, or bytes that are not frames).
    pub(crate) fn disabled(&self) -> bool {
        self.disabled
    }

    /// Complete frames read so far.
    pub(crate) fn frames(&self) -> u64 {
        self.frames
    }

    /// Whether usage or an exception was found, or the reader gave up.
    pub(crate) fn has_news(&self) -> bool {
        self.usage.is_some() || self.exception.is_some() || self.disabled
    }

    /// Usage found since the last call.
    pub(crate) fn take_usage(&mut self) -> Option<Usage> {
        self.usage.take()
    }

    /// The first exception frame found since the last call.
    pub(crate) fn take_exception(&mut self) -> Option<StreamException> {
        self.exception.take()
    }

    /// Turns the reader off and frees its buffer.
    pub(crate) fn disable(&mut self) {
        self.disabled = true;
        self.partial = Vec::new();
    }

    /// Reads the next bytes of the stream.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        if self.disabled {
            return;
        }
        if !self.partial.is_empty() {
            if self.partial.len() < 4 {
                let take = (4 - self.partial.len()).min(data.len());
                self.partial.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.partial.len() < 4 {
                    return;
                }
            }
            let Some(total) = frame_len(&self.partial) else {
                return self.disable();
            };
            let take = (total - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < total {
                return;
            }
            let mut frame = std::mem::take(&mut self.partial);
            self.frame(&frame);
            frame.clear();
            if frame.capacity() <= 64 << 10 {
                self.partial = frame; // keep a small buffer for the next split frame
            }
            if self.disabled {
                return;
            }
        }
        while data.len() >= 4 {
            let Some(total) = frame_len(data) else {
                return self.disable();
            };
            if data.len() < total {
                break;
            }
            self.frame(&data[..total]);
            if self.disabled {
                return;
            }
            data = &data[total..];
        }
        self.partial.extend_from_slice(data);
    }

    fn frame(&mut self, frame: &[u8]) {
        self.frames += 1;
        let header_len = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
        // Headers, then at least the 4-byte message checksum, must fit in the frame.
        if header_len > frame.len() - MIN_FRAME {
            return self.disable();
        }
        let headers = &frame[PRELUDE..PRELUDE + header_len];
        let payload = &frame[PRELUDE + header_len..frame.len() - 4];
        let Some(h) = FrameHeaders::read(headers) else {
            return self.disable();
        };
        match (h.message_type, h.event_type) {
            (Some(b"event"), Some(b"chunk")) if chunk_mentions_metrics(payload) => {
                if !checksums_ok(frame) {
                    return self.disable();
                }
                if let Some(u) = chunk_usage(payload) {
                    self.usage = Some(u);
                }
            }
            (Some(b"event"), Some(b"metadata")) => {
                if !checksums_ok(frame) {
                    return self.disable();
                }
                if let Some(u) = super::usage::from_json(payload) {
                    self.usage = Some(u);
                }
            }
            (Some(b"exception"), _) => {
                if !checksums_ok(frame) {
                    return self.disable();
                }
                if self.exception.is_none() {
                    let kind = String::from_utf8_lossy(h.exception_type.unwrap_or_default());
                    let message = serde_json::from_slice::<Value>(payload)
                        .ok()
                        .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
                        .unwrap_or_else(|| String::from_utf8_lossy(payload).into_owned());
                    self.exception = Some(StreamException {
                        kind: kind.into_owned(),
                        message,
                    });
                }
            }
            _ => {}
        }
    }
}

/// The total length of the frame that starts `data` (at least 4 bytes), if plausible.
fn frame_len(data: &[u8]) -> Option<usize> {
    let total = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    (MIN_FRAME..=MAX_FRAME).contains(&total).then_some(total)
}

fn checksums_ok(frame: &[u8]) -> bool {
    read_message_from(frame).is_ok()
}

/// The three string headers that say what a frame is.
#[derive(Default)]
struct FrameHeaders<'a> {
    message_type: Option<&'a [u8]>,
    event_type: Option<&'a [u8]>,
    exception_type: Option<&'a [u8]>,
}

impl<'a> FrameHeaders<'a> {
    fn read(mut h: &'a [u8]) -> Option<Self> {
        let mut out = Self::default();
        while !h.is_empty() {
            let name_len = usize::from(h[0]);
            let name = h.get(1..1 + name_len)?;
            let kind = *h.get(1 + name_len)?;
            h = &h[2 + name_len..];
            let (value, len) = match kind {
                0 | 1 => (None, 0),
                2 => (None, 1),
                3 => (None, 2),
                4 => (None, 4),
                5 | 8 => (None, 8),
                9 => (None, 16),
                6 | 7 => {
                    let n = usize::from(u16::from_be_bytes([*h.first()?, *h.get(1)?]));
                    (Some(h.get(2..2 + n)?), 2 + n)
                }
                _ => return None,
            };
            h = h.get(len..)?;
            if kind == 7 {
                match name {
                    b":message-type" => out.message_type = value,
                    b":event-type" => out.event_type = value,
                    b":exception-type" => out.exception_type = value,
                    _ => {}
                }
            }
        }
        Some(out)
    }
}

/// Finders for the base64 text of `amazon-bedrock-invocationMetrics` at each of the three
/// alignments it can have inside a base64 string: with the first `s` bytes of the key
/// dropped, the rest starts on a 3-byte group boundary, and its whole groups encode the same
/// way wherever they appear.
fn metrics_finders() -> &'static [Finder<'static>; 3] {
    static FINDERS: OnceLock<[Finder<'static>; 3]> = OnceLock::new();
    FINDERS.get_or_init(|| {
        std::array::from_fn(|s| {
            let rest = &METRICS_KEY[s..];
            let whole = &rest[..rest.len() / 3 * 3];
            let text = base64::engine::general_purpose::STANDARD.encode(whole);
            Finder::new(text.as_bytes()).into_owned()
        })
    })
}

/// The base64 string of a `{"bytes":"..."}` chunk payload.
fn chunk_bytes(payload: &[u8]) -> Option<&[u8]> {
    static KEY: OnceLock<Finder<'static>> = OnceLock::new();
    let key = KEY.get_or_init(|| Finder::new(b"\"bytes\"").into_owned());
    let at = key.find(payload)? + b"\"bytes\"".len();
    let rest = &payload[at..];
    let open = memchr::memchr(b'"', rest)? + 1;
    let rest = &rest[open..];
    let close = memchr::memchr(b'"', rest)?;
    Some(&rest[..close])
}

/// Whether a chunk's base64 text may hold the invocation metrics (cheap; no decoding).
fn chunk_mentions_metrics(payload: &[u8]) -> bool {
    chunk_bytes(payload).is_some_and(|b64| metrics_finders().iter().any(|f| f.find(b64).is_some()))
}

/// `amazon-bedrock-invocationMetrics` of a chunk, decoded.
fn chunk_usage(payload: &[u8]) -> Option<Usage> {
    let b64 = chunk_bytes(payload)?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    let m = v.get("amazon-bedrock-invocationMetrics")?;
    let n = |k: &str| m.get(k).and_then(Value::as_u64);
    Some(Usage {
        input_tokens: n("inputTokenCount")?,
        output_tokens: n("outputTokenCount")?,
        cache_read_input_tokens: n("cacheReadInputTokenCount").unwrap_or(0),
        cache_write_input_tokens: n("cacheWriteInputTokenCount").unwrap_or(0),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    use serde_json::json;

    fn frame(headers: &[(&'static str, &'static str)], payload: String) -> Vec<u8> {
        let mut m = Message::new(payload);
        for (k, v) in headers {
            m = m.add_header(Header::new(*k, HeaderValue::String((*v).into())));
        }
        let mut out = Vec::new();
        write_message_to(&m, &mut out).unwrap();
        out
    }

    pub(crate) fn chunk(event: &Value) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(event.to_string());
        frame(
            &[
                (":event-type", "chunk"),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            // Bedrock pads chunks with a random "p" field.
            json!({"bytes": b64, "p": "abcdefghij"}).to_string(),
        )
    }

    pub(crate) fn event(kind: &'static str, payload: &Value) -> Vec<u8> {
        frame(
            &[
                (":event-type", kind),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.to_string(),
        )
    }

    pub(crate) fn exception(kind: &'static str, message: &str) -> Vec<u8> {
        frame(
            &[
                (":exception-type", kind),
                (":content-type", "application/json"),
                (":message-type", "exception"),
            ],
            json!({ "message": message }).to_string(),
        )
    }

    fn invoke_stream(pad: usize) -> Vec<u8> {
        let mut s =
            chunk(&json!({"type": "message_start", "message": {"usage": {"input_tokens": 7}}}));
        for i in 0..5 {
            s.extend(chunk(&json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": format!("word{i}")}})));
        }
        s.extend(chunk(&json!({
            "type": "message_stop",
            "pad": "x".repeat(pad),
            "amazon-bedrock-invocationMetrics": {
                "inputTokenCount": 120, "outputTokenCount": 45,
                "invocationLatency": 900, "firstByteLatency": 300,
            },
        })));
        s
    }

    #[test]
    fn metrics_are_found_at_every_base64_alignment() {
        for pad in 0..6 {
            let mut r = FrameReader::new();
            r.feed(&invoke_stream(pad));
            let u = r.take_usage().unwrap_or_else(|| panic!("pad {pad}"));
            assert_eq!((u.input_tokens, u.output_tokens), (120, 45));
            assert_eq!(r.frames(), 7);
        }
    }

    #[test]
    fn frames_split_at_every_byte_boundary() {
        let mut stream = event("messageStart", &json!({"role": "assistant"}));
        stream.extend(event(
            "contentBlockDelta",
            &json!({"delta": {"text": "hi"}}),
        ));
        stream.extend(event(
            "metadata",
            &json!({"usage": {"inputTokens": 31, "outputTokens": 9, "totalTokens": 40,
                "cacheWriteInputTokens": 2}, "metrics": {"latencyMs": 5}}),
        ));
        stream.extend(invoke_stream(1));
        stream.extend(exception("throttlingException", "Too many tokens"));
        for cut in 0..=stream.len() {
            let mut r = FrameReader::new();
            r.feed(&stream[..cut]);
            r.feed(&stream[cut..]);
            assert!(!r.disabled(), "cut {cut}");
            assert_eq!(r.frames(), 11, "cut {cut}");
            let e = r.take_exception().unwrap();
            assert!(e.is_throttling());
            assert_eq!(e.message, "Too many tokens");
        }
        // One byte at a time; the usage seen last wins.
        let mut r = FrameReader::new();
        let mut usages = Vec::new();
        for b in &stream {
            r.feed(std::slice::from_ref(b));
            usages.extend(r.take_usage());
        }
        let got: Vec<_> = usages
            .iter()
            .map(|u| (u.input_tokens, u.output_tokens, u.cache_write_input_tokens))
            .collect();
        assert_eq!(got, [(31, 9, 2), (120, 45, 0)]);
        assert_eq!(r.frames(), 11);
    }

    #[test]
    fn garbage_and_huge_frames_turn_the_reader_off() {
        let mut r = FrameReader::new();
        r.feed(b"{\"not\":\"a frame\"}");
        assert!(r.disabled());
        let mut r = FrameReader::new();
        r.feed(&((MAX_FRAME + 1) as u32).to_be_bytes());
        assert!(r.disabled());
        // A corrupted metadata frame is not trusted.
        let mut f = event(
            "metadata",
            &json!({"usage": {"inputTokens": 1, "outputTokens": 1}}),
        );
        let n = f.len();
        f[n - 6] ^= 1;
        let mut r = FrameReader::new();
        r.feed(&f);
        assert!(r.disabled());
        assert_eq!(r.take_usage(), None);
    }

    #[test]
    fn ordinary_chunks_are_not_decoded_as_metrics() {
        let mut r = FrameReader::new();
        r.feed(&chunk(&json!({"type": "content_block_delta",
            "delta": {"text": "amazon-bedrock-invocation is mentioned"}})));
        assert_eq!(r.take_usage(), None);
        assert!(!r.disabled());
    }
}
