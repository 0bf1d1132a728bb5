//! The import file: a header line naming the columns (`code`, and optionally `pin` and
//! `expires_at`, in any order), then one card per line. RFC 4180 quoting is accepted inside a
//! line; a record may not span lines. Lines end in LF or CRLF.
//!
//! Pure and synchronous: bytes in, lines and cards (or a reason) out. Memory is bounded by the
//! longest line allowed, whatever the file's size.

use std::borrow::Cow;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::super::cards::valid_code;

/// The longest line accepted, in bytes (without its line ending).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The longest PIN accepted, in characters.
pub const MAX_PIN_CHARS: usize = 64;

/// A column the header may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// The redemption code (required).
    Code,
    /// The PIN.
    Pin,
    /// When the card expires (RFC 3339).
    ExpiresAt,
}

impl Column {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "code" => Some(Self::Code),
            "pin" => Some(Self::Pin),
            "expires_at" => Some(Self::ExpiresAt),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Code => "code",
            Self::Pin => "pin",
            Self::ExpiresAt => "expires_at",
        }
    }
}

/// The columns of a file, in the header's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    columns: Vec<Column>,
}

impl Header {
    /// Read the header line (a UTF-8 byte-order mark in front is skipped).
    pub fn parse(line: &[u8]) -> Result<Self, String> {
        let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        let text = std::str::from_utf8(line).map_err(|_| "the header is not valid UTF-8".to_owned())?;
        if text.trim().is_empty() {
            return Err("the first line must be a header naming the columns: code[,pin][,expires_at]".into());
        }
        let mut columns = Vec::new();
        for name in split_fields(text).map_err(|e| format!("the header: {e}"))? {
            let name = name.trim();
            let column = Column::parse(name).ok_or_else(|| {
                format!("the header names an unknown column {name:?}; the columns are code, pin and expires_at")
            })?;
            if columns.contains(&column) {
                return Err(format!("the header names the column {:?} twice", column.name()));
            }
            columns.push(column);
        }
        if !columns.contains(&Column::Code) {
            return Err("the header must name a code column".into());
        }
        Ok(Self { columns })
    }

    /// How many fields every line has.
    pub fn width(&self) -> usize {
        self.columns.len()
    }
}

/// One card, read from a line and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardLine {
    /// The redemption code.
    pub code: String,
    /// The PIN, if any.
    pub pin: Option<String>,
    /// When it expires, if ever.
    pub expires_at: Option<OffsetDateTime>,
}

/// Read one card line under `header`; `now` decides which expiry dates are past.
pub fn parse_card(header: &Header, line: &[u8], now: OffsetDateTime) -> Result<CardLine, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not valid UTF-8".to_owned())?;
    if text.is_empty() {
        return Err("the line is empty".into());
    }
    let fields = split_fields(text)?;
    if fields.len() != header.width() {
        return Err(format!("{} field(s); the header names {}", fields.len(), header.width()));
    }
    let mut card = CardLine { code: String::new(), pin: None, expires_at: None };
    for (column, value) in header.columns.iter().zip(fields) {
        match column {
            Column::Code => card.code = check_code(value)?,
            Column::Pin => card.pin = check_pin(value)?,
            Column::ExpiresAt => card.expires_at = check_expiry(&value, now)?,
        }
    }
    Ok(card)
}

fn check_code(value: Cow<'_, str>) -> Result<String, String> {
    if !valid_code(&value) {
        return Err("the code must be 1-512 characters without control characters".into());
    }
    if value.trim() != value {
        return Err("the code has leading or trailing spaces".into());
    }
    Ok(value.into_owned())
}

fn check_pin(value: Cow<'_, str>) -> Result<Option<String>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.chars().count() > MAX_PIN_CHARS || value.chars().any(char::is_control) || value.trim() != value {
        return Err(format!(
            "the PIN must be at most {MAX_PIN_CHARS} characters, without control characters or leading or trailing spaces"
        ));
    }
    Ok(Some(value.into_owned()))
}

fn check_expiry(value: &str, now: OffsetDateTime) -> Result<Option<OffsetDateTime>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    let at = OffsetDateTime::parse(value, &Rfc3339)
        .map_err(|_| format!("expires_at {value:?} is not an RFC 3339 time such as 2030-12-31T23:59:59Z"))?;
    if at <= now {
        return Err(format!("expires_at {value} is in the past"));
    }
    Ok(Some(at))
}

