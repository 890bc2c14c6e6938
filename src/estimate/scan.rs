//! Zero-copy JSON access for the estimator: a validating pass, then lookups over raw spans.
//!
//! [`validate`] checks in one pass, without copying anything, that a body is exactly what
//! `serde_json::from_slice::<Value>` accepts: UTF-8, the JSON grammar, no control characters
//! in strings, well-formed escapes (surrogate pairs included), finite numbers and at most
//! [`MAX_DEPTH`] nested arrays and objects (serde_json's recursion limit). On the way it
//! notes where each array, object or string value of at least [`INDEXED_LEN`] bytes ends
//! ([`Doc`]), so that the walk never scans a large value twice. The walk in
//! [`shapes`](super::shapes) then reads only the fields it needs through [`Val`], a view of
//! one value's raw text: objects are searched member by member, a skipped container or long
//! string costs a lookup of its end (a small one a scan), and string values are handed to
//! the counter as they are in the body, escapes and all.
//!
//! Strings are scanned with bit masks of their quotes, backslashes and control characters,
//! 16 bytes (then 64) at a time with `wide`'s `u8x16` (SSE2 on x86_64, NEON on aarch64,
//! plain code elsewhere); UTF-8 is checked by `simdutf8`.

use std::borrow::Cow;
use std::cell::Cell;

use wide::u8x16;

/// Deepest nesting of arrays and objects accepted (serde_json's recursion limit of 128
/// fails on the 128th level).
pub(crate) const MAX_DEPTH: u32 = 127;

/// Why a body is not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    Utf8,
    Syntax,
    TooDeep,
}

impl Invalid {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Invalid::Utf8 => "not UTF-8",
            Invalid::Syntax => "not JSON",
            Invalid::TooDeep => "nested too deeply",
        }
    }
}

/// Smallest array, object or string value whose end [`validate`] records: skipping a
/// smaller one by scanning costs about as much as looking it up.
pub(crate) const INDEXED_LEN: usize = 64;

/// A validated body and the ends of its large values.
#[derive(Debug)]
pub(crate) struct Doc<'a> {
    text: &'a str,
    /// The value's span in `text` (no surrounding whitespace).
    start: usize,
    end: usize,
    index: Index,
}

impl<'a> Doc<'a> {
    /// The body's value.
    pub(crate) fn root(&self) -> Val<'_> {
        Val {
            raw: &self.text[self.start..self.end],
            index: &self.index,
        }
    }
}

/// `(start, end)` byte offsets of the arrays, objects and string values of at least
/// [`INDEXED_LEN`] bytes, in document order (so sorted by start), with the address of the
/// body they are offsets in. At most one entry per [`INDEXED_LEN`] bytes of body, so it
/// stays small next to the body.
#[derive(Debug, Default)]
pub(crate) struct Index {
    base: usize,
    spans: Vec<(u32, u32)>,
    /// Where the last lookup left off: the first entry starting after the value looked up.
    /// The walk mostly moves forward, so the next lookup is usually found at or just after
    /// it, without a search of the whole index.
    next: Cell<usize>,
}

impl Index {
    /// The end (after the closing bracket or quote) of the value that starts at `b[i]`,
    /// where `b` is part of the indexed body, if it is indexed.
    #[inline]
    fn end_of(&self, b: &[u8], i: usize) -> Option<usize> {
        let offset = (b.as_ptr() as usize).wrapping_sub(self.base);
        let at = u32::try_from(offset.checked_add(i)?).ok()?;
        let spans = &self.spans[..];
        let next = self.next.get();
        // The walk moved on to the entry after the last one looked up, or to a value
        // before it (and after the last one).
        let after_last = || next == 0 || spans.get(next - 1).is_some_and(|s| s.0 < at);
        match spans.get(next) {
            Some(&(start, end)) if start == at => {
                self.next.set(next + 1);
                return Some(end as usize - offset);
            }
            Some(&(start, _)) if start > at && after_last() => return None,
            None if next == spans.len() && after_last() => return None,
            _ => {}
        }
        self.lookup(at, offset)
    }

    /// [`end_of`](Self::end_of) anywhere in the index: forward from the last lookup in
    /// steps doubling until one lands at or after `at` (the walk skipped over some
    /// entries), else a binary search of the entries before it.
    #[cold]
    fn lookup(&self, at: u32, offset: usize) -> Option<usize> {
        let spans = &self.spans[..];
        let next = self.next.get().min(spans.len());
        let k = if next == 0 || spans[next - 1].0 < at {
            let (mut lo, mut step) = (next, 1);
            while lo + step <= spans.len() && spans[lo + step - 1].0 < at {
                lo += step;
                step *= 2;
            }
            let hi = (lo + step).min(spans.len());
            lo + spans[lo..hi].partition_point(|s| s.0 < at)
        } else {
            spans[..next].partition_point(|s| s.0 < at)
        };
        // A miss leaves the cursor where the walk is.
        let found = spans.get(k).filter(|s| s.0 == at)?;
        self.next.set(k + 1);
        Some(found.1 as usize - offset)
    }
}

