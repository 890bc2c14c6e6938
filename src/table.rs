//! Plain-text tables for the `Display` of [`ThrottleStats`](crate::ThrottleStats) and
//! [`CapacityReport`](crate::diagnosis::CapacityReport).

use std::fmt;

/// `1234567` as `1,234,567`.
pub(crate) fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes `header` and `rows` in columns two spaces apart, the first `left` columns
/// aligned left and the others (numbers) right.
pub(crate) fn write<const N: usize>(
    f: &mut fmt::Formatter<'_>,
    header: [&str; N],
    rows: &[[String; N]],
    left: usize,
) -> fmt::Result {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |f: &mut fmt::Formatter<'_>, cells: [&str; N]| -> fmt::Result {
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            let sep = if i == 0 { "" } else { "  " };
            if i < left {
                write!(f, "{sep}{c:<w$}")?;
            } else {
                write!(f, "{sep}{c:>w$}")?;
            }
        }
        writeln!(f)
    };
    line(f, header)?;
    for row in rows {
        line(f, row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_are_separated() {
        assert_eq!(super::num(0), "0");
        assert_eq!(super::num(999), "999");
        assert_eq!(super::num(1_000), "1,000");
        assert_eq!(super::num(1_234_567), "1,234,567");
    }
}
