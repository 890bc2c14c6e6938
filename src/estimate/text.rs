//! Token count heuristic for text, calibrated against the cl100k tokenizer.
//!
//! [`count_tokens`] walks the text once, char by char, without allocating. It splits the
//! text roughly the way cl100k's pre-tokenizer does (letter runs, digit groups of up to
//! three, punctuation runs, whitespace runs) and prices each piece by its character class:
//!
//! | piece | cost (tokens) |
//! |---|---|
//! | ASCII word of `n` letters | 1 up to 6 letters, then +0.2 per letter; +0.4 per lower→upper (camelCase) change |
//! | digits | one per group of up to three digits |
//! | ASCII punctuation run of `n` chars | 1 + 0.15 × (n − 1), line breaks right after it included; a lone mark glued to a following word (`.get`, `(x`) 0.1 |
//! | one space before a word or punctuation | 0 (cl100k glues it to the next piece) |
//! | other whitespace runs, line breaks | 1 per run |
//! | CJK ideograph / kana / hangul | [`CJK_MILLI`], [`KANA_MILLI`], [`HANGUL_MILLI`] (÷ 1000) each |
//! | other letters (Cyrillic, Greek, accented Latin, Indic, …) | by UTF-8 length: 0.5 (2 bytes), 1.0 (3 bytes), 1.5 (4 bytes) |
//! | emoji and pictographs | [`EMOJI_MILLI`] (first of a run) or [`EMOJI_IN_RUN_MILLI`] ÷ 1000 each; U+2300–U+2BFF pictographs 2; joiners and variation selectors 1 |
//! | other symbols | 1 (2 or 3 UTF-8 bytes), 2 (4 bytes) |
//!
//! The sum is rounded up. Over the accuracy corpus in `tests/accuracy.rs` (English prose,
//! source code, JSON, Chinese, Japanese, emoji-heavy text) the per-category median error
//! against cl100k is within 10 % and the worst sample within 25 %.
//!
//! Claude's own tokenizer is not public; cl100k is the nearest public reference, and the
//! [`Calibration`](crate::estimate::Calibration) type learns the remaining per-model
//! difference from the usage that upstream reports.

/// Cost of one CJK ideograph, in thousandths of a token.
pub const CJK_MILLI: u64 = 1_300;
/// Cost of one hiragana or katakana character, in thousandths of a token.
pub const KANA_MILLI: u64 = 1_000;
/// Cost of one hangul syllable or jamo, in thousandths of a token.
pub const HANGUL_MILLI: u64 = 1_300;
/// Cost of one emoji or pictograph in U+1F000..U+1FAFF, in thousandths of a token, when it
/// does not follow another emoji (a run of emoji shares byte-pair prefixes: see
/// [`EMOJI_IN_RUN_MILLI`]).
pub const EMOJI_MILLI: u64 = 3_000;
/// Cost of an emoji that directly follows another one, in thousandths of a token.
pub const EMOJI_IN_RUN_MILLI: u64 = 2_400;

const WORD_BASE: u64 = 1_000;
const WORD_FREE_LEN: u64 = 6;
const WORD_PER_EXTRA_LETTER: u64 = 200;
const CAMEL_BOUNDARY: u64 = 400;
const PUNCT_FIRST: u64 = 1_000;
const PUNCT_NEXT: u64 = 150;
const PUNCT_GLUED: u64 = 100;
const WHITESPACE_RUN: u64 = 1_000;
const NEWLINE_RUN: u64 = 1_000;
const JOINER: u64 = 1_000;

/// Estimated cl100k-like token count of `text`.
///
/// Single pass, no allocation; see the [module docs](self) for the cost table.
///
/// ```
/// use bedrock_throttle::estimate::text::count_tokens;
/// assert_eq!(count_tokens(""), 0);
/// assert_eq!(count_tokens("hello world"), 2);
/// assert!(count_tokens("你好，世界") >= 5);
/// ```
pub fn count_tokens(text: &str) -> u64 {
    let mut counter = Counter::default();
    counter.push_str(text);
    counter.finish()
}