/// Checks that `body` is one JSON value serde_json would parse, and returns it as text
/// with the ends of its large values.
pub(crate) fn validate(body: &[u8]) -> Result<Doc<'_>, Invalid> {
    // Exact validation (same verdict as `std::str::from_utf8`), vectorised with runtime
    // dispatch; several times faster on text that is mostly multi-byte, such as CJK.
    let text = simdutf8::basic::from_utf8(body).map_err(|_| Invalid::Utf8)?;
    let b = body;
    let mut i = skip_ws(b, 0);
    let start = i;
    // One bit per open container, set for objects; MAX_DEPTH < 128 bits.
    let mut stack: u128 = 0;
    let mut depth: u32 = 0;
    // Offsets fit the index's `u32`s: larger bodies are validated without an index.
    let indexed = u32::try_from(b.len()).is_ok();
    // At most this many entries (one per INDEXED_LEN bytes).
    let max_spans = b.len() / INDEXED_LEN;
    // One allocation for bodies with up to one large container or string per 256 bytes
    // (a typical chat turn has four: the message, its content, the block and its text),
    // rather than a series of reallocations.
    let mut index = Index {
        base: b.as_ptr() as usize,
        spans: Vec::with_capacity(if indexed { b.len() / 256 + 8 } else { 0 }),
        next: Cell::new(0),
    };
    // For each open container, its entry in `index.spans`.
    let mut open = [0u32; MAX_DEPTH as usize + 1];
    'value: loop {
        // A value starts at `i` (after whitespace).
        match b.get(i) {
            Some(b'{') | Some(b'[') => {
                let object = b[i] == b'{';
                let value_start = i;
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Invalid::TooDeep);
                }
                stack = (stack << 1) | u128::from(object);
                i = skip_ws(b, i + 1);
                let close = if object { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    depth -= 1;
                    stack >>= 1;
                    i += 1;
                } else {
                    if indexed {
                        // `value_start` is below `b.len()`, which fits a `u32`.
                        open[depth as usize] = index.spans.len() as u32;
                        index.spans.push((value_start as u32, 0));
                    }
                    if object {
                        i = member_key(b, i)?;
                    }
                    continue 'value;
                }
            }
            Some(b'"') => {
                let value_start = i;
                i = string_end(b, i)?;
                if indexed && i - value_start >= INDEXED_LEN && index.spans.len() < max_spans {
                    // Every open container's entry starts before this string, every
                    // closed one's too: the entries stay in document order.
                    index.spans.push((value_start as u32, i as u32));
                }
            }
            Some(b't') => i = literal(b, i, b"true")?,
            Some(b'f') => i = literal(b, i, b"false")?,
            Some(b'n') => i = literal(b, i, b"null")?,
            Some(b'-' | b'0'..=b'9') => i = number_end(b, i)?,
            _ => return Err(Invalid::Syntax),
        }
        // After a value: a separator or the end of containers.
        loop {
            i = skip_ws(b, i);
            if depth == 0 {
                break 'value;
            }
            let object = stack & 1 == 1;
            match b.get(i) {
                Some(b',') => {
                    i = skip_ws(b, i + 1);
                    if object {
                        i = member_key(b, i)?;
                    }
                    continue 'value;
                }
                Some(b'}') if object => {}
                Some(b']') if !object => {}
                _ => return Err(Invalid::Syntax),
            }
            i += 1;
            if indexed {
                // Inner values are smaller and come later: a small container is the last
                // entry and is dropped, as is any entry beyond one per INDEXED_LEN bytes
                // (with the inner values after it).
                let k = open[depth as usize] as usize;
                let span_start = index.spans[k].0 as usize;
                if i - span_start < INDEXED_LEN || k >= max_spans {
                    index.spans.truncate(k);
                } else {
                    index.spans[k].1 = i as u32;
                }
            }
            depth -= 1;
            stack >>= 1;
        }
    }
    if i != b.len() {
        return Err(Invalid::Syntax);
    }
    let end = trim_end(b, i);
    Ok(Doc {
        text,
        start,
        end,
        index,
    })
}

/// A key, its colon and the whitespace up to the member's value.
fn member_key(b: &[u8], i: usize) -> Result<usize, Invalid> {
    if b.get(i) != Some(&b'"') {
        return Err(Invalid::Syntax);
    }
    let i = skip_ws(b, string_end(b, i)?);
    if b.get(i) != Some(&b':') {
        return Err(Invalid::Syntax);
    }
    Ok(skip_ws(b, i + 1))
}

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(i) {
        i += 1;
    }
    i
}

