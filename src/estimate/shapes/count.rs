//! How the walk counts a string: as text, or as the raw text of a JSON string.

use crate::estimate::scan;

/// How the raw walk counts text: a plain string, or a JSON string by its raw text.
pub(crate) trait TextCount {
    /// Tokens in `text`.
    fn count(&self, text: &str) -> u64;

    /// Tokens in the value of the JSON string whose raw text (between the quotes, escapes
    /// as written) is `raw`.
    fn count_raw(&self, raw: &str) -> u64 {
        self.count(&scan::unescape(raw))
    }
}

/// Any counter function: escaped strings are unescaped into a temporary `String`.
pub(crate) struct CountFn<'a>(pub(crate) &'a dyn Fn(&str) -> u64);

impl TextCount for CountFn<'_> {
    fn count(&self, text: &str) -> u64 {
        (self.0)(text)
    }
}

/// [`count_tokens`](crate::estimate::text::count_tokens), fed escaped strings piece by piece.
pub(crate) struct Heuristic;

impl TextCount for Heuristic {
    fn count(&self, text: &str) -> u64 {
        crate::estimate::text::count_tokens(text)
    }

    fn count_raw(&self, raw: &str) -> u64 {
        crate::estimate::text::count_json_string(raw)
    }
}
