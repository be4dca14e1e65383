//! Outbound error classification: the one place that turns an HTTP answer or a transport failure
//! into `Delivered`, `Retry` or `Reject` (the table in the README). Pure functions, no I/O.

use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode, header};
use synchub_adapter_sdk::Outcome;
pub use synchub_adapter_sdk::http::{
    REASON_BODY_BYTES, TransportFailure, body_excerpt, classify_error, classify_transport,
    parse_retry_after, status_line,
};

/// Classifies an answer the partner gave. `body` is (a bounded prefix of) the response body;
/// `now` anchors `Retry-After` dates so the function stays pure.
pub fn classify_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Outcome {
    let code = status.as_u16();
    match code {
        200..=299 => Outcome::Delivered {
            remote_ref: remote_ref(headers, body),
        },
        // 408 Request Timeout and 429 Too Many Requests are the partner saying "later";
        // 5xx is the partner's own trouble. Both pass with time.
        408 | 429 | 500..=599 => Outcome::Retry {
            reason: status_reason(status, body),
            after: headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, now)),
            cause_chain: Vec::new(),
        },
        // Redirects are not followed (a POST replayed as GET would look "delivered"), so a 3xx
        // means the configured URL is wrong: fix it and replay.
        300..=399 => {
            let to = headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| format!(" to {l}"))
                .unwrap_or_default();
            Outcome::reject(format!(
                "{}: redirect{to} not followed; fix the endpoint url",
                status_line(status)
            ))
        }
        400..=499 => Outcome::reject(status_reason(status, body)),
        // Non-standard codes: when in doubt, retry (it parks after max attempts and stays visible).
        _ => Outcome::retry(status_reason(status, body)),
    }
}

