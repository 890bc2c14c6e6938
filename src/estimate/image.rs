//! Image dimensions from the header of base64 PNG, JPEG, GIF or WebP data, and their token cost.
//!
//! Only a prefix of the base64 text is decoded, into a stack buffer: the first
//! [`HEADER_PREFIX`] characters (enough for PNG, GIF and WebP, and for most JPEGs), and for a
//! JPEG whose frame header comes later (large EXIF or ICC segments) up to
//! [`JPEG_PREFIX`] characters, walking the segments in 3 KiB windows. The image itself is
//! never decoded.
//!
//! Cost follows Anthropic's published rule: `tokens ≈ width × height / 750`, and images
//! are resized so that no image costs more than about 1,600 tokens (see [`ImageCost`]).

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine as _};

/// Base64 characters decoded for the first look at a header.
pub const HEADER_PREFIX: usize = 4_096;
/// Most base64 characters looked at to find a JPEG frame header (about 96 KB decoded).
pub const JPEG_PREFIX: usize = 131_072;

const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);
const LENIENT_URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// How images are priced.
///
/// ```
/// use bedrock_throttle::estimate::image::ImageCost;
/// let cost = ImageCost::default();
/// assert_eq!(cost.tokens(Some((750, 100))), 100);
/// assert_eq!(cost.tokens(Some((4_000, 3_000))), 1_600); // capped
/// assert_eq!(cost.tokens(None), 1_600); // dimensions unknown
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageCost {
    /// Pixels per token (Anthropic: 750).
    pub pixels_per_token: u64,
    /// Most tokens one image costs (Anthropic resizes larger images: about 1,600).
    pub max_tokens: u64,
    /// Tokens charged when the dimensions cannot be read (S3 or URL sources, unknown
    /// formats, truncated data): 1,600 by default, the cap, so unknown images are never
    /// under-counted.
    pub unknown_tokens: u64,
}

impl Default for ImageCost {
    fn default() -> Self {
        Self {
            pixels_per_token: 750,
            max_tokens: 1_600,
            unknown_tokens: 1_600,
        }
    }
}

impl ImageCost {
    /// Tokens for an image of `(width, height)`, or [`unknown_tokens`](Self::unknown_tokens)
    /// for `None`. At least 1 for a known image.
    pub fn tokens(&self, dimensions: Option<(u32, u32)>) -> u64 {
        match dimensions {
            None => self.unknown_tokens,
            Some((w, h)) => {
                let pixels = u64::from(w) * u64::from(h);
                pixels
                    .div_ceil(self.pixels_per_token.max(1))
                    .clamp(1, self.max_tokens.max(1))
            }
        }
    }

    /// Tokens for a base64-encoded image (see [`dimensions_base64`]).
    pub fn tokens_base64(&self, data: &str) -> u64 {
        self.tokens(dimensions_base64(data))
    }
}

/// Width and height of a base64-encoded PNG, JPEG, GIF or WebP image, read from its header.
///
/// Accepts standard or URL-safe alphabet, with or without padding, and a `data:...;base64,`
/// prefix. Returns `None` when the format is unknown or the header is not in the decoded
/// prefix.
///
/// ```
/// use bedrock_throttle::estimate::image::dimensions_base64;
/// // A GIF header: "GIF89a", width 3, height 2.
/// assert_eq!(dimensions_base64("R0lGODlhAwACAAAAACw="), Some((3, 2)));
/// assert_eq!(dimensions_base64("not an image"), None);
/// ```
pub fn dimensions_base64(data: &str) -> Option<(u32, u32)> {
    let data = match data.strip_prefix("data:") {
        Some(rest) => &rest[rest.find(',')? + 1..],
        None => data,
    };
    let data = data.trim_start();
    let mut buf = [0u8; HEADER_PREFIX / 4 * 3];
    let n = decode_window(data, 0, &mut buf)?;
    let head = &buf[..n];
    if head.starts_with(&[0xFF, 0xD8]) {
        return jpeg_dimensions(data, &mut buf);
    }
    dimensions(head)
}

/// Decodes the base64 window starting at char `start` (a multiple of 4) into `buf`.
fn decode_window(data: &str, start: usize, buf: &mut [u8]) -> Option<usize> {
    let bytes = data.as_bytes();
    if start >= bytes.len() {
        return None;
    }
    let max_chars = buf.len() / 3 * 4;
    let mut end = (start + max_chars).min(bytes.len());
    if end < bytes.len() {
        // Not the end of the data: keep whole quads so no padding is needed.
        end = start + (end - start) / 4 * 4;
    }
    let window = &bytes[start..end];
    LENIENT
        .decode_slice(window, buf)
        .or_else(|_| LENIENT_URL.decode_slice(window, buf))
        .ok()
}

