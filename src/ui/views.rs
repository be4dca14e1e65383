//! Turning the store's JSON answers into what a page shows: strings for template fields, ages,
//! pretty-printed payloads (JSON, indented XML, CSV as a table), and the `since` filter parser.

use serde_json::Value;

/// A field of a JSON object as display text (`""` when absent or null; numbers and booleans as
/// written; nested values as compact JSON).
pub fn s(v: &Value, key: &str) -> String {
    text(&v[key])
}

pub fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn opt(v: &Value, key: &str) -> Option<String> {
    Some(s(v, key)).filter(|x| !x.is_empty())
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` in UTC, the way every page shows times.
pub fn time(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|_| rfc3339.to_string())
}

pub fn ms_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// Seconds as a short age: `45s`, `12m 5s`, `3h 20m`, `2d 4h`.
pub fn age(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h {}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d {}h", secs / 86400, (secs % 86400) / 3600),
    }
}

/// Seconds since an RFC 3339 time.
pub fn secs_since(rfc3339: &str) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339).ok()?;
    Some((chrono::Utc::now().timestamp_millis() - t.timestamp_millis()) / 1000)
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A payload for reading: JSON pretty-printed, XML indented, anything else as stored.
pub fn pretty(body: &Value) -> String {
    match body {
        Value::String(s) => {
            let t = s.trim_start();
            if t.starts_with('<') {
                indent_xml(s).unwrap_or_else(|| s.clone())
            } else {
                s.clone()
            }
        }
        Value::Null => String::new(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

/// Re-indents XML two spaces per level; `None` when it does not parse (then it is shown as is).
pub fn indent_xml(xml: &str) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut writer = quick_xml::Writer::new_with_indent(Vec::new(), b' ', 2);
    loop {
        match reader.read_event() {
            Ok(Event::Eof) => break,
            Ok(e) => writer.write_event(e).ok()?,
            Err(_) => return None,
        }
    }
    String::from_utf8(writer.into_inner()).ok()
}

/// A CSV text as header + rows (at most `max` rows), for the CSV row view of SFTP files.
pub fn csv_table(text: &str, max: usize) -> Option<(Vec<String>, Vec<Vec<String>>)> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = csv_fields(lines.next()?);
    if header.len() < 2 {
        return None;
    }
    let rows = lines.take(max).map(csv_fields).collect();
    Some((header, rows))
}

/// One CSV line's fields, honouring double quotes (`"a,b"` and `""` inside quotes).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// The `since` filter: RFC 3339, `YYYY-MM-DDTHH:MM` (a datetime-local field) or `HH:MM` (today),
/// both of the latter in UTC. Empty = no filter.
pub fn parse_since(s: &str) -> Result<Option<i64>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(Some(t.timestamp_millis()));
    }
    for f in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Ok(Some(t.and_utc().timestamp_millis()));
        }
    }
    if let Ok(t) = chrono::NaiveTime::parse_from_str(s, "%H:%M") {
        let today = chrono::Utc::now().date_naive();
        return Ok(Some(today.and_time(t).and_utc().timestamp_millis()));
    }
    Err(format!(
        "since '{s}' is not a time: use 2026-12-01T08:00 (UTC), 08:00 (today, UTC) or RFC 3339"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ages_read_short() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(125), "2m 5s");
        assert_eq!(age(3 * 3600 + 20 * 60), "3h 20m");
        assert_eq!(age(2 * 86400 + 4 * 3600), "2d 4h");
    }

    #[test]
    fn xml_is_indented_and_json_pretty() {
        let x = pretty(&json!("<a><b>1</b><c>广州</c></a>"));
        assert_eq!(x, "<a>\n  <b>1</b>\n  <c>广州</c>\n</a>");
        assert_eq!(pretty(&json!({"a": 1})), "{\n  \"a\": 1\n}");
        assert_eq!(pretty(&json!("not <xml")), "not <xml");
    }

    #[test]
    fn since_takes_the_forms_an_operator_types() {
        assert_eq!(
            parse_since("2026-12-01T08:00").unwrap(),
            Some(
                chrono::DateTime::parse_from_rfc3339("2026-12-01T08:00:00Z")
                    .unwrap()
                    .timestamp_millis()
            )
        );
        assert!(parse_since("08:00").unwrap().is_some());
        assert_eq!(parse_since("").unwrap(), None);
        assert!(parse_since("yesterday").unwrap_err().contains("yesterday"));
    }

    #[test]
    fn csv_rows_become_a_table() {
        let (h, rows) = csv_table("vin,dealer\nLSV1,D0001\n", 10).unwrap();
        assert_eq!(h, ["vin", "dealer"]);
        assert_eq!(rows, [vec!["LSV1".to_string(), "D0001".to_string()]]);
        let (_, rows) = csv_table("a,b\n\"广州, 天河\",\"say \"\"hi\"\"\"\n", 10).unwrap();
        assert_eq!(rows[0], ["广州, 天河", "say \"hi\""]);
    }
}