fn trim_end(b: &[u8], mut end: usize) -> usize {
    while end > 0 && matches!(b[end - 1], b' ' | b'\n' | b'\r' | b'\t') {
        end -= 1;
    }
    end
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Result<usize, Invalid> {
    if b[i..].starts_with(word) {
        Ok(i + word.len())
    } else {
        Err(Invalid::Syntax)
    }
}

/// The end of the number at `i`, checking serde_json's grammar and that it is finite.
fn number_end(b: &[u8], mut i: usize) -> Result<usize, Invalid> {
    let start = i;
    let digits = |b: &[u8], mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    if b[i] == b'-' {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(b, i + 1),
        _ => return Err(Invalid::Syntax),
    }
    let mut float = false;
    if b.get(i) == Some(&b'.') {
        let j = digits(b, i + 1);
        if j == i + 1 {
            return Err(Invalid::Syntax);
        }
        i = j;
        float = true;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let j = digits(b, i);
        if j == i {
            return Err(Invalid::Syntax);
        }
        i = j;
        float = true;
    }
    // After `0`, serde_json refuses a further digit (`01`); the caller's separator check
    // catches it as trailing characters too.
    if float || i - start > 19 {
        // Only ASCII was consumed, so this is a char boundary.
        let s = std::str::from_utf8(&b[start..i]).map_err(|_| Invalid::Syntax)?;
        let f: f64 = s.parse().map_err(|_| Invalid::Syntax)?;
        if !f.is_finite() {
            return Err(Invalid::Syntax);
        }
    }
    Ok(i)
}

/// Bytes a string scan stops at: bit `k` is set when byte `k` of `chunk` is `"`, `\` or a
/// control character (below 0x20). SSE2 (or NEON, or WASM SIMD) compares, 16 bytes at a
/// time; plain code elsewhere.
#[inline(always)]
fn special<const N: usize>(chunk: &[u8; N]) -> u64 {
    let quote = u8x16::splat(b'"');
    let backslash = u8x16::splat(b'\\');
    let control = u8x16::splat(0x1F);
    let lanes = || {
        chunk
            .chunks_exact(16)
            .map(|lane| u8x16::new(lane.try_into().unwrap_or([0; 16])))
    };
    let mut mask = 0;
    let mut low = u8x16::splat(0xFF);
    for (k, v) in lanes().enumerate() {
        low = low.min(v);
        let hit = v.simd_eq(quote) | v.simd_eq(backslash);
        mask |= u64::from(hit.to_bitmask()) << (16 * k);
    }
    // Control characters (invalid in strings, whitespace between values) are looked for
    // lane by lane only in a block that has one.
    if low.min(control).simd_eq(low).to_bitmask() != 0 {
        for (k, v) in lanes().enumerate() {
            mask |= u64::from(v.min(control).simd_eq(v).to_bitmask()) << (16 * k);
        }
    }
    mask
}

/// [`special`] for the `N` bytes of `b` from `i` (16 or 64), or as many as there are: bytes
/// past the end are not flagged.
#[inline(always)]
fn special_at<const N: usize>(b: &[u8], i: usize) -> u64 {
    match b.get(i..i + N) {
        Some(chunk) => special::<N>(chunk.try_into().unwrap_or(&[0; N])),
        // The last `N` bytes, shifted down to start at `i`: no copy near the end of a
        // value's text, where the walk often looks.
        None if b.len() >= N && i < b.len() => {
            let start = b.len() - N;
            special::<N>(b[start..].try_into().unwrap_or(&[0; N])) >> (i - start)
        }
        None => {
            let mut chunk = [b' '; N];
            let rest = b.get(i..).unwrap_or_default();
            chunk[..rest.len()].copy_from_slice(rest);
            special::<N>(&chunk)
        }
    }
}

/// The end (after the closing quote) of the string whose opening quote is at `i`,
/// validating its escapes and refusing raw control characters.
///
/// The first 16 bytes are looked at alone (keys and short values end there), then 64 at a
/// time; within a block, every flagged byte is visited through the block's bit mask, so an
/// escape costs a few instructions and no new scan.
#[inline(always)]
fn string_end(b: &[u8], i: usize) -> Result<usize, Invalid> {
    // Most strings (keys, short values) end within 16 bytes, without an escape.
    let mask = special_at::<16>(b, i + 1);
    let at = i + 1 + mask.trailing_zeros() as usize;
    if mask != 0 && b[at] == b'"' {
        return Ok(at + 1);
    }
    long_string_end(b, i)
}

/// [`string_end`] for a string with an escape or control character in its first 16
/// bytes, or longer.
#[inline(never)]
fn long_string_end(b: &[u8], i: usize) -> Result<usize, Invalid> {
    // `block` is where the `width` bytes of `mask` start; bits done are cleared.
    let mut block = i + 1;
    let mut mask = special_at::<16>(b, block);
    let mut width = 16;
    loop {
        while mask != 0 {
            let k = mask.trailing_zeros() as usize;
            let at = block + k;
            match b[at] {
                b'"' => return Ok(at + 1),
                // A two-byte escape within the block (the common case, `\n` or `\"` in
                // code): clear its two bits.
                b'\\'
                    if k + 1 < width
                        && b.get(at + 1).is_some_and(|&c| SHORT_ESCAPE[usize::from(c)]) =>
                {
                    mask &= !(3 << k);
                }
                b'\\' => {
                    let next = escape_end(b, at)?;
                    if next - block >= width {
                        // The escape runs to the end of the block or past it: go on after it.
                        (block, width) = (next, 0);
                        break;
                    }
                    mask &= u64::MAX << (next - block);
                }
                _ => return Err(Invalid::Syntax),
            }
        }
        block += width;
        if block >= b.len() {
            return Err(Invalid::Syntax);
        }
        mask = special_at::<64>(b, block);
        width = 64;
    }
}

/// The bytes that follow a backslash in a two-byte escape.
const SHORT_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut k = 0;
    let chars = *b"\"\\/bfnrt";
    while k < chars.len() {
        t[chars[k] as usize] = true;
        k += 1;
    }
    t
};