/// [`count_tokens`] of the value of a JSON string given as its raw text between the quotes
/// (escapes as written, already validated): the same count as for the unescaped string,
/// without building it.
pub(crate) fn count_json_string(raw: &str) -> u64 {
    let mut counter = Counter::default();
    counter.push_bytes::<true>(raw);
    counter.finish()
}

/// Cost of `len` bytes that are not understood as text (binary or base64 data), at about
/// four bytes a token: the usual cl100k density for base64 and hex is 2.5 to 4 bytes a
/// token, so this is on the low side for such data and is only used as a floor.
pub fn count_bytes(len: usize) -> u64 {
    (len as u64).div_ceil(4)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    None,
    Word,
    Digits,
    Punct,
    Space,
    Newline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// ASCII letter; `true` when upper case.
    AsciiLetter(bool),
    /// Any other letter, with its cost in milli-tokens.
    Letter(u64),
    Digit,
    /// ASCII punctuation.
    Punct,
    /// A non-ASCII symbol with its cost in milli-tokens.
    Symbol(u64),
    /// A 4-byte emoji or pictograph.
    Emoji,
    Space,
    Newline,
}

/// The streaming state of [`count_tokens`]: text can be fed in pieces (for instance the
/// segments of a JSON string between its escapes) and gives the same count as the whole.
#[derive(Debug)]
pub(crate) struct Counter {
    total: u64,
    run: Run,
    /// ASCII letters, digits, punctuation chars or whitespace chars in the current run.
    len: u64,
    /// Extra cost of the current run (non-ASCII letters, symbols, camel boundaries).
    extra: u64,
    prev_lower: bool,
    /// The punctuation run began with a space.
    punct_after_space: bool,
    /// A punctuation run has taken trailing line breaks (cl100k: `[^\s\p{L}\p{N}]+[\r\n]*`).
    newline_tail: bool,
}

impl Default for Counter {
    fn default() -> Self {
        Self {
            total: 0,
            run: Run::None,
            len: 0,
            extra: 0,
            prev_lower: false,
            punct_after_space: false,
            newline_tail: false,
        }
    }
}

/// ASCII byte classes, for the byte loop of [`Counter::push_str`].
const A_LOWER: u8 = 0;
const A_UPPER: u8 = 1;
const A_DIGIT: u8 = 2;
const A_PUNCT: u8 = 3;
const A_SPACE: u8 = 4;
const A_NEWLINE: u8 = 5;
const A_CONTROL: u8 = 6;
const A_NON_ASCII: u8 = 7;

/// The class of every byte: [`classify`] for ASCII, [`A_NON_ASCII`] for the rest.
static BYTE_CLASS: [u8; 256] = {
    let mut t = [A_NON_ASCII; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = match c {
            b'a'..=b'z' => A_LOWER,
            b'A'..=b'Z' => A_UPPER,
            b'0'..=b'9' => A_DIGIT,
            b'\r' | b'\n' => A_NEWLINE,
            b'\t' | b' ' | 0x0C => A_SPACE,
            0..=0x1F | 0x7F => A_CONTROL,
            _ => A_PUNCT,
        };
        b += 1;
    }
    t
};

/// The cost of a char U+3000..U+9FFF inside a run of CJK ideographs and kana, by its block
/// of 64 code points (which its first two UTF-8 bytes give): [`CJK_MILLI`] for ideographs
/// (U+3400..U+4DBF, U+4E00..U+9FFF), [`KANA_MILLI`] for kana (U+3040..U+30FF), 0 for the
/// rest, which ends the run. Every range starts and ends on a block boundary.
static CJK_RUN_COST: [u16; 7 * 64] = {
    let mut t = [0u16; 7 * 64];
    let mut k = 0;
    while k < t.len() {
        // Lead byte 0xE3 + k / 64, second byte 0x80 + k % 64.
        let first = ((k as u32) + 0xC0) << 6;
        t[k] = match first {
            0x4E00..=0x9FFF | 0x3400..=0x4DBF => CJK_MILLI as u16,
            0x3040..=0x30FF => KANA_MILLI as u16,
            _ => 0,
        };
        k += 1;
    }
    t
};

