//! Inbound SOAP service `osm_vehicles_soap_in` (INTERFACES §2) as an axum `Router`: serves the
//! WSDL, checks content type, size, XML, WS-Security, action and operation, journals every
//! refusal, and answers `SyncVehiclesResponse` only after `Inbox::accept` committed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use chrono::Utc;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use synchub_adapter_sdk::http::{BodyEnd, BodyRead, correlation_id, read_bounded};
use synchub_adapter_sdk::{ContentType, Envelope, Inbox, Principal, RecordVerdict, Submission};

use crate::config::SoapInboundConfig;
use crate::soap::{
    EnvelopeError, Fault, FaultCode, MediaType, SoapVersion, envelope, must_understand,
    parse_content_type, read_to_body, read_to_end,
};
use crate::vehicles::{self, NS_VEHICLE, OPERATION, Rejected, Vehicles};
use crate::wssec::{Account, NS_WSSE, SecurityHeader, Verifier, read_security, redact_passwords};
use crate::xml::{Cursor, utf8};

/// `POST` the SOAP call here; `GET` with `?wsdl` for the WSDL.
pub const PATH: &str = "/soap/osm/VehicleService";

/// The WSDL as shipped (also at `config/wsdl/osm_vehicles.wsdl`).
pub const WSDL: &str = include_str!("../wsdl/osm_vehicles.wsdl");
/// The `soap:address` location written in the shipped WSDL, replaced when served.
pub const WSDL_SHIPPED_ADDRESS: &str = "http://localhost:8080/soap/osm/VehicleService";

/// Request header of SOAP 1.1 naming the operation.
pub const HEADER_SOAP_ACTION: &str = "soapaction";
/// Request and response header with the correlation id.
pub const HEADER_CORRELATION_ID: &str = "x-correlation-id";

/// Envelope header: the request path.
pub const ENV_PATH: &str = "soap.path";
/// Envelope header: the peer address, when the server was started with connect info.
pub const ENV_REMOTE_ADDR: &str = "soap.remote_addr";
/// Envelope header: the `Content-Type` as sent.
pub const ENV_CONTENT_TYPE: &str = "soap.content_type";
/// Envelope header: the SOAP action as sent (1.1 `SOAPAction` header or 1.2 `action` parameter).
pub const ENV_ACTION: &str = "soap.action";
/// Envelope header: `1.1` or `1.2`, when the content type said which.
pub const ENV_VERSION: &str = "soap.version";
/// Envelope header: the operation, on accepted requests (`SyncVehicles`).
pub const ENV_OPERATION: &str = "soap.operation";
/// Envelope header on refusals: `"true"` when the journaled body is only the first part.
pub const ENV_TRUNCATED: &str = "soap.truncated";
/// Envelope header: `"password"` when WS-Security password contents in the journaled body were
/// replaced by `***` (the only change ever made to the bytes the partner sent).
pub const ENV_REDACTED: &str = "soap.redacted";

/// At most this much of a request refused before anyone was authenticated is journaled: enough
/// to find a malformed OSM batch of a thousand vehicles by VIN, without letting anyone on the
/// network put 50 MiB into the journal per request.
pub const UNAUTHENTICATED_BODY_BYTES: usize = 1024 * 1024;

/// Bodies above this size are parsed on the blocking pool so a large batch does not stall the
/// async workers serving other requests.
const PARSE_INLINE_MAX: usize = 256 * 1024;

struct Shared {
    cfg: SoapInboundConfig,
    verifier: Verifier,
    inbox: Arc<dyn Inbox>,
}

/// The service's routes with absolute paths: `merge` it into the server's router. For
/// `soap.remote_addr`, serve with `into_make_service_with_connect_info::<SocketAddr>()`. The
/// handler reads the body itself (bounded by `max_body_bytes`), so no smaller body-limit layer
/// may wrap it.
pub fn router(cfg: SoapInboundConfig, inbox: Arc<dyn Inbox>) -> Router {
    let accounts: HashMap<String, Account> = cfg
        .users
        .iter()
        .map(|u| {
            (
                u.username.clone(),
                Account {
                    password: u.password.clone(),
                    principal: u.principal.clone(),
                },
            )
        })
        .collect();
    let shared = Arc::new(Shared {
        verifier: Verifier::new(accounts, cfg.accept_password_digest),
        cfg,
        inbox,
    });
    let get_shared = shared.clone();
    Router::new().route(
        PATH,
        post(move |req: Request| {
            let shared = shared.clone();
            async move { handle(shared, req).await }
        })
        .get(move |req: Request| {
            let shared = get_shared.clone();
            async move { wsdl(&shared, &req) }
        }),
    )
}