/// The end of the escape at `i` (a backslash), validated as serde_json does.
fn escape_end(b: &[u8], i: usize) -> Result<usize, Invalid> {
    match b.get(i + 1) {
        Some(&c) if SHORT_ESCAPE[usize::from(c)] => Ok(i + 2),
        Some(b'u') => {
            let n = hex4(b, i + 2).ok_or(Invalid::Syntax)?;
            match n {
                0xDC00..=0xDFFF => Err(Invalid::Syntax),
                0xD800..=0xDBFF => {
                    if b.get(i + 6) != Some(&b'\\') || b.get(i + 7) != Some(&b'u') {
                        return Err(Invalid::Syntax);
                    }
                    match hex4(b, i + 8) {
                        Some(0xDC00..=0xDFFF) => Ok(i + 12),
                        _ => Err(Invalid::Syntax),
                    }
                }
                _ => Ok(i + 6),
            }
        }
        _ => Err(Invalid::Syntax),
    }
}

fn hex4(b: &[u8], i: usize) -> Option<u32> {
    let digits = b.get(i..i + 4)?;
    let mut n = 0;
    for &d in digits {
        n = n * 16 + char::from(d).to_digit(16)?;
    }
    Some(n)
}

/// The end of the (valid) string starting at `i`, found by its closing quote: the first
/// quote not escaped. Like [`string_end`], it visits the quotes and backslashes of a block
/// through its bit mask; in a valid string, a backslash escapes the byte after it and
/// nothing else needs a look.
#[inline]
fn skip_string(b: &[u8], i: usize) -> usize {
    scan_string(b, i, usize::MAX).unwrap_or(b.len())
}

/// [`skip_string`], giving up (`None`) after the first 16 bytes and `blocks` blocks of 64.
#[inline(always)]
fn scan_string(b: &[u8], i: usize, mut blocks: usize) -> Option<usize> {
    let mut block = i + 1;
    let mut mask = special_at::<16>(b, block);
    let mut width = 16;
    loop {
        while mask != 0 {
            let at = block + mask.trailing_zeros() as usize;
            if b[at] == b'"' {
                return Some(at + 1);
            }
            let next = at + 2;
            if next - block >= width {
                // The escaped byte is the block's last or past it: go on after it.
                (block, width) = (next, 0);
                break;
            }
            mask &= u64::MAX << (next - block);
        }
        block += width;
        if block >= b.len() {
            return Some(b.len());
        }
        if blocks == 0 {
            return None;
        }
        blocks -= 1;
        mask = special_at::<64>(b, block);
        width = 64;
    }
}

