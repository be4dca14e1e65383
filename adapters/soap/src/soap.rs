//! The SOAP envelope layer: 1.1 and 1.2 namespaces and media types, reading an envelope's
//! Header and Body by namespace URI, writing envelopes and Faults, and reading a partner's Fault.

use uuid::Uuid;

use crate::xml::{Cursor, Element, Name, Node, XmlError, escape};

/// SOAP 1.1 envelope namespace.
pub const NS_SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// SOAP 1.2 envelope namespace.
pub const NS_SOAP12: &str = "http://www.w3.org/2003/05/soap-envelope";
/// XML Schema instance namespace (`xsi:nil`, `xsi:type`).
pub const NS_XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// Namespace of the `detail` element of our faults.
pub const NS_FAULT: &str = "urn:synchub:fault:v1";

/// Which SOAP version a message uses. A request is answered in its own version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoapVersion {
    V11,
    V12,
}

impl SoapVersion {
    pub fn namespace(self) -> &'static str {
        match self {
            SoapVersion::V11 => NS_SOAP11,
            SoapVersion::V12 => NS_SOAP12,
        }
    }

    /// The version whose envelope namespace this is.
    pub fn from_namespace(ns: &str) -> Option<SoapVersion> {
        match ns {
            NS_SOAP11 => Some(SoapVersion::V11),
            NS_SOAP12 => Some(SoapVersion::V12),
            _ => None,
        }
    }

    /// `Content-Type` of a message in this version, without the 1.2 `action` parameter.
    pub fn content_type(self) -> &'static str {
        match self {
            SoapVersion::V11 => "text/xml; charset=utf-8",
            SoapVersion::V12 => "application/soap+xml; charset=utf-8",
        }
    }

    /// The media type (no parameters) a request in this version must carry.
    pub fn media_type(self) -> &'static str {
        match self {
            SoapVersion::V11 => "text/xml",
            SoapVersion::V12 => "application/soap+xml",
        }
    }
}

/// A request's `Content-Type`, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    pub version: SoapVersion,
    /// SOAP 1.2 `action` parameter, unquoted.
    pub action: Option<String>,
}

/// Parses a request `Content-Type`: `text/xml` means SOAP 1.1, `application/soap+xml` SOAP 1.2.
/// A charset, when given, must be UTF-8. `Err` carries the message for the fault.
pub fn parse_content_type(value: Option<&str>) -> Result<MediaType, String> {
    let Some(value) = value else {
        return Err(
            "missing Content-Type; send text/xml (SOAP 1.1) or application/soap+xml (SOAP 1.2)"
                .into(),
        );
    };
    let mut parts = value.split(';');
    let mime = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let version = match mime.as_str() {
        "text/xml" => SoapVersion::V11,
        "application/soap+xml" => SoapVersion::V12,
        _ => {
            return Err(format!(
                "Content-Type must be text/xml (SOAP 1.1) or application/soap+xml (SOAP 1.2), got '{value}'"
            ));
        }
    };
    let mut action = None;
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim().trim_matches('"');
        match k.as_str() {
            "charset" if !(v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")) => {
                return Err(format!("charset must be UTF-8, got '{v}'"));
            }
            "action" => action = Some(v.to_owned()),
            _ => {}
        }
    }
    Ok(MediaType { version, action })
}

/// Fault codes, named as in SOAP 1.1; SOAP 1.2 names them Sender and Receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultCode {
    /// The request is wrong and resending it unchanged will not help.
    Client,
    /// The service failed; the same request may succeed later.
    Server,
    /// A header block marked `mustUnderstand` was not understood.
    MustUnderstand,
    /// The envelope is not in a SOAP namespace we speak.
    VersionMismatch,
}

impl FaultCode {
    fn local(self, v: SoapVersion) -> &'static str {
        match (self, v) {
            (FaultCode::Client, SoapVersion::V11) => "Client",
            (FaultCode::Client, SoapVersion::V12) => "Sender",
            (FaultCode::Server, SoapVersion::V11) => "Server",
            (FaultCode::Server, SoapVersion::V12) => "Receiver",
            (FaultCode::MustUnderstand, _) => "MustUnderstand",
            (FaultCode::VersionMismatch, _) => "VersionMismatch",
        }
    }
}

/// A Fault we answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub code: FaultCode,
    /// The human-readable `faultstring` (1.2: `Reason/Text`) naming the problem.
    pub message: String,
    /// Machine-readable code in `detail/error/code` (`authentication_failed`, `malformed_xml`...).
    pub detail_code: String,
    /// The journal's id of the refused request, so the partner can quote it to operators.
    pub message_id: Option<Uuid>,
}