/// `GET ?wsdl`: the shipped WSDL with the address partners should call.
fn wsdl(s: &Shared, req: &Request) -> Response {
    let wants_wsdl = req.uri().query().is_some_and(|q| {
        q.split('&').any(|p| {
            p.split('=')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("wsdl"))
        })
    });
    if !wants_wsdl {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("This is a SOAP endpoint: POST SOAP requests here, or GET {PATH}?wsdl for its WSDL.\n"),
        )
            .into_response();
    }
    let base = match &s.cfg.public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => format!("http://{}", host_of(req.headers())),
    };
    let address = format!("{base}{PATH}");
    let body = WSDL.replace(WSDL_SHIPPED_ADDRESS, &crate::xml::escape(&address));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The request's `Host`, if it looks like a host name or address with an optional port; else
/// `localhost`. Nothing else is echoed into the WSDL.
fn host_of(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        })
        .unwrap_or("localhost")
        .to_owned()
}

/// Facts about the request that go on every envelope built from it.
struct Facts {
    remote_addr: Option<String>,
    content_type: Option<String>,
    action: Option<String>,
    version: Option<SoapVersion>,
    correlation_id: String,
}

impl Facts {
    fn envelope(&self, endpoint: &str, body: Bytes, principal: Option<Principal>) -> Envelope {
        let (body, redacted) = match redact_passwords(&body) {
            Some(clean) => (Bytes::from(clean), true),
            None => (body, false),
        };
        let mut env = Envelope::new(endpoint, ContentType::Xml, body).with_header(ENV_PATH, PATH);
        if redacted {
            env = env.with_header(ENV_REDACTED, "password");
        }
        if let Some(a) = &self.remote_addr {
            env = env.with_header(ENV_REMOTE_ADDR, a.clone());
        }
        if let Some(c) = &self.content_type {
            env = env.with_header(ENV_CONTENT_TYPE, c.clone());
        }
        if let Some(a) = &self.action {
            env = env.with_header(ENV_ACTION, a.clone());
        }
        if let Some(v) = self.version {
            let v = match v {
                SoapVersion::V11 => "1.1",
                SoapVersion::V12 => "1.2",
            };
            env = env.with_header(ENV_VERSION, v);
        }
        env.correlation_id = Some(self.correlation_id.clone());
        env.principal = principal;
        env
    }
}

/// A whole-request refusal: the fault, its HTTP status, and who was authenticated by then.
struct Refusal {
    status: StatusCode,
    fault: Fault,
    principal: Option<Principal>,
}

impl Refusal {
    fn client(status: StatusCode, code: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            fault: Fault::client(code, message),
            principal: None,
        }
    }
}

/// A request that passed every check.
struct Accepted {
    principal: Principal,
    vehicles: Vehicles,
}

async fn handle(s: Arc<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let media = parse_content_type(content_type.as_deref());
    let header_action = parts.headers.get(HEADER_SOAP_ACTION).map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .trim()
            .trim_matches('"')
            .to_owned()
    });
    let action = match &media {
        Ok(MediaType {
            version: SoapVersion::V12,
            action,
        }) => action.clone(),
        _ => header_action,
    };
    let facts = Facts {
        remote_addr: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0.to_string()),
        content_type,
        action,
        version: media.as_ref().ok().map(|m| m.version),
        correlation_id: correlation_id(&parts.headers),
    };
    // Faults go out in the version the partner spoke; before we know it, in 1.1.
    let version = facts.version.unwrap_or(SoapVersion::V11);

    let read = read_bounded(body, s.cfg.max_body_bytes).await;
    let checked = match (&read.end, media) {
        (BodyEnd::TooLarge, _) => Err(Box::new(Refusal::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body exceeds {} bytes", s.cfg.max_body_bytes),
        ))),
        (BodyEnd::Broken(e), _) => Err(Box::new(Refusal::client(
            StatusCode::BAD_REQUEST,
            "incomplete_body",
            format!("the request body could not be read: {e}"),
        ))),
        (BodyEnd::Complete, Err(msg)) => Err(Box::new(Refusal::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            msg,
        ))),
        (BodyEnd::Complete, Ok(media)) => {
            let bytes = read.bytes.clone();
            let action = facts.action.clone();
            if bytes.len() <= PARSE_INLINE_MAX {
                check(&s, &bytes, &media, action.as_deref())
            } else {
                let s2 = s.clone();
                match tokio::task::spawn_blocking(move || {
                    check(&s2, &bytes, &media, action.as_deref())
                })
                .await
                {
                    Ok(r) => r,
                    Err(e) => Err(Box::new(Refusal {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        fault: Fault::server(
                            "internal_error",
                            format!("request parsing failed: {e}"),
                        ),
                        principal: None,
                    })),
                }
            }
        }
    };
    let mut resp = match checked {
        Err(refusal) => refuse(&s, &facts, version, read, *refusal).await,
        Ok(ok) => accept(&s, &facts, version, read.bytes, ok).await,
    };
    if let Ok(v) = HeaderValue::from_str(&facts.correlation_id) {
        resp.headers_mut().insert(HEADER_CORRELATION_ID, v);
    }
    resp
}