/// The end of the (valid) value starting at `i`: looked up in `index` for a large
/// container or string, else scanned for. A string is first scanned for 16 bytes: short
/// ones, never indexed, need no lookup.
fn skip_value(b: &[u8], i: usize, index: &Index) -> usize {
    match b[i] {
        b'"' => scan_string(b, i, 0)
            .or_else(|| index.end_of(b, i))
            .unwrap_or_else(|| skip_string(b, i)),
        b'{' | b'[' => {
            if let Some(end) = index.end_of(b, i) {
                return end;
            }
            let mut depth = 0u32;
            let mut i = i;
            loop {
                match b[i] {
                    b'"' => {
                        i = skip_string(b, i);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let mut i = i;
            while i < b.len() && !matches!(b[i], b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
            {
                i += 1;
            }
            i
        }
    }
}

/// One value of a validated body, as its raw JSON text (no surrounding whitespace).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Val<'a> {
    raw: &'a str,
    /// The ends of the body's large values.
    index: &'a Index,
}

impl<'a> Val<'a> {
    #[cfg(test)]
    pub(crate) fn raw(self) -> &'a str {
        self.raw
    }

    fn first(self) -> u8 {
        self.raw.as_bytes()[0]
    }

    pub(crate) fn is_null(self) -> bool {
        self.first() == b'n'
    }

    pub(crate) fn is_object(self) -> bool {
        self.first() == b'{'
    }

    pub(crate) fn is_array(self) -> bool {
        self.first() == b'['
    }

    /// For a string, its text between the quotes with escapes as written.
    pub(crate) fn string_raw(self) -> Option<&'a str> {
        (self.first() == b'"').then(|| &self.raw[1..self.raw.len() - 1])
    }

    /// For a string, its value (borrowed unless it has escapes).
    pub(crate) fn as_str(self) -> Option<Cow<'a, str>> {
        let raw = self.string_raw()?;
        Some(unescape(raw))
    }

    /// For a string, whether its value equals `s`.
    pub(crate) fn str_eq(self, s: &str) -> bool {
        self.string_raw().is_some_and(|raw| raw_eq(raw, s))
    }

    /// The elements of an array (none for other values).
    pub(crate) fn elements(self) -> Elements<'a> {
        Elements {
            b: self.raw.as_bytes(),
            s: self.raw,
            i: if self.is_array() { 1 } else { self.raw.len() },
            index: self.index,
        }
    }

    /// The members of an object as (raw key, value) (none for other values).
    pub(crate) fn members(self) -> Members<'a> {
        Members {
            elements: Elements {
                b: self.raw.as_bytes(),
                s: self.raw,
                i: if self.is_object() { 1 } else { self.raw.len() },
                index: self.index,
            },
        }
    }

    /// The value of member `key` of an object; the last one when the key repeats, as in a
    /// parsed map. `None` for other values.
    pub(crate) fn get(self, key: &str) -> Option<Val<'a>> {
        let [v] = self.fields([key]);
        v
    }

    /// The values of several members, in one pass over the object.
    #[inline(always)]
    pub(crate) fn fields<const N: usize>(self, keys: [&str; N]) -> [Option<Val<'a>>; N] {
        let mut out = [None; N];
        for (k, v) in self.members() {
            for (slot, key) in out.iter_mut().zip(&keys) {
                if raw_eq(k, key) {
                    *slot = Some(v);
                }
            }
        }
        out
    }

    /// The value as serde_json's `Value` (for small values whose serialization is counted).
    pub(crate) fn to_value(self) -> serde_json::Value {
        serde_json::from_str(self.raw).unwrap_or(serde_json::Value::Null)
    }
}

/// Iterator over the elements of an array [`Val`].
pub(crate) struct Elements<'a> {
    b: &'a [u8],
    s: &'a str,
    /// Just after `[` or a comma, or the end.
    i: usize,
    index: &'a Index,
}

impl<'a> Elements<'a> {
    #[inline(always)]
    fn next_value(&mut self) -> Option<Val<'a>> {
        let i = skip_ws(self.b, self.i);
        if i >= self.b.len() || matches!(self.b[i], b']' | b'}') {
            self.i = self.b.len();
            return None;
        }
        let end = skip_value(self.b, i, self.index);
        let next = skip_ws(self.b, end);
        // A comma or the closing bracket.
        self.i = if self.b.get(next) == Some(&b',') {
            next + 1
        } else {
            self.b.len()
        };
        Some(Val {
            raw: &self.s[i..end],
            index: self.index,
        })
    }
}

impl<'a> Iterator for Elements<'a> {
    type Item = Val<'a>;

    fn next(&mut self) -> Option<Val<'a>> {
        self.next_value()
    }
}

/// Iterator over the members of an object [`Val`]: raw key text (escapes as written) and
/// value.
pub(crate) struct Members<'a> {
    elements: Elements<'a>,
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, Val<'a>);

    fn next(&mut self) -> Option<(&'a str, Val<'a>)> {
        let e = &mut self.elements;
        let i = skip_ws(e.b, e.i);
        if i >= e.b.len() || e.b[i] != b'"' {
            e.i = e.b.len();
            return None;
        }
        let key_end = skip_string(e.b, i);
        let key = &e.s[i + 1..key_end - 1];
        let colon = skip_ws(e.b, key_end);
        e.i = colon + 1;
        let value = e.next_value()?;
        Some((key, value))
    }
}

