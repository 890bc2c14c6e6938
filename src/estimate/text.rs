//! Token count heuristic for text, calibrated against the cl100k tokenizer.
//!
//! The text is cut into pieces roughly the way cl100k's pre-tokenizer cuts it, and each
//! piece is priced by its character class:
//!
//! | piece | cost (tokens) |
//! |---|---|
//! | word (a run of letters) | 1 when it has an ASCII letter; +0.2 for each ASCII letter after six in a row; +0.4 per lower→upper (camelCase) change |
//! | digits | one per group of up to three digits |
//! | punctuation run with `n` ASCII marks | 1 + 0.15 × (n − 1); a lone mark right before a letter (`.get`, `(x`) 0.1 unless a single space comes before it; line breaks right after the run are free |
//! | a single space before a word or punctuation, whitespace before a line break | 0 (cl100k glues it to the next piece) |
//! | other whitespace runs, runs of line breaks | 1 per run |
//! | CJK ideograph / kana / hangul | [`CJK_MILLI`], [`KANA_MILLI`], [`HANGUL_MILLI`] (÷ 1000) each, on top of the word |
//! | other letters (Cyrillic, Greek, accented Latin, Indic, …) | by UTF-8 length: 0.5 (2 bytes), 1.0 (3 bytes), 1.5 (4 bytes), on top of the word |
//! | emoji and pictographs | [`EMOJI_MILLI`] (first of a run) or [`EMOJI_IN_RUN_MILLI`] ÷ 1000 each; U+2300–U+2BFF pictographs 2; joiners and variation selectors 1 |
//! | other symbols, control characters but DEL (a mark) | 1 (up to 3 UTF-8 bytes), 2 (4 bytes) |
//!
//! The sum is rounded up. Over the accuracy corpus in `tests/estimate_accuracy.rs` (English
//! prose, source code, JSON, Chinese, Japanese, emoji-heavy text) the per-category median
//! error against cl100k is within 10 % and the worst sample within 25 %.
//!
//! A JSON string is counted as the text it denotes, escapes and all, without unescaping it
//! first: `\n` is a line break, `\"` a quote. One difference is deliberate: a letter or digit
//! written as a `\u` escape (`\u0041`) counts as one symbol.
//!
//! # How it is fast
//!
//! Every rule above only looks at a character's class and at its neighbours, so the counter
//! reads the text 64 bytes at a time: it turns each block into one bit mask per class,
//! prices all the pieces of the block with bit operations on those masks, and carries the
//! few bits a piece needs across the block boundary. The compares take 64 bytes at a time
//! with AVX-512 and 32 with AVX2 when the CPU has them (found at run time by `pulp`, whose
//! wrappers of the intrinsics are safe to call), else 16 through the `wide` crate. Escapes,
//! CJK ideographs, kana and common CJK punctuation are found by compares as well; other
//! non-ASCII characters are looked at one by one. A test-only reference counter applies
//! the same rules character by character, and property tests hold every path equal to it.
//!
//! Claude's own tokenizer is not public; cl100k is the nearest public reference, and the
//! [`Calibration`](crate::estimate::Calibration) type learns the remaining per-model
//! difference from the usage that upstream reports.

use wide::u8x16;

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
const WORD_FREE_LEN: u32 = 6;
const WORD_PER_EXTRA_LETTER: u64 = 200;
const CAMEL_BOUNDARY: u64 = 400;
const DIGIT_GROUP: u64 = 1_000;
const PUNCT_FIRST: u64 = 1_000;
const PUNCT_NEXT: u64 = 150;
const PUNCT_GLUED: u64 = 100;
const WHITESPACE_RUN: u64 = 1_000;
const NEWLINE_RUN: u64 = 1_000;
const JOINER: u64 = 1_000;
const SYMBOL: u64 = 1_000;

/// Estimated cl100k-like token count of `text`.
///
/// One pass, no allocation; see the [module docs](self) for the cost table.
///
/// ```
/// use bedrock_throttle::estimate::text::count_tokens;
/// assert_eq!(count_tokens(""), 0);
/// assert_eq!(count_tokens("hello world"), 2);
/// assert!(count_tokens("你好，世界") >= 5);
/// ```
pub fn count_tokens(text: &str) -> u64 {
    count::<false>(text.as_bytes())
}

/// [`count_tokens`] of the value of a JSON string given as its raw text between the quotes
/// (escapes as written, already validated), without building the value.
pub(crate) fn count_json_string(raw: &str) -> u64 {
    count::<true>(raw.as_bytes())
}

/// Cost of `len` bytes that are not understood as text (binary or base64 data), at about
/// four bytes a token: the usual cl100k density for base64 and hex is 2.5 to 4 bytes a
/// token, so this is on the low side for such data and is only used as a floor.
pub fn count_bytes(len: usize) -> u64 {
    (len as u64).div_ceil(4)
}

/// The class of a character, as the rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// ASCII letter; `true` when upper case.
    Ascii(bool),
    /// Any other letter (it costs its extra).
    Letter,
    Digit,
    /// ASCII punctuation.
    Punct,
    /// Any other symbol, control characters and emoji (they cost their extra).
    Symbol,
    Space,
    Newline,
}

/// A 4-byte emoji or pictograph (its cost depends on the char before it).
const EMOJI: u64 = u64::MAX;