/// The partner's reference for what it created: a `Location` header, else a top-level JSON `id`.
fn remote_ref(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    if let Some(l) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
        return Some(l.to_owned());
    }
    if body.is_empty() {
        return None;
    }
    match serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("id")?
    {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn status_reason(status: StatusCode, body: &[u8]) -> String {
    let excerpt = body_excerpt(body);
    if excerpt.is_empty() {
        status_line(status)
    } else {
        format!("{}: {excerpt}", status_line(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::Duration;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn answer(code: u16, h: &[(&'static str, &'static str)], body: &str) -> Outcome {
        classify_response(
            StatusCode::from_u16(code).unwrap(),
            &headers(h),
            body.as_bytes(),
            now(),
        )
    }

    fn after(o: &Outcome) -> Option<Duration> {
        match o {
            Outcome::Retry { after, .. } => *after,
            other => panic!("expected Retry, got {other:?}"),
        }
    }

    fn reason(o: &Outcome) -> &str {
        match o {
            Outcome::Retry { reason, .. } | Outcome::Reject { reason, .. } => reason,
            other => panic!("expected a reason, got {other:?}"),
        }
    }

    #[test]
    fn row_2xx_is_delivered_with_location_as_remote_ref() {
        let o = answer(201, &[("location", "/leads/L77")], r#"{"id":"ignored"}"#);
        assert_eq!(
            o,
            Outcome::Delivered {
                remote_ref: Some("/leads/L77".into())
            }
        );
    }

    #[test]
    fn row_2xx_is_delivered_with_json_id_as_remote_ref() {
        assert_eq!(
            answer(200, &[], r#"{"id":"R-1"}"#),
            Outcome::Delivered {
                remote_ref: Some("R-1".into())
            }
        );
        assert_eq!(
            answer(200, &[], r#"{"id":42}"#),
            Outcome::Delivered {
                remote_ref: Some("42".into())
            }
        );
        assert_eq!(
            answer(204, &[], ""),
            Outcome::Delivered { remote_ref: None }
        );
        assert_eq!(
            answer(200, &[], "<ok/>"),
            Outcome::Delivered { remote_ref: None }
        );
    }

    #[test]
    fn row_5xx_is_retry_with_retry_after_seconds() {
        let o = answer(503, &[("retry-after", "7")], "maintenance");
        assert_eq!(after(&o), Some(Duration::from_secs(7)));
        assert_eq!(reason(&o), "HTTP 503 Service Unavailable: maintenance");
        assert_eq!(after(&answer(500, &[], "")), None);
    }

    #[test]
    fn row_429_is_retry_with_retry_after_date() {
        let o = answer(429, &[("retry-after", "Wed, 25 Nov 2026 08:01:30 GMT")], "");
        assert_eq!(after(&o), Some(Duration::from_secs(90)));
    }

    #[test]
    fn row_408_is_retry() {
        assert_eq!(answer(408, &[], "").label(), "retry");
    }

    #[test]
    fn row_other_4xx_is_reject_with_status_and_body() {
        for code in [400, 401, 403, 404, 409, 422] {
            let o = answer(code, &[], "{\"error\":\n\"mobile invalid\"}");
            assert_eq!(o.label(), "reject", "{code}");
            assert!(reason(&o).starts_with(&format!("HTTP {code} ")), "{o:?}");
            assert!(
                reason(&o).ends_with("{\"error\": \"mobile invalid\"}"),
                "{o:?}"
            );
        }
    }

    #[test]
    fn row_3xx_is_reject_naming_the_redirect() {
        let o = answer(302, &[("location", "https://new.example/api")], "");
        assert_eq!(o.label(), "reject");
        assert!(reason(&o).contains("to https://new.example/api"), "{o:?}");
    }

    #[test]
    fn row_nonstandard_status_is_retry() {
        assert_eq!(answer(999, &[], "").label(), "retry");
    }

    #[test]
    fn row_timeout_is_retry() {
        let o = classify_transport(
            TransportFailure::Timeout,
            vec!["error sending request".into(), "operation timed out".into()],
        );
        assert_eq!(o.label(), "retry");
        assert_eq!(reason(&o), "timed out: operation timed out");
    }

    #[test]
    fn row_connect_error_is_retry_with_cause_chain() {
        let chain = vec![
            "error sending request".to_owned(),
            "Connection refused (os error 111)".to_owned(),
        ];
        let o = classify_transport(TransportFailure::Connect, chain.clone());
        assert_eq!(
            o,
            Outcome::Retry {
                reason: "could not connect: Connection refused (os error 111)".into(),
                after: None,
                cause_chain: chain
            }
        );
    }

    #[test]
    fn row_body_read_error_is_retry() {
        assert_eq!(
            classify_transport(TransportFailure::Body, vec![]).label(),
            "retry"
        );
    }

    #[test]
    fn row_other_transport_error_is_retry() {
        assert_eq!(
            classify_transport(TransportFailure::Other, vec!["reset".into()]).label(),
            "retry"
        );
    }

    #[test]
    fn row_unbuildable_request_is_reject() {
        // A real reqwest builder error, made without I/O.
        let e = reqwest::Client::new().get("not a url").build().unwrap_err();
        assert_eq!(TransportFailure::of(&e), TransportFailure::Request);
        assert_eq!(classify_error(&e).label(), "reject");
    }

    #[test]
    fn retry_after_forms() {
        let n = now();
        assert_eq!(
            parse_retry_after(" 120 ", n),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 25 Nov 2026 08:00:10 GMT", n),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wednesday, 25-Nov-26 08:00:10 GMT", n),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed Nov 25 08:00:10 2026", n),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Tue, 24 Nov 2026 08:00:00 GMT", n),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-1", n), None);
        assert_eq!(parse_retry_after("soon", n), None);
        assert_eq!(parse_retry_after("", n), None);
        assert_eq!(parse_retry_after("99999999999999999999999", n), None);
    }

    #[test]
    fn excerpt_is_bounded_and_safe() {
        let long = "é".repeat(400); // 800 bytes; the 500-byte cut falls inside no char (2-byte chars)
        assert_eq!(body_excerpt(long.as_bytes()).len(), 500);
        let odd = format!("a{}", "é".repeat(300)); // cut falls inside a 'é'
        assert_eq!(body_excerpt(odd.as_bytes()).len(), 499);
        assert_eq!(body_excerpt(b"\xff\xfe bad"), "\u{fffd}\u{fffd} bad");
        assert_eq!(body_excerpt(b"line1\r\nline2"), "line1  line2");
    }
}