/// Whether the raw JSON string text `raw` denotes `s`.
#[inline]
fn raw_eq(raw: &str, s: &str) -> bool {
    if raw.len() == s.len() {
        // Keys are short: a byte loop is cheaper than a call to memcmp.
        return raw.bytes().zip(s.bytes()).all(|(a, b)| a == b);
    }
    // An escape can only make the raw text longer than what it denotes.
    raw.len() > s.len() && raw_eq_escaped(raw, s)
}

#[cold]
fn raw_eq_escaped(raw: &str, s: &str) -> bool {
    raw.contains('\\') && unescape(raw) == s
}

/// The value of the raw JSON string text `raw` (validated), borrowed when it has no escape.
pub(crate) fn unescape(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    for_each_piece(raw, |piece| match piece {
        Piece::Text(t) => out.push_str(t),
        Piece::Char(c) => out.push(c),
    });
    Cow::Owned(out)
}

/// The char denoted by the escape at `b[e]` (a backslash) of a validated JSON string, and
/// the escape's length.
#[inline]
pub(crate) fn escape_at(b: &[u8], e: usize) -> (char, usize) {
    match b.get(e + 1) {
        Some(b'b') => ('\u{8}', 2),
        Some(b'f') => ('\u{c}', 2),
        Some(b'n') => ('\n', 2),
        Some(b'r') => ('\r', 2),
        Some(b't') => ('\t', 2),
        Some(b'u') => {
            let n = hex4(b, e + 2).unwrap_or(0xFFFD);
            if (0xD800..=0xDBFF).contains(&n) {
                let low = hex4(b, e + 8).unwrap_or(0xDC00);
                let c = 0x10000 + ((n - 0xD800) << 10) + (low.wrapping_sub(0xDC00) & 0x3FF);
                (char::from_u32(c).unwrap_or('\u{FFFD}'), 12)
            } else {
                (char::from_u32(n).unwrap_or('\u{FFFD}'), 6)
            }
        }
        Some(&other) => (char::from(other), 2),
        None => ('\\', 1),
    }
}

/// A run of unescaped text or one escaped char of a JSON string.
pub(crate) enum Piece<'a> {
    Text(&'a str),
    Char(char),
}