/// The kind of a char and its extra cost in milli-tokens ([`EMOJI`] for an emoji).
#[inline]
fn classify(c: char) -> (Kind, u64) {
    if c.is_ascii() {
        let kind = match c {
            'a'..='z' => Kind::Ascii(false),
            'A'..='Z' => Kind::Ascii(true),
            '0'..='9' => Kind::Digit,
            '\r' | '\n' => Kind::Newline,
            ' ' | '\t' | '\x0C' => Kind::Space,
            // DEL counts as punctuation, which spares the block counter a compare.
            c if c.is_ascii_control() && c != '\x7F' => return (Kind::Symbol, SYMBOL),
            _ => Kind::Punct,
        };
        return (kind, 0);
    }
    let u = c as u32;
    match u {
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0xF900..=0xFAFF | 0x20000..=0x3FFFF => {
            (Kind::Letter, CJK_MILLI)
        }
        0x3040..=0x30FF | 0x31F0..=0x31FF | 0xFF66..=0xFF9F => (Kind::Letter, KANA_MILLI),
        0xAC00..=0xD7AF | 0x1100..=0x11FF | 0x3130..=0x318F => (Kind::Letter, HANGUL_MILLI),
        0x200D | 0xFE00..=0xFE0F | 0x20E3 => (Kind::Symbol, JOINER),
        0x1F000..=0x1FAFF => (Kind::Symbol, EMOJI),
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
        | 0xFF1F => (Kind::Symbol, SYMBOL),
        0x2600..=0x27BF | 0x2B00..=0x2BFF | 0x2300..=0x23FF => (Kind::Symbol, 2_000),
        0xE0000..=0xE007F => (Kind::Symbol, JOINER),
        _ if c.is_whitespace() => {
            if matches!(u, 0x85 | 0x2028 | 0x2029) {
                (Kind::Newline, 0)
            } else {
                (Kind::Space, 0)
            }
        }
        _ if c.is_alphabetic() => (
            Kind::Letter,
            match c.len_utf8() {
                2 => 500,
                3 => 1_000,
                _ => 1_500,
            },
        ),
        _ if c.is_numeric() => (Kind::Symbol, SYMBOL),
        _ => (Kind::Symbol, if c.len_utf8() == 4 { 2_000 } else { SYMBOL }),
    }
}

/// The kind and extra cost of the char a JSON escape denotes: as [`classify`], except that
/// an escaped ASCII letter or digit is a symbol (see the module docs).
#[inline]
fn classify_escaped(c: char) -> (Kind, u64) {
    if c.is_ascii_alphanumeric() {
        return (Kind::Symbol, SYMBOL);
    }
    classify(c)
}

/// Bit `i` of the result is bit `i - k` of the 128-bit `cur:prev` (`1 <= k < 64`): `cur`
/// shifted towards higher bytes, with the last bits of the previous block shifted in.
#[inline(always)]
fn shl(cur: u64, prev: u64, k: u32) -> u64 {
    (cur << k) | (prev >> (64 - k))
}

/// The bytes of one 64-byte block by class, one bit per byte (bit `i` is byte `i`). Every
/// byte of a multi-byte char or an escape carries the class of its char.
#[derive(Clone, Copy, Debug, Default)]
struct Masks {
    lower: u64,
    upper: u64,
    digit: u64,
    /// Non-ASCII letters.
    letter: u64,
    /// ASCII punctuation.
    punct: u64,
    /// Symbols, control characters and emoji.
    symbol: u64,
    space: u64,
    newline: u64,
    /// Bytes that do not start a char: UTF-8 continuation bytes and the bytes of an escape
    /// after its backslash.
    inner: u64,
}

/// The masks of the chars that are looked at one by one (escapes and non-ASCII).
#[derive(Clone, Copy, Debug, Default)]
struct Assigned {
    letter: u64,
    punct: u64,
    symbol: u64,
    space: u64,
    newline: u64,
    inner: u64,
    /// Every byte assigned here, so that the ASCII masks leave them out.
    taken: u64,
}

/// The first bytes of the next block, which belong to the char that the current block ends
/// in: at most one char crosses a block boundary.
#[derive(Clone, Copy, Debug)]
struct Spill {
    span: u64,
    kind: Kind,
}

impl Default for Spill {
    fn default() -> Self {
        Spill {
            span: 0,
            kind: Kind::Letter,
        }
    }
}

impl Assigned {
    /// The bytes a char of the previous block spills into this one.
    #[inline(always)]
    fn from_spill(spill: Spill) -> Assigned {
        let mut here = Assigned::default();
        if spill.span != 0 {
            here.add(spill.kind, spill.span, spill.span);
        }
        here
    }

    /// Marks the bytes of `span` (bit `i` is byte `i` of this block; bits 64 and up fall in
    /// the next block, kept in `next`) as one char of `kind`.
    #[inline(always)]
    fn set(&mut self, next: &mut Spill, kind: Kind, span: u128) {
        let inner = span & (span - 1);
        self.add(kind, span as u64, inner as u64);
        if span >> 64 != 0 {
            *next = Spill {
                span: (span >> 64) as u64,
                kind,
            };
        }
    }

    #[inline(always)]
    fn add(&mut self, kind: Kind, span: u64, inner: u64) {
        self.taken |= span;
        self.inner |= inner;
        *match kind {
            Kind::Letter | Kind::Ascii(_) => &mut self.letter,
            Kind::Punct => &mut self.punct,
            Kind::Symbol | Kind::Digit => &mut self.symbol,
            Kind::Space => &mut self.space,
            Kind::Newline => &mut self.newline,
        } |= span;
    }
}

/// The ASCII masks of 16 bytes: compares on SSE2 (or the platform's SIMD) through `wide`.
#[derive(Clone, Copy, Debug, Default)]
struct Ascii {
    lower: u64,
    upper: u64,
    digit: u64,
    space: u64,
    backslash: u64,
    /// Bytes of 0x80 and above.
    high: u64,
    /// Control characters (below 0x20).
    control: u64,
}

/// Byte compares over a 64-byte block, `WIDTH` bytes at a time, each giving one bit per byte.
trait Lanes: Copy {
    type V: Copy;
    const WIDTH: usize;
    /// The `WIDTH` bytes of `block` from `at`.
    fn load(self, block: &[u8; 64], at: usize) -> Self::V;
    fn equal(self, v: Self::V, x: u8) -> u64;
    /// Bytes in `lo..=hi`.
    fn in_range(self, v: Self::V, lo: u8, hi: u8) -> u64;
    /// Bytes in `lo..=hi` once bit 5 is set (ASCII letters of either case for `a..=z`).
    fn in_range_folded(self, v: Self::V, lo: u8, hi: u8) -> u64;
    /// Bytes with bit 7 set.
    fn bit7(self, v: Self::V) -> u64;
    /// Bytes with bit 6 set.
    fn bit6(self, v: Self::V) -> u64;

    /// `f` of each `WIDTH` bytes of `block`, gathered into 64 bits.
    #[inline(always)]
    fn each(self, block: &[u8; 64], mut f: impl FnMut(Self::V) -> u64) -> u64 {
        let mut m = 0;
        let mut at = 0;
        while at < 64 {
            m |= f(self.load(block, at)) << at;
            at += Self::WIDTH;
        }
        m
    }
}

