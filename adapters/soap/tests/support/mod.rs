//! Shared test helpers: the router wired to a `FakeInbox` (or any `Inbox`), request builders
//! for SOAP 1.1/1.2 with WS-Security tokens, and a small reader that turns an answer into
//! (path of local names → text) leaves so tests check what a partner's toolkit would see.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::{HeaderMap, Request, StatusCode};
use synchub_adapter_sdk::testkit::FakeInbox;
use synchub_adapter_sdk::{Inbox, Principal};
use synchub_adapter_soap::soap::{NS_SOAP11, NS_SOAP12};
use synchub_adapter_soap::wssec::{NS_WSSE, NS_WSU, PASSWORD_DIGEST, password_digest};
use synchub_adapter_soap::xml::{Cursor, Node};
use synchub_adapter_soap::{SoapInboundConfig, router};
use tower::ServiceExt;

pub const PATH: &str = "/soap/osm/VehicleService";
pub const ACTION: &str = "urn:synchub:osm:vehicle:v1#SyncVehicles";
pub const NS_V: &str = "urn:synchub:osm:vehicle:v1";
pub const TEXT_XML: &str = "text/xml; charset=utf-8";

/// The request sample of INTERFACES §2, byte for byte.
pub const SAMPLE: &str = include_str!("../fixtures/SyncVehicles.request.xml");

pub fn osm() -> Principal {
    Principal {
        system: "osm".into(),
        dealer_code: None,
    }
}

pub fn config() -> SoapInboundConfig {
    SoapInboundConfig::new("osm_vehicles_soap_in").with_user("osm", "demo-osm", osm())
}

pub struct App {
    pub inbox: Arc<FakeInbox>,
    pub router: Router,
}

impl App {
    pub fn new() -> App {
        App::with(config())
    }

    pub fn with(cfg: SoapInboundConfig) -> App {
        let inbox = Arc::new(FakeInbox::new());
        App {
            router: router(cfg, inbox.clone()),
            inbox,
        }
    }

    pub async fn call(&self, req: Request<Body>) -> Answer {
        call(&self.router, req).await
    }

    /// POST with SOAP 1.1 content type and the WSDL's SOAPAction.
    pub async fn post11(&self, body: impl Into<Body>) -> Answer {
        self.call(post(TEXT_XML, Some(ACTION), body)).await
    }
}

pub async fn call(router: &Router, req: Request<Body>) -> Answer {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).expect("answers are UTF-8"),
    }
}

pub fn post(content_type: &str, action: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut b = Request::post(PATH).header("Content-Type", content_type);
    if let Some(a) = action {
        b = b.header("SOAPAction", format!("\"{a}\""));
    }
    b.body(body.into()).unwrap()
}

#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// One text leaf of a document: the local names from the root down, their namespaces, the text.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub path: Vec<String>,
    pub ns: Vec<Option<String>>,
    pub text: String,
}

impl Answer {
    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }

    /// Every text leaf (elements without element children), with our own namespace-aware reader.
    pub fn leaves(&self) -> Vec<Leaf> {
        leaves(&self.body)
    }

    /// Texts of the leaves whose local-name path ends with `suffix` (`"rejected/vin"`).
    pub fn texts(&self, suffix: &str) -> Vec<String> {
        let want: Vec<&str> = suffix.split('/').collect();
        self.leaves()
            .into_iter()
            .filter(|l| {
                l.path
                    .ends_with(&want.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            })
            .map(|l| l.text)
            .collect()
    }

    pub fn text(&self, suffix: &str) -> String {
        self.texts(suffix)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {suffix} in {}", self.body))
    }

    /// Namespace URI of the root element.
    pub fn envelope_ns(&self) -> String {
        self.leaves()[0].ns[0].clone().unwrap_or_default()
    }

    /// (faultcode or Code/Value, faultstring or Reason/Text, detail code) of a SOAP 1.1 or 1.2 fault.
    pub fn fault(&self) -> (String, String, String) {
        let is12 = self.envelope_ns() == NS_SOAP12;
        let (code, string) = if is12 {
            (self.text("Code/Value"), self.text("Reason/Text"))
        } else {
            (self.text("Fault/faultcode"), self.text("Fault/faultstring"))
        };
        (code, string, self.text("error/code"))
    }
}

pub fn leaves(src: &str) -> Vec<Leaf> {
    let mut cur = Cursor::new(src, 64);
    let mut stack: Vec<(String, Option<String>, String, bool)> = Vec::new();
    let mut out = Vec::new();
    loop {
        match cur
            .next_node()
            .unwrap_or_else(|e| panic!("answer is not XML: {e}\n{src}"))
        {
            Node::Start(e) => {
                if let Some(top) = stack.last_mut() {
                    top.3 = true;
                }
                stack.push((e.name.local, e.name.ns, String::new(), false));
            }
            Node::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.2.push_str(&t);
                }
            }
            Node::End => {
                let path: Vec<String> = stack.iter().map(|s| s.0.clone()).collect();
                let ns: Vec<Option<String>> = stack.iter().map(|s| s.1.clone()).collect();
                let (_, _, text, has_children) = stack.pop().unwrap();
                if !has_children {
                    out.push(Leaf { path, ns, text });
                }
            }
            Node::Eof => return out,
        }
    }
}

// --- request builders ------------------------------------------------------------------------

pub fn text_token(user: &str, password: &str) -> String {
    format!(
        r#"<wsse:Security xmlns:wsse="{NS_WSSE}"><wsse:UsernameToken><wsse:Username>{user}</wsse:Username><wsse:Password Type="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText">{password}</wsse:Password></wsse:UsernameToken></wsse:Security>"#
    )
}

/// A PasswordDigest token as WSS4J, zeep or SoapUI build it.
pub fn digest_token(user: &str, password: &str, nonce: &[u8], created: &str) -> String {
    let digest = password_digest(nonce, created, password);
    let nonce = B64.encode(nonce);
    format!(
        r#"<wsse:Security xmlns:wsse="{NS_WSSE}" xmlns:wsu="{NS_WSU}"><wsse:UsernameToken wsu:Id="UsernameToken-1"><wsse:Username>{user}</wsse:Username><wsse:Password Type="{PASSWORD_DIGEST}">{digest}</wsse:Password><wsse:Nonce EncodingType="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary">{nonce}</wsse:Nonce><wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security>"#
    )
}

/// One valid-looking vehicle element with prefix `v`.
pub fn vehicle(vin: &str) -> String {
    format!(
        "<v:vehicle><v:vin>{vin}</v:vin><v:brand>Honda</v:brand><v:dealerCode>D0001</v:dealerCode><v:salesDate>2026-11-20</v:salesDate><v:owner><v:name>测试</v:name><v:mobile>13912345678</v:mobile></v:owner></v:vehicle>"
    )
}

/// A SOAP 1.1 (or 1.2) request with `header` inside the Header and `body` inside the Body.
pub fn request(v12: bool, header: &str, body: &str) -> String {
    let ns = if v12 { NS_SOAP12 } else { NS_SOAP11 };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{ns}" xmlns:v="{NS_V}"><soapenv:Header>{header}</soapenv:Header><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"#
    )
}

/// A SyncVehicles request with the demo credentials and these vehicles.
pub fn sync(vehicles: &str) -> String {
    request(
        false,
        &text_token("osm", "demo-osm"),
        &format!("<v:SyncVehicles>{vehicles}</v:SyncVehicles>"),
    )
}

pub fn use_inbox(cfg: SoapInboundConfig, inbox: Arc<dyn Inbox>) -> Router {
    router(cfg, inbox)
}