/// Dimensions from the first bytes of a PNG, GIF or WebP file (or a JPEG whose frame header
/// is inside `head`).
pub fn dimensions(head: &[u8]) -> Option<(u32, u32)> {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        if head.get(12..16)? != b"IHDR" {
            return None;
        }
        return Some((be32(head, 16)?, be32(head, 20)?));
    }
    if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        return Some((u32::from(le16(head, 6)?), u32::from(le16(head, 8)?)));
    }
    if head.starts_with(b"RIFF") && head.get(8..12)? == b"WEBP" {
        return match head.get(12..16)? {
            b"VP8 " => {
                // Frame tag (3 bytes) at 20, start code 9d 01 2a at 23, then 14-bit sizes.
                if head.get(23..26)? != [0x9d, 0x01, 0x2a] {
                    return None;
                }
                Some((
                    u32::from(le16(head, 26)? & 0x3FFF),
                    u32::from(le16(head, 28)? & 0x3FFF),
                ))
            }
            b"VP8L" => {
                if *head.get(20)? != 0x2F {
                    return None;
                }
                let b = head.get(21..25)?;
                let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
            }
            b"VP8X" => Some((le24(head, 24)? + 1, le24(head, 27)? + 1)),
            _ => None,
        };
    }
    if head.starts_with(&[0xFF, 0xD8]) {
        return match jpeg_scan(head, 2) {
            JpegScan::Found(d) => Some(d),
            _ => None,
        };
    }
    None
}

enum JpegScan {
    Found((u32, u32)),
    /// The next segment starts at this offset, past the end of the buffer.
    NeedMore(usize),
    Invalid,
}

/// Walks JPEG segments from `pos` in `buf` (which holds the file from its start).
fn jpeg_scan(buf: &[u8], mut pos: usize) -> JpegScan {
    loop {
        // Skip fill bytes before a marker.
        let Some(&b) = buf.get(pos) else {
            return JpegScan::NeedMore(pos);
        };
        if b != 0xFF {
            return JpegScan::Invalid;
        }
        let Some(&marker) = buf.get(pos + 1) else {
            return JpegScan::NeedMore(pos);
        };
        match marker {
            0xFF => {
                pos += 1;
                continue;
            }
            0x01 | 0xD0..=0xD7 => {
                pos += 2;
                continue;
            }
            0xD9 | 0xDA => return JpegScan::Invalid,
            _ => {}
        }
        let Some(len) = be16(buf, pos + 2) else {
            return JpegScan::NeedMore(pos);
        };
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            return match (be16(buf, pos + 5), be16(buf, pos + 7)) {
                (Some(h), Some(w)) => JpegScan::Found((u32::from(w), u32::from(h))),
                _ => JpegScan::NeedMore(pos),
            };
        }
        if len < 2 {
            return JpegScan::Invalid;
        }
        pos += 2 + usize::from(len);
    }
}