/// 16 bytes at a time through `wide` (SSE2 on x86-64, NEON on aarch64, scalar elsewhere).
#[derive(Clone, Copy, Debug)]
struct Portable;

impl Lanes for Portable {
    type V = u8x16;
    const WIDTH: usize = 16;

    #[inline(always)]
    fn load(self, block: &[u8; 64], at: usize) -> u8x16 {
        let mut lanes = [0u8; 16];
        lanes.copy_from_slice(&block[at..at + 16]);
        u8x16::new(lanes)
    }

    #[inline(always)]
    fn equal(self, v: u8x16, x: u8) -> u64 {
        u64::from(v.simd_eq(u8x16::splat(x)).to_bitmask())
    }

    #[inline(always)]
    fn in_range(self, v: u8x16, lo: u8, hi: u8) -> u64 {
        let d = v - u8x16::splat(lo);
        u64::from(d.min(u8x16::splat(hi - lo)).simd_eq(d).to_bitmask())
    }

    #[inline(always)]
    fn in_range_folded(self, v: u8x16, lo: u8, hi: u8) -> u64 {
        self.in_range(v | u8x16::splat(0x20), lo, hi)
    }

    #[inline(always)]
    fn bit7(self, v: u8x16) -> u64 {
        u64::from(v.to_bitmask())
    }

    #[inline(always)]
    fn bit6(self, v: u8x16) -> u64 {
        // Doubling a byte moves bit 6 to bit 7.
        u64::from((v + v).to_bitmask())
    }
}

/// 32 bytes at a time with AVX2, through `pulp`'s safe wrappers of the intrinsics; only
/// made once `pulp` has found the CPU to be x86-64-v3.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
struct Avx2(pulp::x86::V3);

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2 {
    type V = std::arch::x86_64::__m256i;
    const WIDTH: usize = 32;

    #[inline(always)]
    fn load(self, block: &[u8; 64], at: usize) -> Self::V {
        let mut lanes = [0u8; 32];
        lanes.copy_from_slice(&block[at..at + 32]);
        pulp::cast(lanes)
    }

    #[inline(always)]
    fn equal(self, v: Self::V, x: u8) -> u64 {
        let s = self.0;
        let eq = s.avx2._mm256_cmpeq_epi8(v, s.avx._mm256_set1_epi8(x as i8));
        u64::from(s.avx2._mm256_movemask_epi8(eq) as u32)
    }

    #[inline(always)]
    fn in_range(self, v: Self::V, lo: u8, hi: u8) -> u64 {
        let s = self.0;
        let d = s.avx2._mm256_sub_epi8(v, s.avx._mm256_set1_epi8(lo as i8));
        let clamped = s
            .avx2
            ._mm256_min_epu8(d, s.avx._mm256_set1_epi8((hi - lo) as i8));
        u64::from(
            s.avx2
                ._mm256_movemask_epi8(s.avx2._mm256_cmpeq_epi8(clamped, d)) as u32,
        )
    }

    #[inline(always)]
    fn in_range_folded(self, v: Self::V, lo: u8, hi: u8) -> u64 {
        let s = self.0;
        self.in_range(
            s.avx2._mm256_or_si256(v, s.avx._mm256_set1_epi8(0x20)),
            lo,
            hi,
        )
    }

    #[inline(always)]
    fn bit7(self, v: Self::V) -> u64 {
        u64::from(self.0.avx2._mm256_movemask_epi8(v) as u32)
    }

    #[inline(always)]
    fn bit6(self, v: Self::V) -> u64 {
        let s = self.0;
        u64::from(s.avx2._mm256_movemask_epi8(s.avx2._mm256_add_epi8(v, v)) as u32)
    }
}

/// The whole block at a time with AVX-512 (BW), through `pulp`'s safe wrappers: each
/// compare gives its 64-bit mask directly. Only made once `pulp` has found the CPU to be
/// x86-64-v4.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
struct Avx512(pulp::x86::V4);

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512 {
    type V = std::arch::x86_64::__m512i;
    const WIDTH: usize = 64;

    #[inline(always)]
    fn load(self, block: &[u8; 64], _at: usize) -> Self::V {
        pulp::cast(*block)
    }

    #[inline(always)]
    fn equal(self, v: Self::V, x: u8) -> u64 {
        let s = self.0;
        s.avx512bw
            ._mm512_cmpeq_epi8_mask(v, s.avx512f._mm512_set1_epi8(x as i8))
    }

    #[inline(always)]
    fn in_range(self, v: Self::V, lo: u8, hi: u8) -> u64 {
        let s = self.0;
        let d = s
            .avx512bw
            ._mm512_sub_epi8(v, s.avx512f._mm512_set1_epi8(lo as i8));
        s.avx512bw
            ._mm512_cmple_epu8_mask(d, s.avx512f._mm512_set1_epi8((hi - lo) as i8))
    }

    #[inline(always)]
    fn in_range_folded(self, v: Self::V, lo: u8, hi: u8) -> u64 {
        let s = self.0;
        self.in_range(
            s.avx512f
                ._mm512_or_si512(v, s.avx512f._mm512_set1_epi8(0x20)),
            lo,
            hi,
        )
    }

    #[inline(always)]
    fn bit7(self, v: Self::V) -> u64 {
        self.0.avx512bw._mm512_movepi8_mask(v)
    }

    #[inline(always)]
    fn bit6(self, v: Self::V) -> u64 {
        let s = self.0;
        s.avx512bw
            ._mm512_movepi8_mask(s.avx512bw._mm512_add_epi8(v, v))
    }
}