/// Every check of §2 on a completely read body, in order. Synchronous so large bodies can run
/// on the blocking pool.
fn check(
    s: &Shared,
    body: &[u8],
    media: &MediaType,
    action: Option<&str>,
) -> Result<Accepted, Box<Refusal>> {
    let xml_fault = |e: EnvelopeError, principal: Option<Principal>| {
        Box::new(Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            fault: match &e {
                EnvelopeError::NotAnEnvelope { .. } => Fault {
                    code: FaultCode::VersionMismatch,
                    ..Fault::client(e.code(), e.to_string())
                },
                _ => Fault::client(e.code(), e.to_string()),
            },
            principal,
        })
    };
    let src = utf8(body).map_err(|e| xml_fault(e.into(), None))?;
    let mut cur = Cursor::new(src, s.cfg.max_depth);
    let mut security: Option<SecurityHeader> = None;
    let mut not_understood: Option<String> = None;
    let version = read_to_body(&mut cur, |c, v, block| {
        if block.name.is(NS_WSSE, "Security") && security.is_none() {
            security = Some(read_security(c)?);
        } else {
            if must_understand(&block, v) && not_understood.is_none() {
                not_understood = Some(block.name.display());
            }
            c.skip_rest(1)?;
        }
        Ok(())
    })
    .map_err(|e| xml_fault(e, None))?;
    if version != media.version {
        return Err(Box::new(Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            fault: Fault {
                code: FaultCode::VersionMismatch,
                ..Fault::client(
                    "version_mismatch",
                    format!(
                        "the envelope is SOAP {} but the Content-Type is {}",
                        if version == SoapVersion::V11 {
                            "1.1"
                        } else {
                            "1.2"
                        },
                        media.version.media_type()
                    ),
                )
            },
            principal: None,
        }));
    }
    if let Some(name) = not_understood {
        return Err(Box::new(Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            fault: Fault {
                code: FaultCode::MustUnderstand,
                ..Fault::client(
                    "must_understand",
                    format!("header block {name} is marked mustUnderstand and is not supported"),
                )
            },
            principal: None,
        }));
    }

    let token = security.and_then(|h| h.token);
    let principal = s.verifier.verify(token.as_ref(), Utc::now()).map_err(|e| {
        Box::new(Refusal::client(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.code(),
            e.to_string(),
        ))
    })?;
    let refuse = |code: &str, msg: String| {
        Box::new(Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            fault: Fault::client(code, msg),
            principal: Some(principal.clone()),
        })
    };

    if let Some(a) = action.filter(|a| !a.is_empty())
        && a != vehicles::SOAP_ACTION
    {
        return Err(refuse(
            "action_mismatch",
            format!(
                "SOAP action '{a}' does not match the operation; SyncVehicles has action '{}'",
                vehicles::SOAP_ACTION
            ),
        ));
    }
    let op = match cur.next_element() {
        Ok(Some(op)) => op,
        Ok(None) => return Err(refuse("invalid_envelope", "the SOAP Body is empty".into())),
        Err(e) => return Err(xml_fault(e.into(), Some(principal))),
    };
    if !op.name.is(NS_VEHICLE, OPERATION) {
        return Err(refuse(
            "unknown_operation",
            format!(
                "unknown operation {}; this service offers {{{NS_VEHICLE}}}{OPERATION}",
                op.name.display()
            ),
        ));
    }
    let vehicles = match vehicles::read_request(&mut cur, s.cfg.max_vehicles) {
        Ok(v) => v,
        Err(e) => return Err(refuse(e.code(), e.to_string())),
    };
    read_to_end(&mut cur).map_err(|e| xml_fault(e, Some(principal.clone())))?;
    Ok(Accepted {
        principal,
        vehicles,
    })
}