/// Eight bytes at `i`, little-endian.
#[inline(always)]
fn word_at(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that is an ASCII lower-case letter.
#[inline(always)]
fn lower_mask(w: u64) -> u64 {
    // A byte is in b'a'..=b'z' when it is below 0x80, at least 0x61 and below 0x7B; each
    // test sets the byte's high bit without carrying into the next byte because the high
    // bit is masked off first.
    let low = w & !HIGH;
    let ge_a = low + ONES * (0x80 - 0x61);
    let ge_brace = low + ONES * (0x80 - 0x7B);
    ge_a & !ge_brace & !w & HIGH
}

/// The high bit of each byte of `w` that equals `x` (exact for every byte, unlike the
/// shorter has-zero test, whose borrows mark bytes above a match).
#[inline(always)]
fn byte_mask(w: u64, x: u8) -> u64 {
    let v = w ^ (ONES * u64::from(x));
    !(((v & !HIGH) + !HIGH) | v) & HIGH
}

/// Number of leading bytes of the little-endian word `w` that are ASCII lower-case letters.
#[cfg(test)]
fn lower_prefix(w: u64) -> usize {
    ((!lower_mask(w) & HIGH).trailing_zeros() / 8) as usize
}

#[inline]
fn classify(c: char) -> Class {
    if c.is_ascii() {
        return match c {
            'a'..='z' => Class::AsciiLetter(false),
            'A'..='Z' => Class::AsciiLetter(true),
            '0'..='9' => Class::Digit,
            '\r' | '\n' => Class::Newline,
            c if c.is_ascii_whitespace() => Class::Space,
            c if c.is_ascii_control() => Class::Symbol(1_000),
            _ => Class::Punct,
        };
    }
    let u = c as u32;
    match u {
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0xF900..=0xFAFF | 0x20000..=0x3FFFF => {
            Class::Letter(CJK_MILLI)
        }
        0x3040..=0x30FF | 0x31F0..=0x31FF | 0xFF66..=0xFF9F => Class::Letter(KANA_MILLI),
        0xAC00..=0xD7AF | 0x1100..=0x11FF | 0x3130..=0x318F => Class::Letter(HANGUL_MILLI),
        0x200D | 0xFE00..=0xFE0F | 0x20E3 => Class::Symbol(JOINER),
        0x1F000..=0x1FAFF => Class::Emoji,
        // Common CJK and full-width punctuation, which the fallbacks below would price the
        // same after slow Unicode property lookups.
        0x3001..=0x3003
        | 0x3008..=0x3011
        | 0xFF01
        | 0xFF08
        | 0xFF09
        | 0xFF0C
        | 0xFF1A
        | 0xFF1B
        | 0xFF1F => Class::Symbol(1_000),
        0x2600..=0x27BF | 0x2B00..=0x2BFF | 0x2300..=0x23FF => Class::Symbol(2_000),
        0xE0000..=0xE007F => Class::Symbol(JOINER),
        _ if c.is_whitespace() => {
            if matches!(u, 0x85 | 0x2028 | 0x2029) {
                Class::Newline
            } else {
                Class::Space
            }
        }
        _ if c.is_alphabetic() => Class::Letter(match c.len_utf8() {
            2 => 500,
            3 => 1_000,
            _ => 1_500,
        }),
        _ if c.is_numeric() => Class::Symbol(1_000),
        _ => Class::Symbol(if c.len_utf8() == 4 { 2_000 } else { 1_000 }),
    }
}

impl Counter {
    /// Feeds `text`: the same as [`push`](Self::push) for each of its chars, with ASCII
    /// handled by a byte loop over [`BYTE_CLASS`] that skips through runs of lower-case
    /// letters eight bytes at a time.
    pub(crate) fn push_str(&mut self, text: &str) {
        self.push_bytes::<false>(text);
    }

    /// [`push_str`](Self::push_str) of `text`, or with `JSON` of the value of the JSON
    /// string whose raw text (escapes as written, validated) is `text`: escapes are decoded
    /// where they are met, so the string is read once and never copied.
    #[inline]
    fn push_bytes<const JSON: bool>(&mut self, text: &str) {
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let x = b[i];
            match BYTE_CLASS[x as usize] {
                A_LOWER => {
                    // A lower-case letter enters a word; inside one, lower-case letters
                    // only lengthen it.
                    self.enter(Run::Word);
                    let mut start = i;
                    i += 1;
                    loop {
                        while i + 8 <= b.len() {
                            let w = word_at(b, i);
                            let lower = lower_mask(w);
                            if lower == HIGH {
                                i += 8;
                                continue;
                            }
                            let space = byte_mask(w, b' ');
                            if lower | space == HIGH
                                && space & (space << 8) == 0
                                && space >> 56 == 0
                            {
                                // Lower-case words split by single spaces, the last one going
                                // on: the words that end here, as the space branch below
                                // would price them. Only the first can be longer than
                                // WORD_FREE_LEN (the others lie between two spaces of
                                // these eight bytes).
                                let first = (space.trailing_zeros() / 8) as usize;
                                let last = (7 - space.leading_zeros() / 8) as usize;
                                let first_len = self.len + (i - start + first) as u64;
                                // Bit count of a mask of high bits, without a popcount
                                // instruction (not in the baseline x86-64 target).
                                let ended = ((space >> 7).wrapping_mul(ONES)) >> 56;
                                let cost = ended * WORD_BASE
                                    + first_len.saturating_sub(WORD_FREE_LEN)
                                        * WORD_PER_EXTRA_LETTER
                                    + self.extra;
                                self.total = self.total.saturating_add(cost);
                                self.newline_tail = false;
                                self.len = 0;
                                self.extra = 0;
                                self.punct_after_space = false;
                                start = i + last + 1;
                                i += 8;
                                continue;
                            }
                            i += ((!lower & HIGH).trailing_zeros() / 8) as usize;
                            break;
                        }
                        while i < b.len() && b[i].is_ascii_lowercase() {
                            i += 1;
                        }
                        if i + 1 < b.len() && b[i] == b' ' && b[i + 1].is_ascii_lowercase() {
                            // One space between lower-case words: the space branch below,
                            // without leaving the word loop.
                            self.len += (i - start) as u64;
                            self.flush(Run::Space);
                            self.newline_tail = false;
                            self.len = 0;
                            self.extra = 0;
                            self.punct_after_space = false;
                            i += 1;
                            start = i;
                            continue;
                        }
                        break;
                    }
                    self.len += (i - start) as u64;
                    self.prev_lower = true;
                }
                A_UPPER => {
                    self.enter(Run::Word);
                    if self.prev_lower {
                        self.extra += CAMEL_BOUNDARY;
                    }
                    self.prev_lower = false;
                    self.len += 1;
                    i += 1;
                }
                A_DIGIT => {
                    self.enter(Run::Digits);
                    let start = i;
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    self.len += (i - start) as u64;
                }
                A_PUNCT => {
                    if JSON && x == b'\\' {
                        let (c, n) = crate::estimate::scan::escape_at(b, i);
                        self.push(c);
                        i = (i + n).min(b.len());
                        continue;
                    }
                    self.enter(Run::Punct);
                    self.prev_lower = false;
                    // The marks that follow only lengthen the run.
                    let start = i;
                    i += 1;
                    while i < b.len()
                        && BYTE_CLASS[usize::from(b[i])] == A_PUNCT
                        && !(JSON && b[i] == b'\\')
                    {
                        i += 1;
                    }
                    self.len += (i - start) as u64;
                }
                A_SPACE => {
                    if x == b' '
                        && self.run == Run::Word
                        && b.get(i + 1).is_some_and(u8::is_ascii_lowercase)
                    {
                        // One space between words costs nothing (see `flush`): end the word
                        // and start the next, as `push` would over the two runs.
                        self.flush(Run::Space);
                        self.newline_tail = false;
                        self.len = 0;
                        self.extra = 0;
                        self.prev_lower = false;
                        self.punct_after_space = false;
                        i += 1;
                        continue;
                    }
                    self.enter(Run::Space);
                    // Inside a whitespace run, spaces and tabs only lengthen it.
                    let start = i;
                    i += 1;
                    while i < b.len() && BYTE_CLASS[usize::from(b[i])] == A_SPACE {
                        i += 1;
                    }
                    self.len += (i - start) as u64;
                }
                A_NEWLINE | A_CONTROL => {
                    self.push(x as char);
                    i += 1;
                }
                _ => {
                    let (c, n) = decode_utf8(b, i);
                    let class = classify(c);
                    self.push_class(class);
                    i += n;
                    if let Class::Letter(CJK_MILLI | KANA_MILLI) = class {
                        i = self.cjk_run(b, i);
                    }
                }
            }
        }
    }

    /// Inside a word, takes the CJK ideographs and kana that follow byte `i` (the same as
    /// [`push`](Self::push) for each: they only add their cost) and returns where they end.
    #[inline]
    fn cjk_run(&mut self, b: &[u8], mut i: usize) -> usize {
        let mut extra = 0;
        while i + 3 <= b.len() && (0xE3..=0xE9).contains(&b[i]) {
            let cost = CJK_RUN_COST[usize::from(b[i] - 0xE3) * 64 + usize::from(b[i + 1] & 0x3F)];
            if cost == 0 {
                break;
            }
            extra += u64::from(cost);
            i += 3;
        }
        self.extra += extra;
        i
    }

    /// The run change of [`push`](Self::push) for a char of `run`, which must not be
    /// [`Run::Newline`].
    #[inline(always)]
    fn enter(&mut self, run: Run) {
        if run != self.run || (run == Run::Punct && self.newline_tail) {
            self.flush(run);
            let after_space = self.run == Run::Space && self.len == 1;
            self.run = run;
            self.newline_tail = false;
            self.len = 0;
            self.extra = 0;
            self.prev_lower = false;
            self.punct_after_space = run == Run::Punct && after_space;
        }
    }

    /// Feeds one char.
    #[inline]
    pub(crate) fn push(&mut self, c: char) {
        self.push_class(classify(c));
    }

    /// Feeds one char of class `class`.
    #[inline(always)]
    fn push_class(&mut self, class: Class) {
        let run = match class {
            Class::AsciiLetter(_) | Class::Letter(_) => Run::Word,
            Class::Digit => Run::Digits,
            Class::Punct | Class::Symbol(_) | Class::Emoji => Run::Punct,
            Class::Space => Run::Space,
            Class::Newline => Run::Newline,
        };
        if self.run == Run::Punct && run == Run::Newline {
            self.newline_tail = true;
            return;
        }
        if run != self.run || (run == Run::Punct && self.newline_tail) {
            // Whitespace followed by a line break is one `\s*[\r\n]+` piece.
            if !(self.run == Run::Space && run == Run::Newline) {
                self.flush(run);
            }
            let after_space = self.run == Run::Space && self.len == 1;
            self.run = run;
            self.newline_tail = false;
            self.len = 0;
            self.extra = 0;
            self.prev_lower = false;
            self.punct_after_space = run == Run::Punct && after_space;
        }
        match class {
            Class::AsciiLetter(upper) => {
                if upper && self.prev_lower {
                    self.extra += CAMEL_BOUNDARY;
                }
                self.prev_lower = !upper;
                self.len += 1;
            }
            Class::Letter(cost) => {
                self.prev_lower = false;
                self.extra += cost;
            }
            Class::Symbol(cost) => {
                self.prev_lower = false;
                self.extra += cost;
            }
            Class::Emoji => {
                // `prev_lower` doubles as "previous char was an emoji" inside punctuation runs.
                self.extra += if self.prev_lower {
                    EMOJI_IN_RUN_MILLI
                } else {
                    EMOJI_MILLI
                };
                self.prev_lower = true;
            }
            Class::Punct => {
                self.prev_lower = false;
                self.len += 1;
            }
            Class::Digit | Class::Space | Class::Newline => self.len += 1,
        }
    }

    /// Adds the cost of the current run; `next` is the run that follows it.
    #[inline]
    fn flush(&mut self, next: Run) {
        let cost = match self.run {
            Run::None => 0,
            Run::Word => {
                let ascii = if self.len == 0 {
                    0
                } else {
                    WORD_BASE + self.len.saturating_sub(WORD_FREE_LEN) * WORD_PER_EXTRA_LETTER
                };
                ascii + self.extra
            }
            Run::Digits => self.len.div_ceil(3) * 1_000,
            Run::Punct => {
                if self.len == 0 {
                    self.extra
                } else if self.len == 1
                    && self.extra == 0
                    && next == Run::Word
                    && !self.punct_after_space
                {
                    PUNCT_GLUED
                } else {
                    PUNCT_FIRST + (self.len - 1) * PUNCT_NEXT + self.extra
                }
            }
            Run::Space => {
                if self.len == 1 && matches!(next, Run::Word | Run::Punct) {
                    0
                } else {
                    WHITESPACE_RUN
                }
            }
            Run::Newline => NEWLINE_RUN,
        };
        self.total = self.total.saturating_add(cost);
    }

    /// The count so far, rounded up.
    pub(crate) fn finish(mut self) -> u64 {
        self.flush(Run::None);
        self.total.div_ceil(1_000)
    }
}

