//! Streaming CSV rows out of a remote file: bounded physical lines, charset decoding per line,
//! quoted fields spanning lines, and a problem per row instead of a failed file.
//!
//! Our own small reader rather than the `csv` crate: the decoding has to happen per line (so an
//! undecodable byte rejects one row, not the file), and every row needs its line number and its
//! decoded text for the envelope. Lines are split on `\n` before decoding, which is safe for
//! UTF-8 and GB18030 alike: neither uses byte 0x0A (nor 0x22, the quote) inside a multi-byte
//! character.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::config::Charset;
use crate::error::SftpError;

/// Longest physical line kept; a longer one is rejected as a row (and a binary file without
/// newlines cannot exhaust memory).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Longest record (a quoted field may span lines); a longer one is rejected as a row.
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// One logical CSV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Physical line the record starts on (1-based; the header is normally line 1).
    pub line: u64,
    /// The record's text after decoding (lines joined by `\n`, no trailing newline).
    pub text: String,
    /// The fields, or why the record cannot be read.
    pub fields: Result<Vec<String>, String>,
}

/// Reads [`Row`]s from a buffered byte stream, hashing every byte it consumes.
pub struct RowReader<R> {
    inner: R,
    charset: Charset,
    delimiter: char,
    timeout: Duration,
    /// What the timeout message names (`read DEALER_20261125.csv`).
    op: String,
    line_no: u64,
    raw: Vec<u8>,
    hasher: Sha256,
    bytes: u64,
    first_line: bool,
}

impl<R: AsyncBufRead + Unpin> RowReader<R> {
    pub fn new(inner: R, charset: Charset, delimiter: char, timeout: Duration, op: String) -> Self {
        RowReader {
            inner,
            charset,
            delimiter,
            timeout,
            op,
            line_no: 0,
            raw: Vec::with_capacity(4096),
            hasher: Sha256::new(),
            bytes: 0,
            first_line: true,
        }
    }

    /// Lower-case hex sha256 and length of everything consumed so far (the whole file at EOF).
    pub fn digest(&self) -> (String, u64) {
        (hex::encode(self.hasher.clone().finalize()), self.bytes)
    }

    /// Reads one physical line into `self.raw` (without `\n` / `\r\n`). `Ok(None)` at EOF;
    /// `Ok(Some(true))` when the line was longer than [`MAX_LINE_BYTES`] (its content dropped).
    async fn read_line(&mut self) -> Result<Option<bool>, SftpError> {
        self.raw.clear();
        let mut any = false;
        let mut too_long = false;
        loop {
            let buf = match tokio::time::timeout(self.timeout, self.inner.fill_buf()).await {
                Err(_) => {
                    return Err(SftpError::Timeout {
                        op: self.op.clone(),
                        after: self.timeout,
                    });
                }
                Ok(Err(source)) => {
                    return Err(SftpError::Io {
                        op: self.op.clone(),
                        source,
                    });
                }
                Ok(Ok(b)) => b,
            };
            if buf.is_empty() {
                break;
            }
            any = true;
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..=i], true),
                None => (buf, false),
            };
            self.hasher.update(chunk);
            let n = chunk.len();
            self.bytes += n as u64;
            let content = if done { &chunk[..n - 1] } else { chunk };
            if self.raw.len() + content.len() <= MAX_LINE_BYTES {
                self.raw.extend_from_slice(content);
            } else {
                too_long = true;
            }
            self.inner.consume(n);
            if done {
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        if too_long {
            self.raw.clear();
        }
        if self.raw.last() == Some(&b'\r') {
            self.raw.pop();
        }
        Ok(Some(too_long))
    }

    /// Decodes `self.raw`; the flag says some bytes were not valid in the charset.
    fn decode(&mut self) -> (String, bool) {
        let (text, bad) = match self.charset {
            Charset::Utf8 => match std::str::from_utf8(&self.raw) {
                Ok(s) => (s.to_owned(), false),
                Err(_) => (String::from_utf8_lossy(&self.raw).into_owned(), true),
            },
            Charset::Gb18030 => {
                let (t, bad) = encoding_rs::GB18030.decode_without_bom_handling(&self.raw);
                (t.into_owned(), bad)
            }
        };
        if std::mem::take(&mut self.first_line)
            && let Some(rest) = text.strip_prefix('\u{feff}')
        {
            return (rest.to_owned(), bad);
        }
        (text, bad)
    }

    /// The next record, skipping blank lines; `Ok(None)` at end of file.
    pub async fn next_row(&mut self) -> Result<Option<Row>, SftpError> {
        let mut text = String::new();
        let mut start = 0;
        let mut problem: Option<String> = None;
        let mut in_quotes = false;
        loop {
            let Some(too_long) = self.read_line().await? else {
                if start == 0 {
                    return Ok(None);
                }
                let problem = problem.unwrap_or_else(|| {
                    format!("line {start}: quoted field not closed before end of file")
                });
                return Ok(Some(Row {
                    line: start,
                    text,
                    fields: Err(problem),
                }));
            };
            self.line_no += 1;
            if too_long {
                problem.get_or_insert(format!(
                    "line {}: longer than {MAX_LINE_BYTES} bytes",
                    self.line_no
                ));
            }
            let (decoded, bad) = self.decode();
            if bad {
                problem.get_or_insert(format!(
                    "line {}: bytes that are not valid {}",
                    self.line_no,
                    self.charset.as_str()
                ));
            }
            if start == 0 {
                if decoded.is_empty() && problem.is_none() {
                    continue;
                }
                start = self.line_no;
            } else {
                text.push('\n');
            }
            // RFC 4180 escapes a quote as "", so an odd count toggles "inside a quoted field".
            if decoded.bytes().filter(|&b| b == b'"').count() % 2 == 1 {
                in_quotes = !in_quotes;
            }
            if text.len() + decoded.len() <= MAX_RECORD_BYTES {
                text.push_str(&decoded);
            } else if in_quotes {
                // Runaway quote: give up on this record here, the next line starts afresh.
                problem.get_or_insert(format!(
                    "line {start}: quoted field not closed within {MAX_RECORD_BYTES} bytes"
                ));
                in_quotes = false;
            }
            if in_quotes {
                continue;
            }
            let fields = match problem {
                Some(p) => Err(p),
                None => {
                    split_fields(&text, self.delimiter).map_err(|e| format!("line {start}: {e}"))
                }
            };
            return Ok(Some(Row {
                line: start,
                text,
                fields,
            }));
        }
    }
}