async fn refuse(
    s: &Shared,
    facts: &Facts,
    version: SoapVersion,
    read: BodyRead,
    mut refusal: Refusal,
) -> Response {
    let mut body = read.bytes;
    let mut truncated = matches!(read.end, BodyEnd::TooLarge);
    if refusal.principal.is_none() && body.len() > UNAUTHENTICATED_BODY_BYTES {
        body.truncate(UNAUTHENTICATED_BODY_BYTES);
        truncated = true;
    }
    let mut env = facts.envelope(&s.cfg.endpoint_id, body, refusal.principal.clone());
    if truncated {
        env = env.with_header(ENV_TRUNCATED, "true");
    }
    let id = env.id;
    // Journal first: every fault a partner sees can be found by operators.
    if let Err(e) = s
        .inbox
        .reject(env, &refusal.fault.detail_code, &refusal.fault.message)
        .await
    {
        tracing::warn!(endpoint = %s.cfg.endpoint_id, correlation_id = %facts.correlation_id, error = %e, "Could not journal a refused SOAP request, answering 503.");
        return unavailable(version);
    }
    tracing::info!(
        endpoint = %s.cfg.endpoint_id,
        code = %refusal.fault.detail_code,
        correlation_id = %facts.correlation_id,
        "SOAP request refused."
    );
    refusal.fault.message_id = Some(id);
    fault_response(refusal.status, version, &refusal.fault)
}

async fn accept(
    s: &Shared,
    facts: &Facts,
    version: SoapVersion,
    body: Bytes,
    ok: Accepted,
) -> Response {
    let Accepted {
        principal,
        vehicles,
    } = ok;
    let vins = vehicles.vins;
    let submission = Submission {
        envelope: facts
            .envelope(&s.cfg.endpoint_id, body, Some(principal))
            .with_header(ENV_OPERATION, OPERATION),
        records: vehicles.records,
    };
    // The ack point: nothing is answered until the journal has committed. If this future is
    // dropped (client gone), the Inbox guarantees all-or-nothing.
    let receipt = match s.inbox.accept(submission).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(endpoint = %s.cfg.endpoint_id, correlation_id = %facts.correlation_id, error = %e, "Journal unavailable, answering a Server fault with 503.");
            return unavailable(version);
        }
    };
    if receipt.records.len() != vins.len() {
        tracing::error!(
            endpoint = %s.cfg.endpoint_id,
            submitted = vins.len(),
            verdicts = receipt.records.len(),
            "Inbox returned a different number of verdicts than records submitted."
        );
    }
    let mut accepted = 0;
    let mut rejected = Vec::new();
    for (vin, verdict) in vins.iter().zip(&receipt.records) {
        match verdict {
            RecordVerdict::Accepted { .. } => accepted += 1,
            RecordVerdict::Rejected { errors, .. } => {
                rejected.push(Rejected::new(vin.as_deref(), errors));
            }
        }
    }
    let xml = envelope(
        version,
        "",
        &vehicles::response_xml(receipt.message_id, accepted, &rejected),
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, version.content_type())],
        xml,
    )
        .into_response()
}

fn fault_response(status: StatusCode, version: SoapVersion, fault: &Fault) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, version.content_type())],
        fault.to_xml(version),
    )
        .into_response()
}

/// Server fault, HTTP 503 with `Retry-After: 1`: nothing was stored, send the same request again.
fn unavailable(version: SoapVersion) -> Response {
    let mut resp = fault_response(
        StatusCode::SERVICE_UNAVAILABLE,
        version,
        &Fault::server(
            "unavailable",
            "the hub cannot store messages right now; nothing was accepted, send the request again",
        ),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_is_sanitised() {
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_static("hub.example.com:8443"),
        );
        assert_eq!(host_of(&h), "hub.example.com:8443");
        h.insert(header::HOST, HeaderValue::from_static("evil\"><x"));
        assert_eq!(host_of(&h), "localhost");
        assert_eq!(host_of(&HeaderMap::new()), "localhost");
    }

    #[test]
    fn shipped_wsdl_has_the_replaceable_address_on_both_ports() {
        assert_eq!(WSDL.matches(WSDL_SHIPPED_ADDRESS).count(), 2);
    }
}