/// Finds a JPEG's frame header, decoding further windows of base64 as needed.
fn jpeg_dimensions(data: &str, buf: &mut [u8]) -> Option<(u32, u32)> {
    // `base` is the byte offset of buf[0] in the decoded file; windows start on quads so
    // byte offsets are multiples of 3.
    let mut base = 0usize;
    let mut pos = 2usize;
    loop {
        let n = decode_window(data, base / 3 * 4, buf)?;
        match jpeg_scan(&buf[..n], pos - base) {
            JpegScan::Found(d) => return Some(d),
            JpegScan::Invalid => return None,
            JpegScan::NeedMore(at) => {
                let absolute = base + at;
                let next_base = absolute / 3 * 3;
                if next_base == base && n == buf.len() {
                    // A segment header straddles nothing new: cannot progress.
                    return None;
                }
                if n < buf.len() || next_base / 3 * 4 >= JPEG_PREFIX {
                    return None;
                }
                base = next_base;
                pos = absolute;
            }
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn le24(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 3)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], 0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&[8, 6, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]);
        v
    }

    fn gif(w: u16, h: u16) -> Vec<u8> {
        let mut v = b"GIF89a".to_vec();
        v.extend_from_slice(&w.to_le_bytes());
        v.extend_from_slice(&h.to_le_bytes());
        v.extend_from_slice(&[0, 0, 0, 0x3b]);
        v
    }

    /// A JPEG with an APP1 segment of `app_len` filler bytes before the SOF0 frame header.
    fn jpeg(w: u16, h: u16, app_len: usize, marker: u8) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8];
        // APP0 JFIF
        v.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x10]);
        v.extend_from_slice(b"JFIF\0\x01\x01\x00\x00\x01\x00\x01\x00\x00");
        // APP1 filler (EXIF-like), possibly split into several 64 KiB segments
        let mut left = app_len;
        while left > 0 {
            let chunk = left.min(65_000);
            v.extend_from_slice(&[0xFF, 0xE1]);
            v.extend_from_slice(&((chunk + 2) as u16).to_be_bytes());
            v.extend(std::iter::repeat_n(0x45, chunk));
            left -= chunk;
        }
        // fill byte, then SOFn
        v.extend_from_slice(&[0xFF, 0xFF, marker, 0x00, 0x11, 0x08]);
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        v.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02, 0xFF, 0xD9]);
        v
    }

    fn webp_vp8(w: u16, h: u16) -> Vec<u8> {
        let mut v = b"RIFF\x30\x00\x00\x00WEBPVP8 \x20\x00\x00\x00".to_vec();
        v.extend_from_slice(&[0x30, 0x01, 0x00, 0x9d, 0x01, 0x2a]);
        v.extend_from_slice(&w.to_le_bytes());
        v.extend_from_slice(&h.to_le_bytes());
        v.extend_from_slice(&[0; 8]);
        v
    }

    fn webp_vp8l(w: u32, h: u32) -> Vec<u8> {
        let mut v = b"RIFF\x20\x00\x00\x00WEBPVP8L\x10\x00\x00\x00\x2f".to_vec();
        let bits = (w - 1) | ((h - 1) << 14);
        v.extend_from_slice(&bits.to_le_bytes());
        v.extend_from_slice(&[0; 8]);
        v
    }

    fn webp_vp8x(w: u32, h: u32) -> Vec<u8> {
        let mut v = b"RIFF\x30\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x10\x00\x00\x00".to_vec();
        v.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
        v.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
        v.extend_from_slice(&[0; 8]);
        v
    }

    #[test]
    fn formats() {
        let b64 = |v: Vec<u8>| STANDARD.encode(v);
        assert_eq!(dimensions_base64(&b64(png(640, 480))), Some((640, 480)));
        assert_eq!(dimensions_base64(&b64(gif(17, 300))), Some((17, 300)));
        assert_eq!(
            dimensions_base64(&b64(jpeg(1024, 768, 0, 0xC0))),
            Some((1024, 768))
        );
        assert_eq!(
            dimensions_base64(&b64(jpeg(800, 600, 10, 0xC2))),
            Some((800, 600))
        );
        assert_eq!(
            dimensions_base64(&b64(webp_vp8(320, 200))),
            Some((320, 200))
        );
        assert_eq!(dimensions_base64(&b64(webp_vp8l(1000, 1))), Some((1000, 1)));
        assert_eq!(
            dimensions_base64(&b64(webp_vp8x(5000, 3000))),
            Some((5000, 3000))
        );
    }

    #[test]
    fn jpeg_with_large_exif() {
        for app in [3_000, 3_060, 20_000, 70_000] {
            let data = STANDARD.encode(jpeg(1920, 1080, app, 0xC0));
            assert_eq!(dimensions_base64(&data), Some((1920, 1080)), "app {app}");
        }
        // Beyond the JPEG prefix: unknown rather than a full decode.
        let data = STANDARD.encode(jpeg(10, 10, 200_000, 0xC0));
        assert_eq!(dimensions_base64(&data), None);
    }

    #[test]
    fn variants_of_encoding() {
        let raw = png(33, 44);
        assert_eq!(
            dimensions_base64(&URL_SAFE_NO_PAD.encode(&raw)),
            Some((33, 44))
        );
        let uri = format!("data:image/png;base64,{}", STANDARD.encode(&raw));
        assert_eq!(dimensions_base64(&uri), Some((33, 44)));
    }

    #[test]
    fn garbage() {
        for s in [
            "",
            "====",
            "!!!!",
            "iVBORw0KGgo=",
            "/9j/",
            "/9j//////w==",
            "R0lGOD",
        ] {
            assert_eq!(dimensions_base64(s), None, "{s}");
        }
        // Truncated PNG header.
        let raw = png(1, 1);
        assert_eq!(dimensions_base64(&STANDARD.encode(&raw[..18])), None);
        // A JPEG segment with length 0.
        assert_eq!(
            dimensions(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x00, 0, 0, 0, 0]),
            None
        );
    }

    #[test]
    fn cost() {
        let c = ImageCost::default();
        assert_eq!(c.tokens(Some((1_092, 1_092))), 1_590);
        assert_eq!(c.tokens(Some((200, 200))), 54);
        assert_eq!(c.tokens(Some((1, 1))), 1);
        assert_eq!(c.tokens(Some((0, 0))), 1);
        assert_eq!(c.tokens(Some((u32::MAX, u32::MAX))), 1_600);
        assert_eq!(c.tokens_base64(&STANDARD.encode(png(750, 2))), 2);
    }
}