impl Fault {
    pub fn client(detail_code: impl Into<String>, message: impl Into<String>) -> Fault {
        Fault {
            code: FaultCode::Client,
            message: message.into(),
            detail_code: detail_code.into(),
            message_id: None,
        }
    }

    pub fn server(detail_code: impl Into<String>, message: impl Into<String>) -> Fault {
        Fault {
            code: FaultCode::Server,
            ..Fault::client(detail_code, message)
        }
    }

    /// The whole envelope carrying this fault, in `version`.
    pub fn to_xml(&self, version: SoapVersion) -> String {
        let mut detail = format!(
            "<error xmlns=\"{NS_FAULT}\"><code>{}</code>",
            escape(&self.detail_code)
        );
        if let Some(id) = self.message_id {
            detail.push_str(&format!("<messageId>{id}</messageId>"));
        }
        detail.push_str("</error>");
        let code = self.code.local(version);
        let message = escape(&self.message);
        let body = match version {
            SoapVersion::V11 => format!(
                "<soap:Fault><faultcode>soap:{code}</faultcode><faultstring>{message}</faultstring><detail>{detail}</detail></soap:Fault>"
            ),
            SoapVersion::V12 => format!(
                "<soap:Fault><soap:Code><soap:Value>soap:{code}</soap:Value></soap:Code><soap:Reason><soap:Text xml:lang=\"en\">{message}</soap:Text></soap:Reason><soap:Detail>{detail}</soap:Detail></soap:Fault>"
            ),
        };
        envelope(version, "", &body)
    }
}

/// A complete envelope in `version` with prefix `soap`: `header` is the (already serialised)
/// content of the Header, which is left out when empty; `body` the content of the Body.
pub fn envelope(version: SoapVersion, header: &str, body: &str) -> String {
    let ns = version.namespace();
    let header = if header.is_empty() {
        String::new()
    } else {
        format!("<soap:Header>{header}</soap:Header>")
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soap:Envelope xmlns:soap=\"{ns}\">{header}<soap:Body>{body}</soap:Body></soap:Envelope>"
    )
}

/// Why an envelope could not be read as SOAP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error(transparent)]
    Xml(#[from] XmlError),
    /// The root is not a SOAP Envelope (wrong name or namespace); `found` in Clark notation.
    #[error("the root element must be a SOAP 1.1 or 1.2 Envelope, found {found}")]
    NotAnEnvelope { found: String },
    /// The envelope has no Body, or an unexpected element where Header/Body belong.
    #[error("{0}")]
    Structure(String),
}

impl EnvelopeError {
    pub fn code(&self) -> &'static str {
        match self {
            EnvelopeError::Xml(x) => x.code(),
            EnvelopeError::NotAnEnvelope { .. } => "version_mismatch",
            EnvelopeError::Structure(_) => "invalid_envelope",
        }
    }
}

/// Reads an envelope up to the start of the Body, handing each header block to `on_header`
/// (which must consume the block through its end tag, e.g. with `Cursor::skip_rest(1)`).
/// Returns the version; the cursor is then inside `Body`.
pub fn read_to_body<'a, F>(
    cur: &mut Cursor<'a>,
    mut on_header: F,
) -> Result<SoapVersion, EnvelopeError>
where
    F: FnMut(&mut Cursor<'a>, SoapVersion, Element) -> Result<(), EnvelopeError>,
{
    let root = loop {
        match cur.next_node()? {
            Node::Start(e) => break e,
            Node::Text(t) if t.trim().is_empty() => {}
            Node::Text(_) | Node::End | Node::Eof => {
                return Err(EnvelopeError::Structure(
                    "the body holds no XML element".into(),
                ));
            }
        }
    };
    let version = match (root.name.local.as_str(), root.name.ns.as_deref()) {
        ("Envelope", Some(ns)) => SoapVersion::from_namespace(ns),
        _ => None,
    }
    .ok_or_else(|| EnvelopeError::NotAnEnvelope {
        found: root.name.display(),
    })?;
    let ns = version.namespace();
    let mut seen_header = false;
    loop {
        let Some(child) = cur.next_element()? else {
            return Err(EnvelopeError::Structure("the Envelope has no Body".into()));
        };
        if child.name.is(ns, "Header") && !seen_header {
            seen_header = true;
            while let Some(block) = cur.next_element()? {
                on_header(cur, version, block)?;
            }
        } else if child.name.is(ns, "Body") {
            return Ok(version);
        } else {
            return Err(EnvelopeError::Structure(format!(
                "unexpected element {} in the Envelope; expected Header or Body",
                child.name.display()
            )));
        }
    }
}

/// After the operation element ended: the Body, the Envelope and the document must end without
/// further elements (a second operation in one Body is not something we would silently drop).
pub fn read_to_end(cur: &mut Cursor<'_>) -> Result<(), EnvelopeError> {
    if let Some(extra) = cur.next_element()? {
        return Err(EnvelopeError::Structure(format!(
            "unexpected second element {} in the Body",
            extra.name.display()
        )));
    }
    // Body ended; now the Envelope.
    if let Some(extra) = cur.next_element()? {
        return Err(EnvelopeError::Structure(format!(
            "unexpected element {} after the Body",
            extra.name.display()
        )));
    }
    loop {
        match cur.next_node()? {
            Node::Eof => return Ok(()),
            Node::Text(t) if t.trim().is_empty() => {}
            _ => {
                return Err(EnvelopeError::Structure(
                    "content after the Envelope".into(),
                ));
            }
        }
    }
}

/// True when a header block is marked `mustUnderstand` (1.1: `"1"`; 1.2: `"true"` or `"1"`).
pub fn must_understand(block: &Element, version: SoapVersion) -> bool {
    matches!(
        block.attr(Some(version.namespace()), "mustUnderstand"),
        Some("1" | "true")
    )
}

/// How a partner's Fault classifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultClass {
    /// 1.1 `Client` (or `Client.*`), 1.2 `Sender`: our request is wrong.
    Client,
    /// 1.1 `Server`, 1.2 `Receiver`, or anything else: the partner's trouble.
    Server,
}