impl Ascii {
    /// The masks of `block`; the backslashes only for `JSON`, the control characters
    /// only without it (they are invalid in a JSON string).
    #[inline(always)]
    fn of<const JSON: bool, L: Lanes>(l: L, block: &[u8; 64]) -> Ascii {
        let mut m = Ascii::default();
        let mut at = 0;
        while at < 64 {
            let v = l.load(block, at);
            let letter = l.in_range_folded(v, b'a', b'z');
            let upper = l.in_range(v, b'A', b'Z');
            m.lower |= (letter & !upper) << at;
            m.upper |= upper << at;
            m.digit |= l.in_range(v, b'0', b'9') << at;
            m.space |= l.equal(v, b' ') << at;
            if JSON {
                m.backslash |= l.equal(v, b'\\') << at;
            } else {
                m.control |= l.in_range(v, 0, 0x1F) << at;
            }
            m.high |= l.bit7(v) << at;
            at += L::WIDTH;
        }
        m
    }
}

/// The bytes of a block that, after a backslash, make an escape of each kind.
#[derive(Clone, Copy, Debug, Default)]
struct Escaped {
    /// `n` and `r`.
    newline: u64,
    /// `t` and `f`.
    space: u64,
    b: u64,
    u: u64,
}

impl Escaped {
    #[inline(always)]
    fn of<L: Lanes>(l: L, block: &[u8; 64]) -> Escaped {
        Escaped {
            newline: l.each(block, |v| l.equal(v, b'n') | l.equal(v, b'r')),
            space: l.each(block, |v| l.equal(v, b't') | l.equal(v, b'f')),
            b: l.each(block, |v| l.equal(v, b'b')),
            u: l.each(block, |v| l.equal(v, b'u')),
        }
    }
}

/// The non-ASCII masks of a block, and the CJK ideographs and kana found by SIMD.
#[derive(Clone, Copy, Debug, Default)]
struct NonAscii {
    /// UTF-8 lead bytes of multi-byte chars (0xC0 and above).
    lead: u64,
    /// Lead bytes of CJK ideographs (U+3400..U+3FFF, U+4000..U+4DBF, U+4E00..U+9FFF).
    ideograph: u64,
    /// Lead bytes of kana (U+3040..U+30FF).
    kana: u64,
    /// Lead bytes of common CJK and full-width punctuation, which cost [`SYMBOL`]:
    /// U+3001..U+3003, U+3008..U+3011 and the full-width forms U+FF00..U+FF3F but letters.
    punct: u64,
    /// Lead bytes of full-width Latin letters (U+FF21..U+FF3A), which cost 1 each.
    wide_letter: u64,
}

impl NonAscii {
    /// The masks of `block`. A char whose lead is the block's last byte is left to the
    /// char-by-char path (its second byte, which tells its block, is in the next block).
    #[inline(always)]
    fn of<L: Lanes>(l: L, block: &[u8; 64], high: u64) -> NonAscii {
        let bit6 = l.each(block, |v| l.bit6(v));
        let e3 = l.each(block, |v| l.equal(v, 0xE3));
        let e4 = l.each(block, |v| l.equal(v, 0xE4));
        let e4_e9 = l.each(block, |v| l.in_range(v, 0xE4, 0xE9));
        let b7 = l.each(block, |v| l.equal(v, 0xB7));
        let k2 = l.each(block, |v| l.in_range(v, 0x81, 0x83));
        let i2 = l.each(block, |v| l.in_range(v, 0x90, 0xBF));
        let (mut punct, mut wide_letter) = (0, 0);
        // Lead E3 then 80, or EF then BC, and a third byte in this block.
        let e3_80 = e3 & (l.each(block, |v| l.equal(v, 0x80)) >> 1);
        let ef_bc =
            l.each(block, |v| l.equal(v, 0xEF)) & (l.each(block, |v| l.equal(v, 0xBC)) >> 1);
        if (e3_80 | ef_bc) & (u64::MAX >> 2) != 0 {
            let brackets = l.each(block, |v| l.in_range(v, 0x88, 0x91));
            let letters = l.each(block, |v| l.in_range(v, 0xA1, 0xBA)) >> 2;
            punct = ((e3_80 & ((k2 | brackets) >> 2)) | (ef_bc & !letters)) & (u64::MAX >> 2);
            wide_letter = ef_bc & letters & (u64::MAX >> 2);
        }
        let last = !(1u64 << 63);
        // Leads E4..E9 are ideographs but for E4 B7 (U+4DC0..U+4DFF, hexagram symbols);
        // lead E3 gives kana with 81..83 and ideographs with 90..BF.
        let ideograph = ((e4_e9 & !(e4 & (b7 >> 1))) | (e3 & (i2 >> 1))) & last;
        NonAscii {
            lead: high & bit6,
            ideograph,
            kana: e3 & (k2 >> 1) & last,
            punct,
            wide_letter,
        }
    }
}

/// Counts `b` (valid UTF-8; with `JSON`, the validated raw text of a JSON string). On an
/// x86-64 CPU with AVX-512 (x86-64-v4) or AVX2, `popcnt` and BMI (x86-64-v3), found at run
/// time by `pulp`, the whole count is compiled for those; elsewhere it runs on the baseline
/// instruction set.
fn count<const JSON: bool>(b: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        static ARCH: std::sync::OnceLock<X86> = std::sync::OnceLock::new();
        match *ARCH.get_or_init(X86::detect) {
            X86::V4(v4) => return v4.vectorize(Count::<JSON, _>(b, Avx512(v4))),
            X86::V3(v3) => return v3.vectorize(Count::<JSON, _>(b, Avx2(v3))),
            X86::Baseline => {}
        }
    }
    count_blocks::<JSON, Portable>(b, Portable)
}

/// The x86-64 instruction sets the counter has a path for.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
enum X86 {
    V4(pulp::x86::V4),
    V3(pulp::x86::V3),
    Baseline,
}

#[cfg(target_arch = "x86_64")]
impl X86 {
    fn detect() -> X86 {
        if let Some(v4) = pulp::x86::V4::try_new() {
            X86::V4(v4)
        } else if let Some(v3) = pulp::x86::V3::try_new() {
            X86::V3(v3)
        } else {
            X86::Baseline
        }
    }
}

/// [`count_blocks`] as a closure for `pulp`'s `vectorize`, which runs it with the target
/// features of its instruction set enabled.
#[cfg(target_arch = "x86_64")]
struct Count<'a, const JSON: bool, L: Lanes>(&'a [u8], L);

#[cfg(target_arch = "x86_64")]
impl<const JSON: bool, L: Lanes> pulp::NullaryFnOnce for Count<'_, JSON, L> {
    type Output = u64;
    #[inline(always)]
    fn call(self) -> u64 {
        count_blocks::<JSON, L>(self.0, self.1)
    }
}

