//! An incremental reader of a `text/event-stream` response as it passes by: finds the usage
//! a streamed Chat Completions response reports in its last chunk.
//!
//! bedrock-runtime streams Chat Completions as OpenAI does: server-sent events whose `data`
//! is a `chat.completion.chunk`, ended by `data: [DONE]`. When the request sets
//! `stream_options.include_usage`, the last chunk before `[DONE]` carries `usage`
//! (`prompt_tokens`, `completion_tokens`) and every earlier one `"usage": null`
//! (OpenAI's Create chat completion reference, `stream_options`).
//!
//! Events are split as the WHATWG server-sent events format says (lines end with `\n`, a
//! `\r` before it is dropped; a blank line ends an event; `data:` lines join with `\n`),
//! except that a lone `\r` does not end a line: no Chat Completions server sends one. It
//! keeps only the bytes of the current line and event; only events that mention
//! `prompt_tokens` are parsed. A push reader of borrowed chunks, as the gate's body needs;
//! the SSE crates (eventsource-stream and others) wrap a `Stream` and own its items instead.

use memchr::memmem;

use super::usage::{self, Usage};

/// A line or event larger than this turns the reader off: the stream passes on unread and
/// the reservation is kept.
pub(crate) const MAX_EVENT: usize = 16 << 20;

/// Reads the events of a server-sent event stream fed to it in pieces, keeping the usage
/// it finds.
#[derive(Debug, Default)]
pub(crate) struct SseReader {
    /// The current line, without its end.
    line: Vec<u8>,
    /// The `data` of the current event, lines joined with `\n`.
    data: Vec<u8>,
    /// The current event has a `data` line (its data may still be empty).
    has_data: bool,
    usage: Option<Usage>,
    disabled: bool,
}

impl SseReader {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Whether the reader gave up (an oversized event): nothing more will be found.
    pub(crate) fn disabled(&self) -> bool {
        self.disabled
    }

    /// Stops reading; what was found stays.
    pub(crate) fn disable(&mut self) {
        self.disabled = true;
        self.line = Vec::new();
        self.data = Vec::new();
    }

    /// Whether usage was found and not yet taken.
    pub(crate) fn has_news(&self) -> bool {
        self.usage.is_some()
    }

    /// The usage found, once.
    pub(crate) fn take_usage(&mut self) -> Option<Usage> {
        self.usage.take()
    }

    /// Reads the next piece of the stream.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !self.disabled && !data.is_empty() {
            match memchr::memchr(b'\n', data) {
                Some(end) => {
                    if !self.push_line_bytes(&data[..end]) {
                        return;
                    }
                    let mut line = std::mem::take(&mut self.line);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    self.line_ended(&line);
                    line.clear();
                    self.line = line;
                    data = &data[end + 1..];
                }
                None => {
                    self.push_line_bytes(data);
                    return;
                }
            }
        }
    }

    /// Adds to the current line; false (and the reader off) past [`MAX_EVENT`].
    fn push_line_bytes(&mut self, bytes: &[u8]) -> bool {
        if self.line.len() + bytes.len() > MAX_EVENT {
            self.disable();
            return false;
        }
        self.line.extend_from_slice(bytes);
        true
    }

    fn line_ended(&mut self, line: &[u8]) {
        if line.is_empty() {
            self.dispatch();
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => return, // a comment
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if field != b"data" {
            return; // `event`, `id`, `retry` say nothing about usage
        }
        if self.data.len() + value.len() + 1 > MAX_EVENT {
            self.disable();
            return;
        }
        if self.has_data {
            self.data.push(b'\n');
        }
        self.data.extend_from_slice(value);
        self.has_data = true;
    }

    /// An event ended: its data is read for usage.
    fn dispatch(&mut self) {
        if self.has_data && memmem::find(&self.data, b"\"prompt_tokens\"").is_some() {
            if let Some(u) = usage::from_json(&self.data) {
                self.usage = Some(u);
            }
        }
        self.data.clear();
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        ": keep-alive\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"}}],\"usage\":null}\r\n\r\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "event: message\nid: 3\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\n",
        "data: \"usage\":{\"prompt_tokens\":41,\"completion_tokens\":17,\"total_tokens\":58}}\n\n",
        "data: [DONE]\n\n",
    );

    fn usage_of(pieces: &[&[u8]]) -> Option<(u64, u64)> {
        let mut r = SseReader::new();
        for p in pieces {
            r.feed(p);
        }
        r.take_usage().map(|u| (u.input_tokens, u.output_tokens))
    }

    #[test]
    fn the_last_chunk_carries_the_usage_however_the_stream_is_cut() {
        let bytes = STREAM.as_bytes();
        assert_eq!(usage_of(&[bytes]), Some((41, 17)));
        for cut in 0..bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(usage_of(&[a, b]), Some((41, 17)), "cut at {cut}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(usage_of(&bytewise), Some((41, 17)));
    }

    #[test]
    fn no_usage_without_a_whole_usage_event() {
        // Without `stream_options.include_usage` every chunk says `"usage":null`.
        let without = STREAM.replace(
            "\"usage\":{\"prompt_tokens\":41,\"completion_tokens\":17,\"total_tokens\":58}",
            "\"usage\":null",
        );
        assert_eq!(usage_of(&[without.as_bytes()]), None);
        // The usage event never ended.
        let cut = STREAM.find("data: [DONE]").unwrap() - 1;
        assert_eq!(usage_of(&[&STREAM.as_bytes()[..cut]]), None);
        // Usage in a comment or another field is not data.
        let other = ": {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\nretry: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n";
        assert_eq!(usage_of(&[other.as_bytes()]), None);
    }

    #[test]
    fn an_oversized_line_turns_it_off() {
        let mut r = SseReader::new();
        r.feed(b"data: ");
        r.feed(&vec![b'x'; MAX_EVENT]);
        assert!(r.disabled());
        r.feed(b"\n\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n");
        assert_eq!(r.take_usage(), None);
    }
}
