//! Outbound classification: the one place that turns a DCS answer (HTTP status, SOAP Fault or
//! response) or a transport failure into `Delivered`, `Retry` or `Reject`. Pure, no I/O.

use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode, header};
use synchub_adapter_sdk::Outcome;
pub use synchub_adapter_sdk::http::{
    REASON_BODY_BYTES, TransportFailure, body_excerpt, classify_error, classify_transport,
    parse_retry_after, status_line,
};

use crate::soap::{Answer, FaultClass, read_answer};

/// Depth limit when reading a partner's answer: a fault or a response is shallow.
const ANSWER_MAX_DEPTH: usize = 32;
/// The response element child that names what DCS created.
const TASK_ID: &str = "taskId";

/// Classifies an answer DCS gave. `body` is a bounded prefix of the response body; `now`
/// anchors `Retry-After` dates.
pub fn classify_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Outcome {
    let after = || {
        headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now))
    };
    let retry = |reason: String| Outcome::Retry {
        reason,
        after: after(),
        cause_chain: Vec::new(),
    };
    let answer = std::str::from_utf8(body)
        .ok()
        .and_then(|s| read_answer(s, ANSWER_MAX_DEPTH).ok());
    let code = status.as_u16();
    // Throttling and maintenance mean "later" whatever the body says.
    if matches!(code, 408 | 429 | 503) {
        return retry(describe(status, answer.as_ref(), body));
    }
    match answer {
        Some(Answer::Fault(f)) => {
            let reason = format!(
                "{}: SOAP fault {}: {}",
                status_line(status),
                f.code,
                if f.message.is_empty() {
                    "(no faultstring)"
                } else {
                    &f.message
                }
            );
            match f.class {
                FaultClass::Client => Outcome::reject(reason),
                FaultClass::Server => retry(reason),
            }
        }
        Some(Answer::Response { fields, .. }) if status.is_success() => Outcome::Delivered {
            remote_ref: fields
                .into_iter()
                .find(|(k, v)| k == TASK_ID && !v.is_empty())
                .map(|(_, v)| v),
        },
        Some(Answer::Empty) if status.is_success() => Outcome::Delivered { remote_ref: None },
        other => match code {
            // Not a SOAP answer at all: we cannot tell whether DCS took the task. Retrying is
            // safe (DCS keys tasks by campaign and dealer) and parks visibly if it persists.
            200..=299 => retry(format!(
                "{}: the answer is not a SOAP envelope: {}",
                status_line(status),
                body_excerpt(body)
            )),
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
            // Wrong URL or credentials rejected at the HTTP level: permanent until the config
            // changes (the message parks and can be replayed after the fix).
            400..=499 => Outcome::reject(describe(status, other.as_ref(), body)),
            _ => retry(describe(status, other.as_ref(), body)),
        },
    }
}