/// Split one line into fields: comma-separated, a field may be quoted (`"a,b"`, `""` is a
/// quote inside one). Quoted fields must close on the same line.
pub fn split_fields(line: &str) -> Result<Vec<Cow<'_, str>>, String> {
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        if let Some(quoted) = rest.strip_prefix('"') {
            let (value, after) = quoted_field(quoted)?;
            fields.push(value);
            match after.strip_prefix(',') {
                Some(next) => rest = next,
                None if after.is_empty() => return Ok(fields),
                None => return Err("a quoted field must end at a comma or at the end of the line".into()),
            }
        } else {
            let (value, next) = match rest.find(',') {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            if value.contains('"') {
                return Err("a quote may appear only in a quoted field (write \"a\"\"b\" for a\"b)".into());
            }
            fields.push(Cow::Borrowed(value));
            match next {
                Some(next) => rest = next,
                None => return Ok(fields),
            }
        }
    }
}

/// The value of a quoted field (after its opening quote) and what follows its closing quote.
fn quoted_field(s: &str) -> Result<(Cow<'_, str>, &str), String> {
    let mut value: Option<String> = None;
    let mut start = 0;
    let mut i = 0;
    let bytes = s.as_bytes();
    while i < bytes.len() {
        if bytes[i] == b'"' {
            if bytes.get(i + 1) == Some(&b'"') {
                // An escaped quote: keep one.
                value.get_or_insert_with(String::new).push_str(&s[start..=i]);
                i += 2;
                start = i;
                continue;
            }
            let after = &s[i + 1..];
            return Ok(match value {
                Some(mut v) => {
                    v.push_str(&s[start..i]);
                    (Cow::Owned(v), after)
                }
                None => (Cow::Borrowed(&s[..i]), after),
            });
        }
        i += 1;
    }
    Err("a quoted field is not closed on its line (a record may not span lines)".into())
}

/// What the splitter found: a whole line, or one that was too long (and was skipped).
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// The line's bytes, without its line ending.
    Whole(&'a [u8]),
    /// Longer than [`MAX_LINE_BYTES`]; its bytes were dropped as they came.
    TooLong,
}

/// Cuts a stream of byte chunks into lines, numbered from 1. Holds at most one line's worth of
/// bytes: a line that grows past the limit is dropped as it arrives.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
    overlong: bool,
    lines: u64,
}

impl LineSplitter {
    /// Feed the next chunk; `on_line` gets every line the chunk completes, with its number.
    pub fn feed(&mut self, mut chunk: &[u8], mut on_line: impl FnMut(u64, Line<'_>)) {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            let piece = &chunk[..end];
            chunk = &chunk[end + 1..];
            self.lines += 1;
            let whole = if self.overlong || self.pending.len() + piece.len() > MAX_LINE_BYTES + 1 {
                None
            } else if self.pending.is_empty() {
                // The common case: the whole line is in this chunk, no copy.
                Some(strip_cr(piece))
            } else {
                self.pending.extend_from_slice(piece);
                Some(strip_cr(&self.pending))
            };
            match whole {
                Some(line) if line.len() <= MAX_LINE_BYTES => on_line(self.lines, Line::Whole(line)),
                _ => on_line(self.lines, Line::TooLong),
            }
            self.pending.clear();
            self.overlong = false;
        }
        if self.overlong {
            return;
        }
        // One byte over the limit is allowed in `pending`: it may be the CR of a CRLF.
        if self.pending.len() + chunk.len() > MAX_LINE_BYTES + 1 {
            self.overlong = true;
            self.pending = Vec::new();
        } else {
            self.pending.extend_from_slice(chunk);
        }
        debug_assert!(self.pending.len() <= MAX_LINE_BYTES + 1);
    }