/// The char starting at byte `i` of valid UTF-8 `b`, not ASCII, and its length.
#[inline]
fn decode_utf8(b: &[u8], i: usize) -> (char, usize) {
    let x = u32::from(b[i]);
    let cont = |k: usize| u32::from(b[i + k] & 0x3F);
    let (u, n) = if x < 0xE0 {
        (((x & 0x1F) << 6) | cont(1), 2)
    } else if x < 0xF0 {
        (((x & 0x0F) << 12) | (cont(1) << 6) | cont(2), 3)
    } else {
        (
            ((x & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3),
            4,
        )
    };
    // `b` is valid UTF-8, so this is a char; the fallback is never taken.
    (char::from_u32(u).unwrap_or('\u{FFFD}'), n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The char-by-char loop [`count_tokens`] replaced: the reference for its byte loop.
    fn count_tokens_by_char(text: &str) -> u64 {
        let mut counter = Counter::default();
        for c in text.chars() {
            counter.push(c);
        }
        counter.finish()
    }

    #[test]
    fn byte_loop_matches_char_loop_on_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
        let mut n = 0;
        for category in std::fs::read_dir(dir).unwrap() {
            for file in std::fs::read_dir(category.unwrap().path()).unwrap() {
                let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
                assert_eq!(count_tokens(&text), count_tokens_by_char(&text));
                n += 1;
            }
        }
        assert!(n > 20);
    }

    #[test]
    fn cjk_punctuation_shortcut_is_exact() {
        for c in [
            '\u{3001}', '\u{3002}', '\u{3003}', '\u{FF01}', '\u{FF08}', '\u{FF09}',
        ]
        .into_iter()
        .chain(['\u{FF0C}', '\u{FF1A}', '\u{FF1B}', '\u{FF1F}'])
        .chain('\u{3008}'..='\u{3011}')
        {
            assert!(
                !c.is_whitespace() && !c.is_alphabetic() && !c.is_numeric(),
                "{c}"
            );
            assert_eq!(c.len_utf8(), 3);
        }
    }

    #[test]
    fn cjk_run_table_matches_ranges() {
        for u in 0x3000..=0x9FFF {
            let Some(c) = char::from_u32(u) else { continue };
            let expected = match u {
                0x4E00..=0x9FFF | 0x3400..=0x4DBF => CJK_MILLI,
                0x3040..=0x30FF => KANA_MILLI,
                _ => 0,
            };
            let mut buf = [0u8; 4];
            let mut counter = Counter::default();
            let end = counter.cjk_run(c.encode_utf8(&mut buf).as_bytes(), 0);
            assert_eq!(
                (counter.extra, end),
                (expected, if expected > 0 { 3 } else { 0 })
            );
        }
    }

    #[test]
    fn byte_masks_are_exact() {
        let w = |s: &[u8; 8]| u64::from_le_bytes(*s);
        for (text, spaces) in [
            (b"ab cd ef", 0x0000_8000_0080_0000u64),
            (b"  \x00\xa0 !a ", 0x8000_0080_0000_8080),
            (b"\x20\x21\x1f\xa0   a", 0x0080_8080_0000_0080),
        ] {
            assert_eq!(byte_mask(w(text), b' '), spaces, "{text:?}");
        }
        assert_eq!(lower_mask(w(b"aZz{`\xe1m ")), 0x0080_0000_0080_0080);
    }

    #[test]
    fn lower_prefix_counts_letters() {
        let w = |s: &[u8; 8]| u64::from_le_bytes(*s);
        assert_eq!(lower_prefix(w(b"abcdefgh")), 8);
        assert_eq!(lower_prefix(w(b"azAzzzzz")), 2);
        assert_eq!(lower_prefix(w(b"`abcdefg")), 0);
        assert_eq!(lower_prefix(w(b"abc{defg")), 3);
        assert_eq!(lower_prefix(w(b"ab\xe1cdefg")), 2);
        assert_eq!(lower_prefix(w(b"abcdefg\xfa")), 7);
    }

    proptest! {
        #[test]
        fn byte_loop_matches_char_loop(text in "(\\PC|[a-zA-Z0-9 .,;:(){}\n\r\t-]){0,200}") {
            prop_assert_eq!(count_tokens(&text), count_tokens_by_char(&text));
        }

        #[test]
        fn byte_loop_matches_char_loop_on_words(
            text in "([a-z]{1,12}( |  |[ ,.A-Zé\n\t0-9-]{1,2})){0,60}[a-z ]{0,9}"
        ) {
            prop_assert_eq!(count_tokens(&text), count_tokens_by_char(&text));
            let json = serde_json::to_string(&text).unwrap();
            prop_assert_eq!(count_json_string(&json[1..json.len() - 1]), count_tokens(&text));
        }

        #[test]
        fn json_string_counts_as_its_value(
            text in "(\\PC|[a-z]{1,9} |[\n\"\\\\/\t\u{1}\u{7f}]){0,120}",
            escape_every in 1usize..6,
        ) {
            // As serde_json writes it, and with every few chars escaped as `\uXXXX`.
            let json = serde_json::to_string(&text).unwrap();
            prop_assert_eq!(count_json_string(&json[1..json.len() - 1]), count_tokens(&text));
            let mut raw = String::new();
            for (k, c) in text.chars().enumerate() {
                if k % escape_every == 0 {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        raw.push_str(&format!("\\u{u:04x}"));
                    }
                } else {
                    let s = serde_json::to_string(&c.to_string()).unwrap();
                    raw.push_str(&s[1..s.len() - 1]);
                }
            }
            prop_assert_eq!(count_json_string(&raw), count_tokens(&text));
        }

        #[test]
        fn pieces_count_as_the_whole(text in "\\PC{0,120}", cut in 0usize..120) {
            let mut cut = cut.min(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let mut counter = Counter::default();
            counter.push_str(&text[..cut]);
            counter.push_str(&text[cut..]);
            prop_assert_eq!(counter.finish(), count_tokens(&text));
        }
    }

    #[test]
    fn empty_and_simple() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("a"), 1);
        assert_eq!(count_tokens("hello world"), 2);
        assert_eq!(count_tokens("123456"), 2);
        assert_eq!(count_tokens("1234567"), 3);
    }

    #[test]
    fn whitespace_runs() {
        assert_eq!(count_tokens("   "), 1);
        assert_eq!(count_tokens("\n\n"), 1);
        assert_eq!(count_tokens("a\n    b"), 4);
    }

    #[test]
    fn non_latin_costs_more_per_char() {
        assert!(count_tokens("你好世界") >= 4);
        assert!(count_tokens("😀😀😀") >= 5);
        assert!(count_tokens("こんにちは") >= 4);
    }

    #[test]
    fn bytes_floor() {
        assert_eq!(count_bytes(0), 0);
        assert_eq!(count_bytes(1), 1);
        assert_eq!(count_bytes(8), 2);
    }
}
