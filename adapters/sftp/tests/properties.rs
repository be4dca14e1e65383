//! Property tests (issue 10) of the CSV row reader and writer: arbitrary bytes never panic the
//! reader and every line is accounted for, RFC 4180 quoting round-trips any field, and the
//! extract writer neutralises formulas without losing the text.

use std::time::Duration;

use proptest::prelude::*;
use synchub_adapter_sftp::config::Charset;
use synchub_adapter_sftp::csv::{RowReader, split_fields};
use synchub_adapter_sftp::writer::objects_to_csv;

fn rows(bytes: &[u8], charset: Charset) -> Vec<synchub_adapter_sftp::csv::Row> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut r = RowReader::new(
            tokio::io::BufReader::with_capacity(16, bytes),
            charset,
            ',',
            Duration::from_secs(5),
            "read p".into(),
        );
        let mut out = Vec::new();
        while let Some(row) = r.next_row().await.expect("in-memory reads do not fail") {
            out.push(row);
        }
        out
    })
}

/// Field text with the characters CSV quoting is about.
fn field() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec![',', '"', '\n', '\r', ' ', '=', '-', '客']),
            any::<char>(),
        ],
        0..12,
    )
    .prop_map(|v| v.into_iter().collect())
}

fn quote(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_owned()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_rows_are_in_order(
        bytes in prop::collection::vec(prop_oneof![any::<u8>(), Just(b'\n'), Just(b'"'), Just(b',')], 0..400),
        gb in any::<bool>(),
    ) {
        let charset = if gb { Charset::Gb18030 } else { Charset::Utf8 };
        let rows = rows(&bytes, charset);
        let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        let mut last = 0;
        for r in &rows {
            prop_assert!(r.line > last && r.line <= lines, "{:?}", r);
            last = r.line;
            if let Ok(fields) = &r.fields {
                prop_assert!(!fields.is_empty());
            }
        }
    }

    #[test]
    fn quoted_fields_round_trip(fields in prop::collection::vec(field(), 1..8)) {
        let record: Vec<String> = fields.iter().map(|f| quote(f)).collect();
        let record = record.join(",");
        prop_assert_eq!(split_fields(&record, ','), Ok(fields.clone()));
        // Through the reader too (a header line first), unless a bare CR ends the record:
        // line ends are CRLF-tolerant by design.
        if !record.ends_with('\r') {
            let file = format!("h\n{record}\n");
            let rows = rows(file.as_bytes(), Charset::Utf8);
            let got = rows.get(1).map(|r| r.fields.clone());
            if fields.iter().any(|f| f.contains("\r\n") || f.ends_with('\r')) {
                // A CR before a line break inside a quoted field is taken as the line end.
            } else if fields.len() == 1 && fields[0].is_empty() {
                prop_assert_eq!(rows.len(), 1, "a blank line is skipped");
            } else {
                prop_assert_eq!(got, Some(Ok(fields)));
            }
        }
    }

    #[test]
    fn extract_cells_neutralise_formulas_and_keep_the_text(values in prop::collection::vec(field(), 1..6)) {
        let obj: serde_json::Map<String, serde_json::Value> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("c{i}"), serde_json::Value::String(v.clone())))
            .collect();
        let csv = String::from_utf8(objects_to_csv(&[obj])).expect("UTF-8");
        let body = csv.split_once('\n').expect("header line").1;
        let body = body.strip_suffix('\n').expect("record line end");
        let cells = split_fields(body, ',').expect("readable");
        prop_assert_eq!(cells.len(), values.len());
        for (cell, value) in cells.iter().zip(&values) {
            if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                prop_assert_eq!(cell, &format!("'{value}"));
            } else {
                prop_assert_eq!(cell, value);
            }
        }
    }
}
