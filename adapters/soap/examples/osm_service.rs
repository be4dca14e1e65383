//! Runs the OSM vehicle service on its own, journaling into an in-memory `FakeInbox`, so a SOAP
//! toolkit (zeep, SoapUI) can be pointed at it by hand:
//! `cargo run -p synchub-adapter-soap --example osm_service -- 127.0.0.1:8089`, then
//! `python3 adapters/soap/tests/zeep/call_sync_vehicles.py http://127.0.0.1:8089/soap/osm/VehicleService`.
//! Each accepted submission's records are printed.

use std::sync::Arc;
use std::time::Duration;

use synchub_adapter_sdk::Principal;
use synchub_adapter_sdk::testkit::FakeInbox;
use synchub_adapter_soap::{SoapInboundConfig, router};

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8089".into());
    let inbox = Arc::new(FakeInbox::new());
    let cfg = SoapInboundConfig::new("osm_vehicles_soap_in").with_user(
        "osm",
        "demo-osm",
        Principal {
            system: "osm".into(),
            dealer_code: None,
        },
    );
    let app = router(cfg, inbox.clone());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    println!("serving http://{addr}/soap/osm/VehicleService?wsdl");
    tokio::spawn(async move {
        let mut shown = (0, 0);
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (subs, refs) = (inbox.submissions(), inbox.refusals());
            for s in &subs[shown.0..] {
                for r in &s.records {
                    println!("accepted record {}: {:?}", r.index, r.body);
                }
            }
            for r in &refs[shown.1..] {
                println!("refused: {} {}", r.code, r.reason);
            }
            shown = (subs.len(), refs.len());
        }
    });
    axum::serve(listener, app).await.expect("serve");
}
