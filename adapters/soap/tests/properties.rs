//! Property tests (issue 10) of the SOAP request parser: arbitrary bytes never panic it, depth is
//! always bounded, and any text a partner puts in a vehicle field (escaped) comes back exactly.

use proptest::prelude::*;
use synchub_adapter_soap::soap::read_to_body;
use synchub_adapter_soap::vehicles::read_request;
use synchub_adapter_soap::xml::{Cursor, Node, escape, utf8};

const MAX_DEPTH: usize = 32;

/// Reads a whole body as the service does; `Err` is a refusal, never a panic.
fn parse(body: &[u8]) -> Result<Vec<serde_json::Value>, String> {
    let src = utf8(body).map_err(|e| e.to_string())?;
    let mut cur = Cursor::new(src, MAX_DEPTH);
    read_to_body(&mut cur, |c, _, _| {
        c.skip_rest(1)?;
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    let op = cur
        .next_element()
        .map_err(|e| e.to_string())?
        .ok_or("empty body")?;
    if op.name.local != "SyncVehicles" {
        return Err(format!("operation {}", op.name.local));
    }
    let v = read_request(&mut cur, 5000).map_err(|e| e.to_string())?;
    Ok(v.records
        .into_iter()
        .map(|r| r.body.unwrap_or_default())
        .collect())
}

fn request(owner_name: &str, model: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:v=\"urn:synchub:osm:vehicle:v1\"><s:Body><v:SyncVehicles><v:vehicle><v:vin>LHGCV3CK9VA118682</v:vin><v:model>{}</v:model><v:owner><v:name>{}</v:name></v:owner></v:vehicle></v:SyncVehicles></s:Body></s:Envelope>",
        escape(model),
        escape(owner_name)
    )
}

/// XML-legal characters (XML 1.0 `Char`), weighted towards the ones that need escaping.
fn xml_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec!['<', '>', '&', '"', '\'', ';', '=', '中', '\t']),
            any::<char>().prop_filter("XML Char", |c| {
                matches!(*c, '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
            }),
        ],
        1..40,
    )
    .prop_map(|v| v.into_iter().collect::<String>())
    // The parser hands over text as written; surrounding spaces are the validator's business.
    .prop_filter("no surrounding whitespace", |s| s.trim() == s)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&body);
    }

    #[test]
    fn mutated_requests_never_panic(cut in 0usize..400, byte in any::<u8>(), at in 0usize..400) {
        let mut body = request("陈大文", "雅阁").into_bytes();
        let at = at.min(body.len() - 1);
        body[at] = byte;
        body.truncate(cut.max(1).min(body.len()));
        let _ = parse(&body);
    }

    #[test]
    fn nesting_is_bounded(depth in 1usize..200) {
        let doc = format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth));
        let mut cur = Cursor::new(&doc, MAX_DEPTH);
        let mut deepest = 0;
        let outcome = loop {
            match cur.next_node() {
                Ok(Node::Eof) => break Ok(()),
                Ok(_) => deepest = deepest.max(cur.depth()),
                Err(e) => break Err(e),
            }
        };
        prop_assert!(deepest <= MAX_DEPTH);
        prop_assert_eq!(outcome.is_ok(), depth <= MAX_DEPTH);
    }

    #[test]
    fn field_text_round_trips_through_escaping(name in xml_text(), model in xml_text()) {
        let records = parse(request(&name, &model).as_bytes()).expect("a valid request");
        prop_assert_eq!(records.len(), 1);
        prop_assert_eq!(&records[0]["owner"]["name"], &serde_json::json!(name));
        prop_assert_eq!(&records[0]["model"], &serde_json::json!(model));
    }
}