/// A Fault found in a partner's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedFault {
    pub class: FaultClass,
    /// The code as written, e.g. `soap:Client`.
    pub code: String,
    /// `faultstring` (1.1) or the first `Reason/Text` (1.2).
    pub message: String,
}

/// What a partner's answer body holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Fault(ReceivedFault),
    /// The first element of the Body, with its leaf children's text by local name (in document
    /// order); enough to pick out e.g. a `taskId`.
    Response {
        element: Name,
        fields: Vec<(String, String)>,
    },
    /// The Body is empty.
    Empty,
}

/// Reads a partner's answer envelope (bounded: at most `max_depth` levels).
pub fn read_answer(src: &str, max_depth: usize) -> Result<Answer, EnvelopeError> {
    let mut cur = Cursor::new(src, max_depth);
    let version = read_to_body(&mut cur, |c, _, _| Ok(c.skip_rest(1)?))?;
    let ns = version.namespace();
    let Some(first) = cur.next_element()? else {
        return Ok(Answer::Empty);
    };
    if first.name.is(ns, "Fault") {
        return read_fault(&mut cur, version).map(Answer::Fault);
    }
    let mut fields = Vec::new();
    while let Some(child) = cur.next_element()? {
        if let Ok(text) = cur.text_content()? {
            fields.push((child.name.local, text.trim().to_owned()));
        }
    }
    Ok(Answer::Response {
        element: first.name,
        fields,
    })
}

/// Reads the inside of a `Fault` element (cursor just past its start tag).
fn read_fault(cur: &mut Cursor<'_>, version: SoapVersion) -> Result<ReceivedFault, EnvelopeError> {
    let ns = version.namespace();
    let mut code: Option<(String, Option<String>)> = None;
    let mut message = String::new();
    while let Some(child) = cur.next_element()? {
        match (version, child.name.local.as_str()) {
            // 1.1 children are unqualified; the code is a QName whose prefix was declared
            // somewhere above, so it is resolved by the cursor's scope, not guessed.
            (SoapVersion::V11, "faultcode") => {
                let text = cur.text_content()?.unwrap_or_default();
                code = Some(resolve_code(cur, text.trim(), ns));
            }
            (SoapVersion::V11, "faultstring") => {
                message = cur.text_content()?.unwrap_or_default().trim().to_owned();
            }
            (SoapVersion::V12, "Code") if child.name.is(ns, "Code") => {
                while let Some(part) = cur.next_element()? {
                    if part.name.is(ns, "Value") && code.is_none() {
                        let text = cur.text_content()?.unwrap_or_default();
                        code = Some(resolve_code(cur, text.trim(), ns));
                    } else {
                        cur.skip_rest(1)?;
                    }
                }
            }
            (SoapVersion::V12, "Reason") if child.name.is(ns, "Reason") => {
                while let Some(part) = cur.next_element()? {
                    if part.name.is(ns, "Text") && message.is_empty() {
                        message = cur.text_content()?.unwrap_or_default().trim().to_owned();
                    } else {
                        cur.skip_rest(1)?;
                    }
                }
            }
            _ => cur.skip_rest(1)?,
        }
    }
    let (written, local_in_soap_ns) = code.unwrap_or_default();
    let class = match (version, local_in_soap_ns.as_deref()) {
        (SoapVersion::V11, Some(l)) if l == "Client" || l.starts_with("Client.") => {
            FaultClass::Client
        }
        (SoapVersion::V12, Some("Sender")) => FaultClass::Client,
        _ => FaultClass::Server,
    };
    Ok(ReceivedFault {
        class,
        code: written,
        message,
    })
}