    /// Whole lines seen so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// At the end of the file: the number of the last line if it had no line ending (the file
    /// ends mid-line), else `None`.
    pub fn unfinished_line(&self) -> Option<u64> {
        (self.overlong || !self.pending.is_empty()).then_some(self.lines + 1)
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each line's number and bytes (`None`: too long).
    type Lines = Vec<(u64, Option<Vec<u8>>)>;

    fn lines_of(chunks: &[&[u8]]) -> (Lines, Option<u64>) {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            splitter.feed(c, |n, line| {
                out.push((
                    n,
                    match line {
                        Line::Whole(b) => Some(b.to_vec()),
                        Line::TooLong => None,
                    },
                ))
            });
        }
        (out, splitter.unfinished_line())
    }

    #[test]
    fn lines_split_across_chunks_with_lf_or_crlf() {
        let (lines, unfinished) = lines_of(&[b"code,pin\r\nA", b"BC,1\n", b"D,2\r", b"\n"]);
        assert_eq!(
            lines,
            vec![(1, Some(b"code,pin".to_vec())), (2, Some(b"ABC,1".to_vec())), (3, Some(b"D,2".to_vec()))]
        );
        assert_eq!(unfinished, None);
        assert_eq!(lines_of(&[b"code\nA"]).1, Some(2), "no newline after the last line");
        assert_eq!(lines_of(&[b""]).1, None);
    }

    #[test]
    fn a_long_line_is_dropped_as_it_comes_and_the_next_one_is_read() {
        let big = vec![b'x'; MAX_LINE_BYTES / 2 + 1];
        let (lines, unfinished) = lines_of(&[b"code\n", &big, &big, &big, b"\nOK\n"]);
        assert_eq!(lines, vec![(1, Some(b"code".to_vec())), (2, None), (3, Some(b"OK".to_vec()))]);
        assert_eq!(unfinished, None);
        let exact = vec![b'y'; MAX_LINE_BYTES];
        let (lines, _) = lines_of(&[&exact, b"\r\n"]);
        assert_eq!(lines, vec![(1, Some(exact.clone()))], "exactly the limit, with CRLF, is accepted");
        let (lines, _) = lines_of(&[&exact, b"z\n"]);
        assert_eq!(lines, vec![(1, None)], "one byte more is not");
    }

    #[test]
    fn headers_name_known_columns_once() {
        assert_eq!(Header::parse(b"\xEF\xBB\xBFpin, code").unwrap().columns, vec![Column::Pin, Column::Code]);
        assert!(Header::parse(b"code,colour").unwrap_err().contains("unknown column \"colour\""));
        assert!(Header::parse(b"code,pin,code").unwrap_err().contains("\"code\" twice"));
        assert!(Header::parse(b"pin").unwrap_err().contains("code column"));
        assert!(Header::parse(b"").is_err());
    }

    #[test]
    fn fields_follow_rfc_4180_within_a_line() {
        assert_eq!(split_fields("a,\"b,c\",\"d\"\"e\",").unwrap(), vec!["a", "b,c", "d\"e", ""]);
        assert_eq!(split_fields("\"\"").unwrap(), vec![""]);
        assert!(split_fields("\"open").unwrap_err().contains("not closed"));
        assert!(split_fields("\"a\"b").unwrap_err().contains("must end"));
        assert!(split_fields("a\"b").unwrap_err().contains("quoted field"));
    }

    #[test]
    fn cards_are_checked_field_by_field() {
        let now = OffsetDateTime::now_utc();
        let h = Header::parse(b"expires_at,code,pin").unwrap();
        let card = parse_card(&h, b"2099-01-01T00:00:00Z,ABC,12", now).unwrap();
        assert_eq!((card.code.as_str(), card.pin.as_deref()), ("ABC", Some("12")));
        assert!(card.expires_at.is_some());
        let card = parse_card(&h, b",ABC,", now).unwrap();
        assert_eq!((card.pin, card.expires_at), (None, None));
        for (line, reason) in [
            (&b",ABC"[..], "2 field(s); the header names 3"),
            (b",,1", "the code must be"),
            (b", ABC,1", "leading or trailing spaces"),
            (b",ABC,\x01", "the PIN must be"),
            (b"tomorrow,ABC,1", "not an RFC 3339 time"),
            (b"2001-01-01T00:00:00Z,ABC,1", "in the past"),
            (b",AB\xff,1", "not valid UTF-8"),
            (b"", "the line is empty"),
        ] {
            let err = parse_card(&h, line, now).unwrap_err();
            assert!(err.contains(reason), "{line:?}: {err}");
        }
    }
}