/// Calls `f` with the pieces of the raw JSON string text `raw` (validated) in order: what
/// they denote, concatenated, is the string's value.
pub(crate) fn for_each_piece<'a>(raw: &'a str, mut f: impl FnMut(Piece<'a>)) {
    let b = raw.as_bytes();
    let mut i = 0;
    while let Some(k) = memchr::memchr(b'\\', &b[i..]) {
        if k > 0 {
            f(Piece::Text(&raw[i..i + k]));
        }
        let e = i + k;
        let (c, len) = escape_at(b, e);
        f(Piece::Char(c));
        i = (e + len).min(b.len());
    }
    if i < b.len() {
        f(Piece::Text(&raw[i..]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn agrees(body: &[u8]) {
        let serde = serde_json::from_slice::<serde_json::Value>(body);
        let ours = validate(body);
        assert_eq!(
            ours.is_ok(),
            serde.is_ok(),
            "{:?}: ours {ours:?}, serde_json {serde:?}",
            String::from_utf8_lossy(body)
        );
        if let (Ok(doc), Ok(value)) = (ours, serde) {
            assert_eq!(doc.root().to_value(), value);
            assert_eq!(walked(doc.root()), value);
            index_is_exact(&doc);
            let b = doc.text.as_bytes();
            if b[doc.start] == b'"' {
                assert_eq!(skip_string(b, doc.start), doc.end);
            }
        }
    }

    /// The value as read through the walk's lookups: elements, members and string values,
    /// skipped over by `skip_value` (by the index or by a scan).
    fn walked(v: Val<'_>) -> serde_json::Value {
        use serde_json::Value;
        if v.is_array() {
            Value::Array(v.elements().map(walked).collect())
        } else if v.is_object() {
            // Later duplicates replace earlier ones, as in a parsed map.
            Value::Object(
                v.members()
                    .map(|(k, v)| (unescape(k).into_owned(), walked(v)))
                    .collect(),
            )
        } else if let Some(s) = v.as_str() {
            Value::String(s.into_owned())
        } else {
            v.to_value()
        }
    }

    #[test]
    fn strings_at_every_offset() {
        // Escapes, quotes, control characters and bad UTF-8 at every offset around the
        // 16- and 64-byte blocks of the string scans, in strings at several alignments.
        let pieces: [&[u8]; 20] = [
            b"\\n",
            b"\\\"",
            b"\\\\",
            b"\\/",
            b"\\u00e9",
            b"\\ud83d\\ude00",
            b"\\ud83d",
            b"\\ud83dx",
            b"\\x",
            b"\\u12",
            b"\\",
            b"\"",
            b"\x01",
            b"\x1f",
            b"\t",
            b"\x7f",
            b"\xff",
            b"\xc3",
            b"\xe5\xa4\xa7",
            b"\xe5\xa4",
        ];
        for lead in 0..3 {
            for at in 0..140 {
                for p in pieces {
                    let mut s = vec![b'"'];
                    s.extend(std::iter::repeat_n(b'a', at));
                    s.extend_from_slice(p);
                    s.extend(std::iter::repeat_n(b'z', 140 - at));
                    s.push(b'"');
                    let pad = " ".repeat(lead);
                    agrees(&[pad.as_bytes(), &s].concat());
                    agrees(&[pad.as_bytes(), &s[..s.len() - 1]].concat());
                    agrees(&[b"[", &s[..], b",", &s[..at + 2], b"\", \"x\"]"].concat());
                    agrees(&[b"{", &s[..], b":", &s[..], b"}"].concat());
                }
            }
        }
    }

    #[test]
    fn lookups_in_any_order() {
        let text = "y".repeat(100);
        let body = format!(r#"[{{"a": "{text}", "b": ["{text}", "{text}"]}}, "{text}", [1, 2]]"#);
        let doc = validate(body.as_bytes()).unwrap();
        index_is_exact(&doc);
        let items: Vec<Val<'_>> = doc.root().elements().collect();
        // Backwards, then forwards again, then the same lookups twice.
        for v in items.iter().rev().chain(&items).chain(&items) {
            assert_eq!(
                walked(*v),
                serde_json::from_str::<serde_json::Value>(v.raw()).unwrap()
            );
        }
        assert_eq!(items[1].as_str().unwrap(), text);
        assert_eq!(items[0].get("b").unwrap().elements().count(), 2);
        assert_eq!(items[0].get("a").unwrap().as_str().unwrap(), text);
    }

    #[test]
    fn accepts_what_serde_json_accepts() {
        for body in [
            &b""[..],
            b" ",
            b"{}",
            b" { } ",
            b"[]",
            b"[1,2,]",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{1:2}",
            b"[1 2]",
            b"01",
            b"-",
            b"-0",
            b"1.",
            b"1.e5",
            b"1e",
            b"1e+",
            b"1E-7",
            b"1e400",
            b"-1e400",
            b"1e-400",
            b"123456789012345678901234567890",
            b"[tru]",
            b"nul",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"\\ud800\\udc00\"",
            b"\"\\ud800\\u0041\"",
            b"\"\\ud800x\"",
            b"\"\\u00e9\\/\\b\"",
            b"\"\\x\"",
            b"\"\\u12\"",
            b"\"a\tb\"",
            b"\"a\x7fb\"",
            b"\"\xff\"",
            b"\"caf\xc3\xa9\"",
            b"{\"a\":[{\"b\":null}]}x",
            b"{\"a\":[{\"b\":null}]}\n",
            b"\"unterminated",
            b"\"unterminated\\",
            b"[\"a\",]",
            b"{\"k\":\"v\",\"k\":\"w\"}",
        ] {
            agrees(body);
        }
    }

    /// Every indexed container or string starts with a bracket or quote and ends where a
    /// scan ends it, is at least INDEXED_LEN long, and there is at most one per INDEXED_LEN
    /// bytes.
    fn index_is_exact(doc: &Doc<'_>) {
        let b = doc.text.as_bytes();
        let spans = &doc.index.spans;
        assert!(spans.len() <= b.len() / INDEXED_LEN, "{}", spans.len());
        assert!(spans.windows(2).all(|w| w[0].0 < w[1].0));
        for &(start, end) in spans {
            let (start, end) = (start as usize, end as usize);
            assert!(matches!(b[start], b'{' | b'[' | b'"'));
            assert!(end - start >= INDEXED_LEN);
            assert_eq!(skip_value(b, start, &Index::default()), end);
            assert_eq!(skip_value(b, start, &doc.index), end);
        }
    }

    #[test]
    fn large_containers_are_indexed() {
        let text = "x".repeat(400);
        let inner = format!(r#"{{"t": "{text}", "n": [1, 2, {{}}, []]}}"#);
        let body = format!(
            r#"{{"a": [{inner}, {inner}, [{inner}]], "b": {{"c": [[[{inner}]]]}}, "s": [1]}}"#
        );
        let doc = validate(body.as_bytes()).unwrap();
        index_is_exact(&doc);
        // The root, "a", four copies of `inner` and of its text, the array around one, "b",
        // "c" and its two inner arrays; not the small containers.
        assert_eq!(doc.index.spans.len(), 15);
        let v = doc.root();
        assert_eq!(v.get("a").unwrap().elements().count(), 3);
        let c = v.get("b").unwrap().get("c").unwrap();
        let t = c.elements().next().unwrap().elements().next().unwrap();
        assert_eq!(
            t.elements()
                .next()
                .unwrap()
                .get("t")
                .unwrap()
                .as_str()
                .unwrap(),
            text
        );
        assert_eq!(v.get("s").unwrap().raw(), "[1]");
        // Containers too many for the index are scanned.
        let many = format!(
            "[{}0]",
            format!("[[[[\"{}\"]]]],", " ".repeat(60)).repeat(50)
        );
        let doc = validate(many.as_bytes()).unwrap();
        index_is_exact(&doc);
        assert!(doc.index.spans.len() < 200);
        assert_eq!(doc.root().elements().count(), 51);
        let deep = doc.root().elements().nth(49).unwrap();
        assert_eq!(deep.elements().next().unwrap().raw().len(), 68);
    }

    #[test]
    fn depth_limit_is_serde_jsons() {
        for depth in 120..135 {
            let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            agrees(body.as_bytes());
            let body = format!(
                "{}1{}",
                "{\"a\":[".repeat(depth / 2),
                "]}".repeat(depth / 2)
            );
            agrees(body.as_bytes());
        }
    }

    #[test]
    fn lookups() {
        let doc =
            validate(br#" {"a": [1, "x\"y", {"b": null}], "c\u0064": "e", "a": 2 } "#).unwrap();
        let v = doc.root();
        assert_eq!(v.get("a").unwrap().raw(), "2");
        assert_eq!(v.get("cd").unwrap().as_str().unwrap(), "e");
        assert!(v.get("b").is_none());
        let [a, cd] = v.fields(["a", "cd"]);
        assert_eq!((a.unwrap().raw(), cd.unwrap().raw()), ("2", "\"e\""));
        let first = v.members().next().unwrap().1;
        let items: Vec<&str> = first.elements().map(Val::raw).collect();
        assert_eq!(items, ["1", r#""x\"y""#, r#"{"b": null}"#]);
        assert_eq!(first.elements().nth(1).unwrap().as_str().unwrap(), "x\"y");
        assert_eq!(validate(b"[]").unwrap().root().elements().count(), 0);
        assert_eq!(validate(b"{ }").unwrap().root().members().count(), 0);
    }

    fn json_text() -> impl Strategy<Value = String> {
        // Raw JSON-ish text from a small alphabet, so that many samples are near-valid.
        prop::collection::vec(
            prop::sample::select(vec![
                "{",
                "}",
                "[",
                "]",
                ",",
                ":",
                " ",
                "\"",
                "\"a\"",
                "\"k\":",
                "1",
                "-",
                "0",
                ".5",
                "e9",
                "true",
                "null",
                "\\",
                "\\u00e9",
                "\\ud83d\\ude00",
                "\\ud800",
                "é",
                "\n",
                "\t",
                "x",
            ]),
            0..40,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn validation_agrees_with_serde_json(text in json_text()) {
            agrees(text.as_bytes());
        }

        #[test]
        fn long_strings_agree(parts in prop::collection::vec(prop::sample::select(vec![
            "a", "text ", "\\n", "\\\"", "\\\\", "\\u00e9", "\\ud83d\\ude00", "\\ud800", "\\q",
            "\"", "\\", "\t", "\u{1}", "é", "大", "\u{7f}",
        ]), 0..120)) {
            let s = parts.concat();
            agrees(format!("\"{s}\"").as_bytes());
            agrees(format!("[\"{s}\", {{\"k\": \"{s}\"}}]").as_bytes());
        }

        #[test]
        fn validation_agrees_on_bytes(body in prop::collection::vec(any::<u8>(), 0..64)) {
            agrees(&body);
        }

        #[test]
        fn strings_round_trip(s in "\\PC{0,60}|[\\u{0}-\\u{7f}]{0,60}") {
            let json = serde_json::to_string(&s).unwrap();
            let doc = validate(json.as_bytes()).unwrap();
            prop_assert_eq!(doc.root().as_str().unwrap(), s.as_str());
            let escaped: String = s.chars().map(|c| format!("\\u{:04x}", c as u32 & 0xFFFF)).collect();
            if s.chars().all(|c| (c as u32) < 0xD800) {
                let json = format!("\"{escaped}\"");
                let doc = validate(json.as_bytes()).unwrap();
                prop_assert_eq!(doc.root().as_str().unwrap(), s.as_str());
            }
        }
    }
}