/// Splits one complete record into fields: `"` quotes a field, `""` inside it is a quote.
pub fn split_fields(record: &str, delimiter: char) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = record.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err(format!("field {}: quote not closed", fields.len() + 1)),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(c) if c == delimiter => fields.push(field),
                Some(_) => {
                    return Err(format!(
                        "field {}: text after the closing quote",
                        fields.len() + 1
                    ));
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(c) if c == delimiter => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn rows(bytes: &[u8], charset: Charset) -> (Vec<Row>, String) {
        let mut r = RowReader::new(
            tokio::io::BufReader::with_capacity(7, bytes),
            charset,
            ',',
            Duration::from_secs(1),
            "read t".into(),
        );
        let mut out = Vec::new();
        while let Some(row) = r.next_row().await.unwrap() {
            out.push(row);
        }
        (out, r.digest().0)
    }

    #[test]
    fn splits_quoted_fields() {
        assert_eq!(split_fields("a,b,,c", ',').unwrap(), ["a", "b", "", "c"]);
        assert_eq!(split_fields("", ',').unwrap(), [""]);
        assert_eq!(split_fields("a,", ',').unwrap(), ["a", ""]);
        assert_eq!(
            split_fields(r#""x, ""y""",2"#, ',').unwrap(),
            [r#"x, "y""#, "2"]
        );
        assert_eq!(split_fields("\"l1\nl2\";3", ';').unwrap(), ["l1\nl2", "3"]);
        assert!(
            split_fields(r#""a"b,c"#, ',')
                .unwrap_err()
                .contains("field 1")
        );
    }

    #[tokio::test]
    async fn lines_blank_lines_crlf_bom_and_multiline_records() {
        let data = "\u{feff}h1,h2\r\n1,\"two\nlines\"\r\n\r\n3,4\n5,6";
        let (rows, sha) = rows(data.as_bytes(), Charset::Utf8).await;
        let got: Vec<(u64, Vec<String>)> = rows
            .iter()
            .map(|r| (r.line, r.fields.clone().unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, vec!["h1".into(), "h2".into()]),
                (2, vec!["1".into(), "two\nlines".into()]),
                (5, vec!["3".into(), "4".into()]),
                (6, vec!["5".into(), "6".into()]),
            ]
        );
        assert_eq!(rows[1].text, "1,\"two\nlines\"");
        assert_eq!(sha, hex::encode(Sha256::digest(data.as_bytes())));
    }

    #[tokio::test]
    async fn gb18030_decodes_and_bad_bytes_reject_only_their_row() {
        let (enc, _, _) = encoding_rs::GB18030.encode("code,name\nD0001,广州\n");
        let mut data = enc.into_owned();
        data.extend_from_slice(b"D0002,\x81\x20bad\nD0003,ok\n");
        let (rows, _) = rows(&data, Charset::Gb18030).await;
        assert_eq!(rows[1].fields.clone().unwrap(), ["D0001", "广州"]);
        assert!(
            rows[2].fields.clone().unwrap_err().contains("line 3"),
            "{:?}",
            rows[2]
        );
        assert_eq!(rows[3].fields.clone().unwrap(), ["D0003", "ok"]);

        let (rows, _) = rows_utf8(b"a\n\xff\xfe\nb\n").await;
        assert!(
            rows[1]
                .fields
                .clone()
                .unwrap_err()
                .contains("not valid utf-8")
        );
        assert_eq!(rows[2].fields.clone().unwrap(), ["b"]);
    }

    async fn rows_utf8(b: &[u8]) -> (Vec<Row>, String) {
        rows(b, Charset::Utf8).await
    }

    #[tokio::test]
    async fn unclosed_quote_at_eof_and_overlong_lines_are_row_problems() {
        let (rows, _) = rows_utf8(b"h\n\"open\nmore").await;
        assert_eq!(rows.len(), 2);
        assert!(rows[1].fields.clone().unwrap_err().contains("not closed"));

        let mut big = b"h\n".to_vec();
        big.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        big.extend_from_slice(b"\nok\n");
        let (rows, _) = rows_utf8(&big).await;
        assert!(
            rows[1]
                .fields
                .clone()
                .unwrap_err()
                .contains("line 2: longer")
        );
        assert!(rows[1].text.is_empty());
        assert_eq!(rows[2].fields.clone().unwrap(), ["ok"]);
    }
}
