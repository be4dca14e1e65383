//! The WSDLs: the served one carries the address partners should call, the shipped copies in
//! `config/wsdl/` are byte-identical to the crate's, and a real SOAP toolkit (Python zeep) loads
//! the served WSDL and calls `SyncVehicles` through it.

mod support;

use std::sync::Arc;

use http::{Request, StatusCode};
use support::*;
use synchub_adapter_sdk::testkit::FakeInbox;
use synchub_adapter_soap::xml::{Cursor, Node};

fn get(uri: &str, host: Option<&str>) -> Request<axum::body::Body> {
    let mut b = Request::get(uri);
    if let Some(h) = host {
        b = b.header("Host", h);
    }
    b.body(axum::body::Body::empty()).unwrap()
}

/// (local name, `name` attribute) of every element in the WSDL namespace.
fn wsdl_parts(src: &str) -> Vec<(String, String)> {
    let mut cur = Cursor::new(src, 64);
    let mut out = Vec::new();
    loop {
        match cur.next_node().expect("the WSDL is well-formed XML") {
            Node::Start(e) if e.name.ns.as_deref() == Some("http://schemas.xmlsoap.org/wsdl/") => {
                out.push((
                    e.name.local.clone(),
                    e.attr(None, "name").unwrap_or_default().to_owned(),
                ));
            }
            Node::Eof => return out,
            _ => {}
        }
    }
}

fn addresses(src: &str) -> Vec<String> {
    let mut cur = Cursor::new(src, 64);
    let mut out = Vec::new();
    loop {
        match cur.next_node().unwrap() {
            Node::Start(e) if e.name.local == "address" => {
                out.push(e.attr(None, "location").unwrap().to_owned());
            }
            Node::Eof => return out,
            _ => {}
        }
    }
}

#[tokio::test]
async fn wsdl_is_served_with_the_address_from_the_host_header() {
    let app = App::new();
    let a = app
        .call(get(
            "/soap/osm/VehicleService?wsdl",
            Some("hub.internal:8080"),
        ))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.content_type().starts_with("text/xml"));
    assert_eq!(
        addresses(&a.body),
        ["http://hub.internal:8080/soap/osm/VehicleService"; 2]
    );
    let parts = wsdl_parts(&a.body);
    assert!(parts.contains(&("operation".into(), "SyncVehicles".into())));
    assert!(parts.contains(&("service".into(), "VehicleService".into())));
    // `?WSDL` works too (some tools upper-case it); a bare GET explains itself.
    assert_eq!(
        app.call(get("/soap/osm/VehicleService?WSDL", None))
            .await
            .status,
        StatusCode::OK
    );
    let a = app.call(get("/soap/osm/VehicleService", None)).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.body.contains("?wsdl"));
    // A GET journals nothing.
    assert!(app.inbox.refusals().is_empty() && app.inbox.submissions().is_empty());
}

#[tokio::test]
async fn configured_public_url_wins_over_the_host_header() {
    let mut cfg = config();
    cfg.public_url = Some("https://hub.example.com/".into());
    let app = App::with(cfg);
    let a = app
        .call(get("/soap/osm/VehicleService?wsdl", Some("10.0.0.5:8080")))
        .await;
    assert_eq!(
        addresses(&a.body),
        ["https://hub.example.com/soap/osm/VehicleService"; 2]
    );
}

#[test]
fn shipped_copies_in_config_are_byte_identical() {
    let crate_dir = env!("CARGO_MANIFEST_DIR");
    for name in ["osm_vehicles.wsdl", "dcs_tasks.wsdl"] {
        let ours = std::fs::read(format!("{crate_dir}/wsdl/{name}")).unwrap();
        let shipped = std::fs::read(format!("{crate_dir}/../../config/wsdl/{name}"))
            .unwrap_or_else(|e| panic!("config/wsdl/{name}: {e}"));
        assert!(
            ours == shipped,
            "config/wsdl/{name} differs from adapters/soap/wsdl/{name}; copy it over"
        );
    }
}

#[test]
fn dcs_wsdl_describes_the_contract() {
    let src = synchub_adapter_soap::outbound::WSDL;
    let parts = wsdl_parts(src);
    assert!(parts.contains(&("operation".into(), "PublishCampaignTask".into())));
    let schema_elements: Vec<String> = {
        let mut cur = Cursor::new(src, 64);
        let mut out = Vec::new();
        loop {
            match cur.next_node().unwrap() {
                Node::Start(e) if e.name.is("http://www.w3.org/2001/XMLSchema", "element") => {
                    out.push(e.attr(None, "name").unwrap().to_owned());
                }
                Node::Eof => break out,
                _ => {}
            }
        }
    };
    assert_eq!(
        schema_elements,
        [
            "PublishCampaignTask",
            "campaignCode",
            "name",
            "dealerCode",
            "startDate",
            "endDate",
            "targetCount",
            "PublishCampaignTaskResponse",
            "taskId"
        ]
    );
    assert!(src.contains("targetNamespace=\"urn:synchub:dcs:task:v1\""));
}

/// zeep is the reference toolkit here: what it generates from our WSDL must just work.
/// A missing Python or zeep fails the test (`pip install zeep`; `.ci/run` installs it).
#[tokio::test]
async fn zeep_calls_sync_vehicles_through_the_served_wsdl() {
    let has_zeep = std::process::Command::new("python3")
        .args(["-c", "import zeep"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_zeep,
        "python3 with zeep is required for this test (pip install zeep; .ci/run installs it)"
    );
    let inbox = Arc::new(FakeInbox::new());
    let app = synchub_adapter_soap::router(config(), inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/zeep/call_sync_vehicles.py"
    );
    let url = format!("http://{addr}{PATH}");
    let mut results = Vec::new();
    for mode in ["text", "digest", "wrong"] {
        let out = tokio::process::Command::new("python3")
            .args([script, &url, mode])
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "zeep {mode} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        results.push(v);
    }
    server.abort();

    let subs = inbox.submissions();
    assert_eq!(subs.len(), 2, "text and digest calls journaled");
    for (i, r) in results[..2].iter().enumerate() {
        assert_eq!(r["accepted"], 2, "{r}");
        assert_eq!(r["rejected"], serde_json::json!([]));
        assert_eq!(r["messageId"], subs[i].envelope.id.to_string());
    }
    let rec = &subs[0].records;
    assert_eq!(
        rec[0].body.as_ref().unwrap(),
        &serde_json::json!({"vin": "LHG0LVF20VB714970", "brand": "Honda", "model": "雅阁 Accord",
            "model_year": "2026", "color": "珍珠白", "plate_no": "粤A·D12345", "engine_no": "L15B7714970",
            "dealer_code": "D0001", "sales_date": "2026-11-20",
            "owner": {"name": "陈大文", "mobile": "+86 138-0013-8000", "id_no": "440106198503021236"}})
    );
    assert_eq!(
        rec[1].body.as_ref().unwrap(),
        &serde_json::json!({"vin": "LHGHL1LV0VD172367", "dealer_code": "D0002", "owner": {"name": "林小红"}})
    );
    assert_eq!(results[2]["code"], "soap:Client");
    assert_eq!(
        results[2]["fault"],
        "WS-Security: authentication failed for user 'osm'"
    );
    assert_eq!(inbox.refusals().len(), 1);
}
