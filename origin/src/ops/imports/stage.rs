//! From lines to staging rows: every card line is checked, sealed and written as one row of
//! `COPY … FROM STDIN` text; every bad line becomes a line-numbered problem. Synchronous, and
//! bounded: the COPY buffer is drained by the caller, the problems list keeps the first 100.

use std::fmt::Write as _;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::file::{self, Header, Line};
use crate::crypto::{CardSecret, KeyRing};

/// The most problems an import report lists (the count covers them all).
pub const MAX_PROBLEMS: usize = 100;

/// One problem of a file: its line (none for the file as a whole) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ImportProblem)]
pub struct Problem {
    /// The line, counting the header as line 1; null for a problem of the whole file.
    #[schema(required = true, minimum = 1)]
    pub line: Option<u64>,
    /// What is wrong, in a sentence.
    pub problem: String,
}

/// The first problems of a file, in line order, and how many lines had one.
#[derive(Debug, Default)]
pub struct Problems {
    first: Vec<Problem>,
    total: u64,
    whole_file: u64,
}

impl Problems {
    /// Note a problem; only the first [`MAX_PROBLEMS`] are kept.
    pub fn push(&mut self, line: Option<u64>, problem: impl Into<String>) {
        self.total += 1;
        self.whole_file += u64::from(line.is_none());
        if self.first.len() < MAX_PROBLEMS {
            self.first.push(Problem { line, problem: problem.into() });
        }
    }

    /// How many problems, kept or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// How many lines had a problem (problems of the whole file aside).
    pub fn lines(&self) -> u64 {
        self.total - self.whole_file
    }

    /// Add `more` problems found later (also in line order) of which `others` more were not
    /// listed; keeps the first [`MAX_PROBLEMS`] of both by line.
    pub fn merge(&mut self, more: Vec<Problem>, others: u64) {
        self.total += more.len() as u64 + others;
        let mut all = std::mem::take(&mut self.first);
        all.extend(more);
        all.sort_by_key(|p| p.line);
        all.truncate(MAX_PROBLEMS);
        self.first = all;
    }

    /// The problems kept.
    pub fn listed(&self) -> &[Problem] {
        &self.first
    }
}

/// Turns the lines of one file into staging rows for one bucket.
pub struct Stager<'k> {
    keys: &'k KeyRing,
    aad: Vec<u8>,
    now: OffsetDateTime,
    header: Option<Header>,
    header_refused: bool,
    /// Card lines staged.
    pub accepted: u64,
    /// Card lines refused (and the file-level problems' lines, if any).
    pub problems: Problems,
    /// COPY text not yet sent.
    pub copy: Vec<u8>,
}

impl<'k> Stager<'k> {
    /// A stager sealing with `keys`, bound to `aad`.
    pub fn new(keys: &'k KeyRing, aad: Vec<u8>) -> Self {
        Self {
            keys,
            aad,
            now: OffsetDateTime::now_utc(),
            header: None,
            header_refused: false,
            accepted: 0,
            problems: Problems::default(),
            copy: Vec::with_capacity(1 << 20),
        }
    }

    /// Whether the header was refused (nothing after it can be read).
    pub fn header_refused(&self) -> bool {
        self.header_refused
    }

    /// Whether a header was read.
    pub fn has_header(&self) -> bool {
        self.header.is_some()
    }

    /// Card lines refused so far.
    pub fn rejected(&self) -> u64 {
        self.problems.lines()
    }

    /// Take one line (line 1 is the header).
    pub fn line(&mut self, number: u64, line: Line<'_>) {
        if self.header_refused {
            return;
        }
        let bytes = match line {
            Line::Whole(b) => b,
            Line::TooLong => {
                let reason = format!("the line is longer than {} bytes", file::MAX_LINE_BYTES);
                if number == 1 {
                    self.header_refused = true;
                }
                self.problems.push(Some(number), reason);
                return;
            }
        };
        let Some(header) = &self.header else {
            debug_assert_eq!(number, 1, "the header is the first line");
            match Header::parse(bytes) {
                Ok(h) => self.header = Some(h),
                Err(reason) => {
                    self.header_refused = true;
                    self.problems.push(Some(number), reason);
                }
            }
            return;
        };
        match file::parse_card(header, bytes, self.now) {
            Ok(card) => {
                self.stage(number, card);
                self.accepted += 1;
            }
            Err(reason) => self.problems.push(Some(number), reason),
        }
    }

    /// One row of COPY text: line, digest, ciphertext, nonce, key id, expiry.
    fn stage(&mut self, number: u64, card: file::CardLine) {
        let digest = self.keys.code_digest(&card.code);
        let secret = serde_json::to_vec(&CardSecret { code: card.code, pin: card.pin })
            .expect("a struct of two strings serializes");
        let sealed = self.keys.seal(&secret, &self.aad);
        let out = &mut self.copy;
        let _ = write!(Utf8Sink(&mut *out), "{number}");
        // COPY text format: bytea as \x hex (its backslash escaped), \N is NULL. Key ids are
        // letters, digits, '-' and '_' (the key ring refuses others), so need no escaping.
        for bytes in [&digest[..], &sealed.ciphertext, &sealed.nonce] {
            out.extend_from_slice(b"\t\\\\x");
            push_hex(out, bytes);
        }
        out.push(b'\t');
        out.extend_from_slice(sealed.key_id.as_bytes());
        out.push(b'\t');
        match card.expires_at {
            Some(t) => out.extend_from_slice(t.format(&Rfc3339).expect("a parsed time formats").as_bytes()),
            None => out.extend_from_slice(b"\\N"),
        }
        out.push(b'\n');
    }
}

/// `write!` into a byte buffer.
struct Utf8Sink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8Sink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_problems_keep_the_first_hundred_by_line_and_count_all() {
        let mut p = Problems::default();
        for line in (2..400).step_by(2) {
            p.push(Some(line), "bad");
        }
        assert_eq!((p.total(), p.listed().len()), (199, 100));
        p.merge(vec![Problem { line: Some(3), problem: "dup".into() }], 50);
        assert_eq!(p.total(), 250);
        assert_eq!(p.listed().len(), 100);
        assert_eq!(p.listed()[1], Problem { line: Some(3), problem: "dup".into() });
    }

    #[test]
    fn staged_rows_are_copy_text_with_one_row_per_card() {
        let keys = KeyRing::parse(&crate::config::generate_card_key("t1")).unwrap();
        let mut s = Stager::new(&keys, b"aad".to_vec());
        s.line(1, Line::Whole(b"code,expires_at"));
        s.line(2, Line::Whole(b"ABC,"));
        s.line(3, Line::Whole(b"DEF,2099-01-01T00:00:00Z"));
        s.line(4, Line::TooLong);
        assert_eq!((s.accepted, s.rejected()), (2, 1));
        let text = String::from_utf8(s.copy.clone()).unwrap();
        let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0][0], rows[0][4], rows[0][5]), ("2", "t1", "\\N"));
        assert!(rows[0][1].starts_with("\\\\x") && rows[0][1].len() == 3 + 64);
        assert_eq!(rows[1][5], "2099-01-01T00:00:00Z");
        assert!(!s.header_refused());
    }
}