/// What was written, and the local part when the QName is in the envelope namespace `ns` or
/// unprefixed (sloppy partners write a bare `Client`). Resolved in the scope of the element the
/// text was in: prefixes are only meaningful there.
fn resolve_code(cur: &Cursor<'_>, text: &str, ns: &str) -> (String, Option<String>) {
    let (uri, local) = cur.resolve_qname(text);
    let in_soap = match uri {
        Some(u) => u == ns,
        None => !text.contains(':'),
    };
    (text.to_owned(), in_soap.then_some(local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            parse_content_type(Some("text/xml; charset=utf-8")).unwrap(),
            MediaType {
                version: SoapVersion::V11,
                action: None
            }
        );
        assert_eq!(
            parse_content_type(Some(
                "application/soap+xml;charset=UTF-8;action=\"urn:synchub:osm:vehicle:v1#SyncVehicles\""
            ))
            .unwrap(),
            MediaType {
                version: SoapVersion::V12,
                action: Some("urn:synchub:osm:vehicle:v1#SyncVehicles".into())
            }
        );
        assert!(parse_content_type(Some("application/json")).is_err());
        assert!(parse_content_type(Some("text/xml; charset=gbk")).is_err());
        assert!(parse_content_type(None).is_err());
    }

    #[test]
    fn fault_11_matches_the_sample_shape_and_escapes() {
        let mut f = Fault::client("authentication_failed", "user '<osm>' & co");
        f.message_id = Some(Uuid::nil());
        let xml = f.to_xml(SoapVersion::V11);
        assert!(xml.contains("<faultcode>soap:Client</faultcode>"), "{xml}");
        assert!(
            xml.contains("<faultstring>user &apos;&lt;osm&gt;&apos; &amp; co</faultstring>"),
            "{xml}"
        );
        assert!(xml.contains("<detail><error xmlns=\"urn:synchub:fault:v1\"><code>authentication_failed</code><messageId>00000000-0000-0000-0000-000000000000</messageId></error></detail>"), "{xml}");
        // Our own reader reads it back as a client fault with the same words.
        let Answer::Fault(back) = read_answer(&xml, 32).unwrap() else {
            panic!()
        };
        assert_eq!(back.class, FaultClass::Client);
        assert_eq!(back.message, "user '<osm>' & co");
    }

    #[test]
    fn fault_12_uses_sender_and_receiver() {
        let xml = Fault::client("x", "m").to_xml(SoapVersion::V12);
        assert!(xml.contains(NS_SOAP12));
        assert!(
            xml.contains("<soap:Value>soap:Sender</soap:Value>"),
            "{xml}"
        );
        let Answer::Fault(back) = read_answer(&xml, 32).unwrap() else {
            panic!()
        };
        assert_eq!(
            (back.class, back.message.as_str()),
            (FaultClass::Client, "m")
        );
        let xml = Fault::server("x", "m").to_xml(SoapVersion::V12);
        assert!(
            xml.contains("<soap:Value>soap:Receiver</soap:Value>"),
            "{xml}"
        );
        let Answer::Fault(back) = read_answer(&xml, 32).unwrap() else {
            panic!()
        };
        assert_eq!(back.class, FaultClass::Server);
    }

    #[test]
    fn partner_faults_with_any_prefix() {
        let xml = r#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body><e:Fault>
            <faultcode>e:Client.Validation</faultcode><faultstring>dealerCode unknown</faultstring>
            </e:Fault></e:Body></e:Envelope>"#;
        let Answer::Fault(f) = read_answer(xml, 32).unwrap() else {
            panic!()
        };
        assert_eq!(f.class, FaultClass::Client);
        assert_eq!(f.code, "e:Client.Validation");
        assert_eq!(f.message, "dealerCode unknown");
    }

    #[test]
    fn response_fields_are_read_by_local_name() {
        let xml = r#"<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body>
            <r:PublishCampaignTaskResponse xmlns:r="urn:synchub:dcs:task:v1"><r:taskId> T-1 </r:taskId></r:PublishCampaignTaskResponse>
            </Body></Envelope>"#;
        match read_answer(xml, 32).unwrap() {
            Answer::Response { element, fields } => {
                assert!(element.is("urn:synchub:dcs:task:v1", "PublishCampaignTaskResponse"));
                assert_eq!(fields, vec![("taskId".to_owned(), "T-1".to_owned())]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_soap_roots_are_named() {
        let err = read_answer(r#"<Envelope xmlns="urn:x"/>"#, 32).unwrap_err();
        assert_eq!(err.code(), "version_mismatch");
        assert!(err.to_string().contains("{urn:x}Envelope"), "{err}");
    }
}