#[inline(always)]
fn count_blocks<const JSON: bool, L: Lanes>(b: &[u8], lanes: L) -> u64 {
    let mut rules = Rules::default();
    let mut pending = Spill::default();
    let mut last_emoji_end = usize::MAX;
    let mut base = 0;
    while base < b.len() {
        let len = (b.len() - base).min(64);
        // A full block is read where it lies; the last, short one from a zeroed copy.
        let mut tail = [0u8; 64];
        let (block, valid): (&[u8; 64], u64) = match b[base..].first_chunk::<64>() {
            Some(block) => (block, u64::MAX),
            None => {
                tail[..len].copy_from_slice(&b[base..]);
                (&tail, (1u64 << len) - 1)
            }
        };
        let ascii = Ascii::of::<JSON, L>(lanes, block);
        let mut here = Assigned::from_spill(pending);
        let mut next = Spill::default();
        // Escapes and non-ASCII chars, in order (an emoji's cost depends on the one before).
        let mut todo = 0;
        let backslash = ascii.backslash & valid & !here.taken;
        if JSON && backslash != 0 {
            if backslash & (backslash << 1) == 0 && backslash >> 63 == 0 {
                // Single backslashes, none at the block's end: each starts a two-byte
                // escape, but for `\u`, which is taken one by one below.
                let escaped = Escaped::of(lanes, block);
                let second = backslash << 1;
                let unicode = second & escaped.u;
                let newline = second & escaped.newline;
                let space = second & escaped.space;
                let symbol = second & escaped.b;
                let punct = second & !(escaped.u | escaped.newline | escaped.space | escaped.b);
                for (kind, m) in [
                    (Kind::Newline, newline),
                    (Kind::Space, space),
                    (Kind::Symbol, symbol),
                    (Kind::Punct, punct),
                ] {
                    here.add(kind, m | (m >> 1), m);
                }
                rules.total += SYMBOL * u64::from(symbol.count_ones());
                todo = unicode >> 1;
            } else {
                todo = backslash;
            }
        }
        let mut continuation = 0;
        if ascii.high != 0 {
            let non_ascii = NonAscii::of(lanes, block, ascii.high);
            continuation = ascii.high & !non_ascii.lead;
            let ideograph = non_ascii.ideograph & valid;
            let kana = non_ascii.kana & valid;
            let punct = non_ascii.punct & valid;
            let wide_letter = non_ascii.wide_letter & valid;
            rules.total += CJK_MILLI * u64::from(ideograph.count_ones())
                + KANA_MILLI * u64::from(kana.count_ones())
                + SYMBOL * u64::from((punct | wide_letter).count_ones());
            for (kind, leads) in [
                (Kind::Letter, ideograph | kana | wide_letter),
                (Kind::Symbol, punct),
            ] {
                let leads = u128::from(leads);
                let inner = (leads << 1) | (leads << 2);
                here.add(kind, (leads | inner) as u64, inner as u64);
                let spill = (inner >> 64) as u64;
                if spill != 0 {
                    next = Spill { span: spill, kind };
                }
            }
            todo |= non_ascii.lead & !(ideograph | kana | punct | wide_letter);
        }
        todo &= valid & !here.taken;
        while todo != 0 {
            let j = todo.trailing_zeros();
            todo &= todo - 1;
            let at = base + j as usize;
            let x = b[at];
            if JSON && x == b'\\' {
                let (kind, cost, n) = escape(b, at, &mut last_emoji_end);
                rules.total += cost;
                let span = ((1u128 << n) - 1) << j;
                here.set(&mut next, kind, span);
                todo &= !(span as u64);
                continue;
            }
            let (c, n) = decode_utf8(b, at);
            let (kind, cost) = classify(c);
            rules.total += emoji_cost(cost, at, n, &mut last_emoji_end);
            here.set(&mut next, kind, ((1u128 << n) - 1) << j);
        }
        let free = valid & !here.taken;
        let mut masks = Masks {
            lower: ascii.lower & free,
            upper: ascii.upper & free,
            digit: ascii.digit & free,
            letter: here.letter & valid,
            punct: here.punct & valid,
            symbol: here.symbol & valid,
            space: (ascii.space & free) | (here.space & valid),
            newline: here.newline & valid,
            inner: (continuation | here.inner) & valid,
        };
        let plain_punct = !(ascii.lower | ascii.upper | ascii.digit | ascii.space | ascii.high);
        if JSON {
            // Validated: every backslash is in an escape.
            masks.punct |= plain_punct & free;
        } else {
            let control = ascii.control & free;
            let mut space = 0;
            let mut newline = 0;
            if control != 0 {
                let l = lanes;
                space = control & l.each(block, |v| l.equal(v, b'\t') | l.equal(v, 0x0C));
                newline = control & l.each(block, |v| l.equal(v, b'\r') | l.equal(v, b'\n'));
                let symbols = control & !space & !newline;
                rules.total += SYMBOL * u64::from(symbols.count_ones());
                masks.symbol |= symbols;
            }
            masks.space |= space;
            masks.newline |= newline;
            masks.punct |= plain_punct & free & !control;
        }
        rules.block(&masks);
        pending = next;
        base += 64;
    }
    // Of the rules, only a run of spaces that ends the last full block looks past the end
    // (a short last block leaves empty bytes after the text).
    rules.total += WHITESPACE_RUN * (rules.prev_space >> 63);
    rules.total.div_ceil(1_000)
}

/// The extra cost of a char of cost `cost` (from [`classify`]) at byte `at`, `n` bytes long:
/// an emoji costs [`EMOJI_IN_RUN_MILLI`] right after another one, else [`EMOJI_MILLI`].
#[inline]
fn emoji_cost(cost: u64, at: usize, n: usize, last_emoji_end: &mut usize) -> u64 {
    if cost != EMOJI {
        return cost;
    }
    let follows = *last_emoji_end == at;
    *last_emoji_end = at + n;
    if follows {
        EMOJI_IN_RUN_MILLI
    } else {
        EMOJI_MILLI
    }
}