fn describe(status: StatusCode, answer: Option<&Answer>, body: &[u8]) -> String {
    match answer {
        Some(Answer::Fault(f)) => format!(
            "{}: SOAP fault {}: {}",
            status_line(status),
            f.code,
            f.message
        ),
        _ => {
            let excerpt = body_excerpt(body);
            if excerpt.is_empty() {
                status_line(status)
            } else {
                format!("{}: {excerpt}", status_line(status))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soap::{Fault, SoapVersion, envelope};
    use http::HeaderValue;
    use std::time::Duration;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn answer(code: u16, h: &[(&'static str, &'static str)], body: &str) -> Outcome {
        let mut headers = HeaderMap::new();
        for (k, v) in h {
            headers.insert(*k, HeaderValue::from_static(v));
        }
        classify_response(
            StatusCode::from_u16(code).unwrap(),
            &headers,
            body.as_bytes(),
            now(),
        )
    }

    fn reason(o: &Outcome) -> &str {
        match o {
            Outcome::Retry { reason, .. } | Outcome::Reject { reason, .. } => reason,
            other => panic!("expected a reason, got {other:?}"),
        }
    }

    fn ok_response() -> String {
        envelope(
            SoapVersion::V11,
            "",
            r#"<t:PublishCampaignTaskResponse xmlns:t="urn:synchub:dcs:task:v1"><t:taskId>DCS-T-42</t:taskId></t:PublishCampaignTaskResponse>"#,
        )
    }

    #[test]
    fn row_2xx_response_is_delivered_with_task_id() {
        assert_eq!(
            answer(200, &[], &ok_response()),
            Outcome::Delivered {
                remote_ref: Some("DCS-T-42".into())
            }
        );
    }

    #[test]
    fn row_2xx_empty_body_element_is_delivered_without_ref() {
        let xml = envelope(SoapVersion::V11, "", "");
        assert_eq!(
            answer(200, &[], &xml),
            Outcome::Delivered { remote_ref: None }
        );
    }

    #[test]
    fn row_2xx_not_soap_is_retry() {
        let o = answer(200, &[], "<html>proxy login</html>");
        assert_eq!(o.label(), "retry");
        assert!(reason(&o).contains("not a SOAP envelope"), "{o:?}");
    }

    #[test]
    fn row_client_fault_is_reject_with_faultstring() {
        let xml = Fault::client("x", "dealerCode D9999 unknown").to_xml(SoapVersion::V11);
        let o = answer(500, &[], &xml);
        assert_eq!(o.label(), "reject");
        assert_eq!(
            reason(&o),
            "HTTP 500 Internal Server Error: SOAP fault soap:Client: dealerCode D9999 unknown"
        );
    }

    #[test]
    fn row_sender_fault_12_is_reject() {
        let xml = Fault::client("x", "bad date").to_xml(SoapVersion::V12);
        assert_eq!(answer(400, &[], &xml).label(), "reject");
    }

    #[test]
    fn row_server_fault_is_retry() {
        let xml = Fault::server("x", "database locked").to_xml(SoapVersion::V11);
        let o = answer(500, &[("retry-after", "30")], &xml);
        assert_eq!(
            o,
            Outcome::Retry {
                reason: "HTTP 500 Internal Server Error: SOAP fault soap:Server: database locked"
                    .into(),
                after: Some(Duration::from_secs(30)),
                cause_chain: vec![]
            }
        );
        let xml = Fault::server("x", "m").to_xml(SoapVersion::V12);
        assert_eq!(answer(500, &[], &xml).label(), "retry");
    }

    #[test]
    fn row_fault_with_foreign_code_namespace_is_retry() {
        let xml = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>
            <faultcode xmlns:a="urn:app">a:Client</faultcode><faultstring>?</faultstring></s:Fault></s:Body></s:Envelope>"#;
        assert_eq!(answer(500, &[], xml).label(), "retry");
    }

    #[test]
    fn row_5xx_without_fault_is_retry() {
        for code in [500, 502, 504] {
            let o = answer(code, &[], "upstream error");
            assert_eq!(o.label(), "retry", "{code}");
            assert!(reason(&o).ends_with(": upstream error"), "{o:?}");
        }
    }

    #[test]
    fn row_503_and_429_are_retry_with_retry_after() {
        for code in [503, 429] {
            match answer(code, &[("retry-after", "120")], "") {
                Outcome::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(120))),
                other => panic!("{other:?}"),
            }
        }
        // Even with a client fault in the body, 503 says "later".
        let xml = Fault::client("x", "m").to_xml(SoapVersion::V11);
        assert_eq!(answer(503, &[], &xml).label(), "retry");
        match answer(503, &[("retry-after", "Wed, 25 Nov 2026 08:01:00 GMT")], "") {
            Outcome::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(60))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn row_4xx_without_fault_is_reject() {
        for code in [400, 401, 403, 404] {
            assert_eq!(answer(code, &[], "no").label(), "reject", "{code}");
        }
    }

    #[test]
    fn row_3xx_is_reject() {
        let o = answer(301, &[("location", "https://dcs2/ws")], "");
        assert_eq!(o.label(), "reject");
        assert!(reason(&o).contains("https://dcs2/ws"));
    }

    #[test]
    fn row_transport_failures() {
        let chain = vec![
            "error sending request".to_owned(),
            "connection refused".to_owned(),
        ];
        let o = classify_transport(TransportFailure::Connect, chain.clone());
        assert_eq!(
            o,
            Outcome::Retry {
                reason: "could not connect: connection refused".into(),
                after: None,
                cause_chain: chain
            }
        );
        assert_eq!(
            classify_transport(TransportFailure::Timeout, vec![]).label(),
            "retry"
        );
        assert_eq!(
            classify_transport(TransportFailure::Body, vec![]).label(),
            "retry"
        );
        assert_eq!(
            classify_transport(TransportFailure::Other, vec![]).label(),
            "retry"
        );
        assert_eq!(
            classify_transport(TransportFailure::Request, vec![]).label(),
            "reject"
        );
    }

    #[test]
    fn garbage_answers_do_not_panic() {
        let mut garbage = vec![0xffu8; 10];
        garbage.extend(b"<soap:Envelope");
        let o = classify_response(StatusCode::OK, &HeaderMap::new(), &garbage, now());
        assert_eq!(o.label(), "retry");
        assert!(reason(&o).len() <= REASON_BODY_BYTES + 80);
    }
}
