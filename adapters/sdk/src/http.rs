//! HTTP-based adapters' shared outcome rules (feature `http`): transport failures, `Retry-After`
//! and the wording of reasons, so REST and SOAP classify alike. Pure functions, no I/O.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use http::StatusCode;

use crate::error::cause_chain;
use crate::outbound::Outcome;

/// How many bytes of a partner's answer go into a `reason`.
pub const REASON_BODY_BYTES: usize = 500;

/// What kind of transport failure ended an attempt before a complete answer was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    /// The attempt took longer than `timeout_ms` (connect, send or read).
    Timeout,
    /// No connection: refused, DNS failure, TLS handshake failure.
    Connect,
    /// The answer's body broke off while being read.
    Body,
    /// The request could not even be built from this delivery (e.g. a header value with a line
    /// break). Sending it again cannot help.
    Request,
    /// Anything else reqwest reports (connection reset mid-request, protocol error).
    Other,
}

impl TransportFailure {
    /// Sorts a reqwest error into a kind. Order matters: a connect timeout is both `is_connect`
    /// and `is_timeout`; we report it as a timeout, which is what an operator tunes.
    pub fn of(e: &reqwest::Error) -> TransportFailure {
        if e.is_builder() {
            TransportFailure::Request
        } else if e.is_timeout() {
            TransportFailure::Timeout
        } else if e.is_connect() {
            TransportFailure::Connect
        } else if e.is_body() || e.is_decode() {
            TransportFailure::Body
        } else {
            TransportFailure::Other
        }
    }
}

/// Classifies a failure that left no complete answer. `chain` is the error's cause chain.
pub fn classify_transport(kind: TransportFailure, chain: Vec<String>) -> Outcome {
    let what = match kind {
        TransportFailure::Timeout => "timed out",
        TransportFailure::Connect => "could not connect",
        TransportFailure::Body => "answer broke off while reading it",
        TransportFailure::Request => "request could not be built",
        TransportFailure::Other => "transport error",
    };
    let reason = match chain.last() {
        Some(root) => format!("{what}: {root}"),
        None => what.to_owned(),
    };
    match kind {
        TransportFailure::Request => Outcome::Reject {
            reason,
            cause_chain: chain,
        },
        _ => Outcome::Retry {
            reason,
            after: None,
            cause_chain: chain,
        },
    }
}

/// [`classify_transport`] for a reqwest error, with its cause chain.
pub fn classify_error(e: &reqwest::Error) -> Outcome {
    classify_transport(TransportFailure::of(e), cause_chain(e))
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date (IMF-fixdate, RFC 850, asctime; RFC 9110
/// §10.2.3). A date in the past means "now" (zero). Garbage gives `None` (the dispatcher's own
/// backoff applies).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = DateTime::parse_from_rfc2822(v)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(v, f).ok())
                .map(|n| n.and_utc())
        })?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// `HTTP 503 Service Unavailable`, for reasons.
pub fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(r) => format!("HTTP {} {r}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// The first [`REASON_BODY_BYTES`] bytes of a body as one line of text. A multi-byte character
/// cut at the limit is dropped rather than shown as garbage; other invalid bytes become U+FFFD.
pub fn body_excerpt(body: &[u8]) -> String {
    let head = &body[..body.len().min(REASON_BODY_BYTES)];
    let head = match std::str::from_utf8(head) {
        Err(e) if e.error_len().is_none() => &head[..e.valid_up_to()],
        _ => head,
    };
    String::from_utf8_lossy(head)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The partner's `X-Correlation-Id` when it is a sane token (1 to 128 characters), else a fresh
/// uuid v7: it is carried into every hop and outbound header, so it must stay small.
pub fn correlation_id(headers: &http::HeaderMap) -> String {
    headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.len() <= 128)
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// How reading a request body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEnd {
    Complete,
    /// More than the limit was sent; `bytes` holds the first `limit` bytes.
    TooLarge,
    /// The client broke off or sent a malformed body; `bytes` holds what arrived.
    Broken(String),
}

/// What arrived of a request body, and how it ended.
#[derive(Debug, Clone)]
pub struct BodyRead {
    pub bytes: bytes::Bytes,
    pub end: BodyEnd,
}

/// How long the rest of an over-limit body is read and discarded after the refusal, in total and
/// between two frames (nginx's `lingering_time` / `lingering_timeout`).
pub const LINGER_TOTAL: std::time::Duration = std::time::Duration::from_secs(30);
pub const LINGER_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads a body frame by frame up to `limit`, keeping what arrived even when the body is too
/// large or breaks off, so the refusal can be journaled with it (a tower limit layer would only
/// say "too large").
///
/// The rest of a body over the limit is read and thrown away in the background while the
/// refusal goes out. Closing a socket with unread bytes makes the kernel answer with a reset,
/// and a client still sending then fails with "connection reset" before it has read the
/// 413/401 that names its mistake; reading on (bounded by [`LINGER_TOTAL`]) lets it finish
/// sending and read the answer.
pub async fn read_bounded<B>(mut body: B, limit: usize) -> BodyRead
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display,
{
    let mut buf = bytes::BytesMut::new();
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => {
                return BodyRead {
                    bytes: buf.freeze(),
                    end: BodyEnd::Complete,
                };
            }
            Some(Err(e)) => {
                return BodyRead {
                    bytes: buf.freeze(),
                    end: BodyEnd::Broken(e.to_string()),
                };
            }
            Some(Ok(frame)) => {
                // Trailers carry nothing we journal.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let room = limit - buf.len();
                if data.len() > room {
                    buf.extend_from_slice(&data[..room]);
                    tokio::spawn(linger(body));
                    return BodyRead {
                        bytes: buf.freeze(),
                        end: BodyEnd::TooLarge,
                    };
                }
                buf.extend_from_slice(&data);
            }
        }
    }
}

/// Reads and discards what is left of a refused body, until it ends, breaks, idles for
/// [`LINGER_IDLE`] or [`LINGER_TOTAL`] has passed.
async fn linger<B>(mut body: B)
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    let drain = async {
        loop {
            let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
            match tokio::time::timeout(LINGER_IDLE, frame).await {
                Ok(Some(Ok(_))) => {}
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TOTAL, drain).await;
}