/// The kind, extra cost and length of the (validated) escape at `b[at]`, a backslash.
#[inline]
fn escape(b: &[u8], at: usize, last_emoji_end: &mut usize) -> (Kind, u64, usize) {
    match b.get(at + 1) {
        Some(b'n' | b'r') => (Kind::Newline, 0, 2),
        Some(b't' | b'f') => (Kind::Space, 0, 2),
        Some(b'b') => (Kind::Symbol, SYMBOL, 2),
        Some(b'u') => {
            let (c, n) = crate::estimate::scan::escape_at(b, at);
            let n = n.min(b.len() - at);
            let (kind, cost) = classify_escaped(c);
            (kind, emoji_cost(cost, at, n, last_emoji_end), n)
        }
        Some(_) => (Kind::Punct, 0, 2),
        None => (Kind::Punct, 0, 1),
    }
}

/// Positions in `m` reached from a bit of `k` (a subset of `m`) going up through `m`: the
/// bytes of each run of `m` from its first `k` bit on. The previous block's fill is the only
/// state: a run filled up to its last byte goes on filling in the next block.
#[derive(Clone, Copy, Debug, Default)]
struct Fill {
    prev: u64,
}

impl Fill {
    /// The fill of this block, and the same shifted up a byte (the fill at the byte before).
    #[inline(always)]
    fn fill(&mut self, k: u64, m: u64) -> (u64, u64) {
        let rest = m & !k;
        // A bit just above a `k` bit (or above a filled last byte of the previous block)
        // that lands on a `rest` run carries through it, and the carry stops at the run's
        // end: the byte after a `rest` bit is never a seed bit, as `rest` and `k` are apart.
        let seed = shl(k, self.prev >> 63 << 63, 1);
        let f = k | ((seed.wrapping_add(rest) ^ rest) & rest);
        let before = shl(f, self.prev, 1);
        self.prev = f;
        (f, before)
    }
}

/// The piece rules over blocks of masks, with what each needs of the previous block.
#[derive(Debug, Default)]
struct Rules {
    total: u64,
    /// The previous block's masks.
    prev_lower: u64,
    prev_digit: u64,
    prev_space: u64,
    prev_newline: u64,
    prev_ascii: u64,
    prev_run: u64,
    prev_lone: u64,
    prev_groups: u64,
    prev_glue: u64,
    letters_from_ascii: Fill,
    punct_from_ascii: Fill,
    lone: Fill,
    unglued: Fill,
}

impl Rules {
    #[inline(always)]
    fn block(&mut self, m: &Masks) {
        let ascii = m.lower | m.upper;
        let word = ascii | m.letter;
        let mut total = self.total;

        // Lone spaces: the last byte of a run of spaces that holds one char.
        let second_space = m.space & !m.inner & shl(m.space, self.prev_space, 1);
        let lone = m.space & !self.lone.fill(second_space, m.space).0;

        // Words: one per run of letters that has an ASCII letter, counted at its first one.
        let (_, reached) = self.letters_from_ascii.fill(ascii, word);
        let words = ascii & !reached;
        // ASCII letters after six in a row.
        let a = (u128::from(ascii) << 64) | u128::from(self.prev_ascii);
        let a2 = a & (a << 1);
        let a4 = a2 & (a2 << 2);
        let long = ((a4 & (a4 << 3)) >> 64) as u64;
        total += WORD_PER_EXTRA_LETTER * u64::from(long.count_ones());
        // The shifts above take six letters in a row.
        const { assert!(WORD_FREE_LEN == 6) };
        let camel = m.upper & shl(m.lower, self.prev_lower, 1);
        total += CAMEL_BOUNDARY * u64::from(camel.count_ones());

        // Digits: one per three, counted at offsets 0, 3, 6, … of each run.
        let d = m.digit;
        let mut groups = 0;
        if d != 0 {
            let d1 = shl(d, self.prev_digit, 1);
            let starts = d & !d1;
            let three = d & d1 & shl(d, self.prev_digit, 2);
            groups = starts | (shl(0, self.prev_groups, 3) & three);
            if three != 0 {
                loop {
                    let more = starts | (shl(groups, self.prev_groups, 3) & three);
                    if more == groups {
                        break;
                    }
                    groups = more;
                }
            }
        }

        // Punctuation runs with ASCII marks: 1, and 0.15 for each mark after the first.
        let run = m.punct | m.symbol;
        let marks = m.punct & !m.inner;
        let (_, reached) = self.punct_from_ascii.fill(marks, run);
        let runs = marks & !reached;
        total += (PUNCT_FIRST - PUNCT_NEXT) * u64::from(runs.count_ones())
            + PUNCT_NEXT * u64::from(marks.count_ones());
        // A run of one ASCII mark right before a letter, not after a lone space, costs
        // PUNCT_GLUED instead of PUNCT_FIRST.
        let run_prev = shl(run, self.prev_run, 1);
        let second_char = run & !m.inner & run_prev;
        let after_lone = run & !run_prev & shl(lone, self.prev_lone, 1);
        let (spoilt, _) = self.unglued.fill(second_char | m.symbol | after_lone, run);
        let glue = run & !spoilt;
        let glued = word & shl(glue, self.prev_glue, 1);
        total -= (PUNCT_FIRST - PUNCT_GLUED) * u64::from(glued.count_ones());

        // Whitespace runs: 1, except before a line break, or one char before a word or
        // punctuation.
        let after_space = shl(m.space, self.prev_space, 1) & !m.space;
        let free = m.newline | (shl(lone, self.prev_lone, 1) & (word | run));
        total += WHITESPACE_RUN * u64::from((after_space & !free).count_ones());

        // Runs of line breaks, unless they follow punctuation.
        let breaks = m.newline & !shl(m.newline, self.prev_newline, 1) & !run_prev;
        // Word starts, digit groups and line breaks fall on bytes of different classes,
        // so one count serves the three.
        const { assert!(WORD_BASE == DIGIT_GROUP && WORD_BASE == NEWLINE_RUN) };
        total += WORD_BASE * u64::from((words | groups | breaks).count_ones());

        self.total = total;
        self.prev_lower = m.lower;
        self.prev_digit = m.digit;
        self.prev_space = m.space;
        self.prev_newline = m.newline;
        self.prev_ascii = ascii;
        self.prev_run = run;
        self.prev_lone = lone;
        self.prev_groups = groups;
        self.prev_glue = glue;
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

    /// Resolves the emoji costs of a sequence of classified chars: an emoji right after
    /// another costs less.
    fn resolve(chars: Vec<(Kind, u64)>) -> Vec<(Kind, u64)> {
        let mut out = Vec::with_capacity(chars.len());
        let mut after_emoji = false;
        for (kind, cost) in chars {
            let emoji = cost == EMOJI;
            let cost = match (emoji, after_emoji) {
                (true, true) => EMOJI_IN_RUN_MILLI,
                (true, false) => EMOJI_MILLI,
                _ => cost,
            };
            after_emoji = emoji;
            out.push((kind, cost));
        }
        out
    }

    fn chars_of(text: &str) -> Vec<(Kind, u64)> {
        resolve(text.chars().map(classify).collect())
    }

    fn chars_of_json(raw: &str) -> Vec<(Kind, u64)> {
        let b = raw.as_bytes();
        let mut chars = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' {
                let (c, n) = crate::estimate::scan::escape_at(b, i);
                chars.push(match b[i + 1] {
                    b'n' | b'r' => (Kind::Newline, 0),
                    b't' | b'f' => (Kind::Space, 0),
                    b'b' => (Kind::Symbol, SYMBOL),
                    b'u' => classify_escaped(c),
                    _ => (Kind::Punct, 0),
                });
                i += n;
            } else {
                let c = raw[i..].chars().next().unwrap();
                chars.push(classify(c));
                i += c.len_utf8();
            }
        }
        resolve(chars)
    }

    /// The rules of the module docs applied char by char: the reference for the block
    /// counter.
    fn reference(chars: &[(Kind, u64)]) -> u64 {
        #[derive(PartialEq, Clone, Copy)]
        enum Group {
            Word,
            Digits,
            Run,
            Space,
            Newline,
        }
        let group = |k: Kind| match k {
            Kind::Ascii(_) | Kind::Letter => Group::Word,
            Kind::Digit => Group::Digits,
            Kind::Punct | Kind::Symbol => Group::Run,
            Kind::Space => Group::Space,
            Kind::Newline => Group::Newline,
        };
        let at = |i: usize| chars.get(i).map(|&(k, _)| group(k));
        let mut total: u64 = chars.iter().map(|&(_, cost)| cost).sum();
        let mut i = 0;
        while i < chars.len() {
            let g = group(chars[i].0);
            let mut j = i;
            while j < chars.len() && group(chars[j].0) == g {
                j += 1;
            }
            let next = at(j);
            let lone_space_before = i >= 1
                && at(i - 1) == Some(Group::Space)
                && (i < 2 || at(i - 2) != Some(Group::Space));
            match g {
                Group::Word => {
                    let mut ascii_in_row = 0;
                    let mut any_ascii = false;
                    for t in i..j {
                        if let Kind::Ascii(upper) = chars[t].0 {
                            any_ascii = true;
                            if ascii_in_row >= WORD_FREE_LEN {
                                total += WORD_PER_EXTRA_LETTER;
                            }
                            ascii_in_row += 1;
                            if upper && t > i && chars[t - 1].0 == Kind::Ascii(false) {
                                total += CAMEL_BOUNDARY;
                            }
                        } else {
                            ascii_in_row = 0;
                        }
                    }
                    if any_ascii {
                        total += WORD_BASE;
                    }
                }
                Group::Digits => total += DIGIT_GROUP * ((j - i) as u64).div_ceil(3),
                Group::Run => {
                    let marks = chars[i..j].iter().filter(|c| c.0 == Kind::Punct).count() as u64;
                    if marks > 0 {
                        total += if j - i == 1 && next == Some(Group::Word) && !lone_space_before {
                            PUNCT_GLUED
                        } else {
                            PUNCT_FIRST + PUNCT_NEXT * (marks - 1)
                        };
                    }
                }
                Group::Space => {
                    let free = next == Some(Group::Newline)
                        || (j - i == 1 && matches!(next, Some(Group::Word | Group::Run)));
                    if !free {
                        total += WHITESPACE_RUN;
                    }
                }
                Group::Newline => {
                    if i == 0 || at(i - 1) != Some(Group::Run) {
                        total += NEWLINE_RUN;
                    }
                }
            }
            i = j;
        }
        total.div_ceil(1_000)
    }

    #[test]
    fn blocks_match_reference_on_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
        let mut n = 0;
        for category in std::fs::read_dir(dir).unwrap() {
            for file in std::fs::read_dir(category.unwrap().path()).unwrap() {
                let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
                assert_eq!(count_tokens(&text), reference(&chars_of(&text)));
                let json = serde_json::to_string(&text).unwrap();
                let raw = &json[1..json.len() - 1];
                assert_eq!(count_json_string(raw), count_tokens(&text));
                n += 1;
            }
        }
        assert!(n > 20);
    }

    #[test]
    fn simd_ideographs_and_kana_match_classify() {
        let (mut ideographs, mut kana, mut punct) = (0, 0, 0);
        for u in (0x3000..=0x9FFF).chain(0xFF00..=0xFFFF) {
            let Some(c) = char::from_u32(u) else { continue };
            for at in [0, 30, 61, 62] {
                let mut block = [b'a'; 64];
                let mut buf = [0u8; 4];
                let bytes = c.encode_utf8(&mut buf).as_bytes();
                let n = bytes.len().min(64 - at);
                block[at..at + n].copy_from_slice(&bytes[..n]);
                let high = block
                    .iter()
                    .enumerate()
                    .fold(0u64, |m, (i, &x)| m | (u64::from(x >= 0x80) << i));
                let m = NonAscii::of(Portable, &block, high);
                assert_eq!(m.lead, 1 << at, "{u:x}");
                assert_eq!(m.ideograph & m.kana, 0);
                if m.ideograph != 0 {
                    assert_eq!(classify(c), (Kind::Letter, CJK_MILLI), "{u:x}");
                    ideographs += 1;
                }
                if m.kana != 0 {
                    assert_eq!(classify(c), (Kind::Letter, KANA_MILLI), "{u:x}");
                    kana += 1;
                }
                assert_eq!(m.punct & m.wide_letter, 0);
                if m.punct != 0 {
                    assert_eq!(classify(c), (Kind::Symbol, SYMBOL), "{u:x}");
                    punct += 1;
                }
                if m.wide_letter != 0 {
                    assert_eq!(classify(c), (Kind::Letter, 1_000), "{u:x}");
                }
                // Three bytes are needed to tell punctuation.
                if at < 62 && matches!(u, 0x3001..=0x3003 | 0x3008..=0x3011 | 0xFF00..=0xFF3F) {
                    assert_ne!(m.punct | m.wide_letter, 0, "{u:x}");
                }
                // Only a lead at the last byte is left to the char-by-char path.
                if at < 63 && matches!(u, 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF) {
                    assert_ne!(m.ideograph | m.kana, 0, "{u:x}");
                }
            }
        }
        assert_eq!(
            (ideographs, kana),
            (4 * (0x4DC0 - 0x3400 + 0x5200), 4 * 0xC0)
        );
        assert_eq!(punct, 3 * (3 + 10 + 64 - 26));
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

    /// Text of pieces that meet at every offset of a block: words, marks, spaces, line
    /// breaks, digits, escapes' raw chars and non-ASCII chars of every length.
    fn mixed_text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                "[a-z]{1,12}",
                "[A-Z][a-z]{0,5}",
                "[a-zA-Z]{7,30}",
                "[0-9]{1,9}",
                "[ ]{1,3}",
                "[\t\r\n\u{b}\u{c}\u{1}\u{7f}]{1,2}",
                "[.,;:(){}\"\\\\/<>=!-]{1,4}",
                "[é中あ한😀😁€\u{a0}\u{3000}\u{2028}\u{200d}\u{fe0f}，。]{1,4}",
                "\\PC{1,3}",
            ],
            0..80,
        )
        .prop_map(|parts| parts.concat())
    }

    /// The count of `b` on every path this CPU can run, whichever `count` would choose.
    fn every_path<const JSON: bool>(b: &[u8]) -> Vec<(&'static str, u64)> {
        #[allow(unused_mut)]
        let mut counts = vec![("portable", count_blocks::<JSON, Portable>(b, Portable))];
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(v3) = pulp::x86::V3::try_new() {
                counts.push(("avx2", v3.vectorize(Count::<JSON, _>(b, Avx2(v3)))));
            }
            if let Some(v4) = pulp::x86::V4::try_new() {
                counts.push(("avx512", v4.vectorize(Count::<JSON, _>(b, Avx512(v4)))));
            }
        }
        counts
    }

    /// The raw JSON text of `text`, as serde_json writes it and, with `escape_every`, with
    /// every few chars written as `\uXXXX` escapes.
    fn raw_json(text: &str, escape_every: usize) -> String {
        let mut raw = String::new();
        for (k, c) in text.chars().enumerate() {
            if escape_every > 0 && k % escape_every == 0 {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    raw.push_str(&format!("\\u{u:04x}"));
                }
            } else {
                let s = serde_json::to_string(&c.to_string()).unwrap();
                raw.push_str(&s[1..s.len() - 1]);
            }
        }
        raw
    }

    proptest! {
        #[test]
        fn blocks_match_reference(text in mixed_text()) {
            let expected = reference(&chars_of(&text));
            prop_assert_eq!(count_tokens(&text), expected);
            for (path, n) in every_path::<false>(text.as_bytes()) {
                prop_assert_eq!(n, expected, "{}", path);
            }
        }

        #[test]
        fn blocks_match_reference_on_any_text(text in "\\PC{0,300}") {
            prop_assert_eq!(count_tokens(&text), reference(&chars_of(&text)));
        }

        #[test]
        fn json_blocks_match_reference(text in mixed_text(), escape_every in 0usize..6) {
            let raw = raw_json(&text, escape_every);
            let expected = reference(&chars_of_json(&raw));
            prop_assert_eq!(count_json_string(&raw), expected);
            for (path, n) in every_path::<true>(raw.as_bytes()) {
                prop_assert_eq!(n, expected, "{}", path);
            }
        }

        #[test]
        fn json_string_counts_as_its_value(text in mixed_text()) {
            // serde_json escapes only quotes, backslashes and control chars, which count
            // the same escaped or not.
            let json = serde_json::to_string(&text).unwrap();
            prop_assert_eq!(count_json_string(&json[1..json.len() - 1]), count_tokens(&text));
        }
    }

    #[test]
    fn rules_by_example() {
        for (text, tokens) in [
            ("", 0),
            ("a", 1),
            ("hello world", 2),
            ("123456", 2),
            ("1234567", 3),
            ("   ", 1),
            ("\n\n", 1),
            ("a\n    b", 4),
            // camelCase: 1 + 0.4, rounded up.
            ("camelCase", 2),
            // Seven letters: 1.2.
            ("letters", 2),
            // `.get` glued, ` (` after a lone space is not.
            ("x.get", 3),
            ("f (x", 3),
            // A mark and the line breaks after it are one piece.
            ("x;\n\ny", 3),
            // Whitespace before a line break is free.
            ("x  \ny", 3),
            ("😀😀😀", 8),
            ("你好世界", 6),
        ] {
            assert_eq!(count_tokens(text), tokens, "{text:?}");
            assert_eq!(reference(&chars_of(text)), tokens, "{text:?}");
        }
    }

    #[test]
    fn escapes_count_as_what_they_denote() {
        assert_eq!(count_json_string(r"a\nb"), count_tokens("a\nb"));
        assert_eq!(
            count_json_string(r#"say \"hi\""#),
            count_tokens("say \"hi\"")
        );
        assert_eq!(
            count_json_string(r"\ud83d\ude00\ud83d\ude00"),
            count_tokens("😀😀")
        );
        assert_eq!(count_json_string(r"\u4f60\u597d"), count_tokens("你好"));
        // An escaped letter is a symbol.
        assert_eq!(count_json_string(r"\u0041"), 1);
    }

    #[test]
    fn bytes_floor() {
        assert_eq!(count_bytes(0), 0);
        assert_eq!(count_bytes(1), 1);
        assert_eq!(count_bytes(8), 2);
    }
}
