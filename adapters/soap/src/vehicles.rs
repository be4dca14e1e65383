//! The `SyncVehicles` operation: streaming each `vehicle` element into one `RecordIn` with a
//! snake_case JSON body, and writing the `SyncVehiclesResponse` from the journal's verdicts.

use serde_json::{Map, Value};
use synchub_adapter_sdk::{FieldError, RecordIn};
use uuid::Uuid;

use crate::soap::NS_XSI;
use crate::xml::{Cursor, Element, Name, XmlError, escape};

/// Namespace of the OSM vehicle service.
pub const NS_VEHICLE: &str = "urn:synchub:osm:vehicle:v1";
/// The operation (and request element) name.
pub const OPERATION: &str = "SyncVehicles";
/// The `soapAction` the WSDL declares for it.
pub const SOAP_ACTION: &str = "urn:synchub:osm:vehicle:v1#SyncVehicles";
/// `RecordIn::record_type` of every record this operation produces.
pub const RECORD_TYPE: &str = "vehicle";

/// `vehicle` children: XML local name → JSON key. `owner` is handled apart.
const VEHICLE_FIELDS: [(&str, &str); 9] = [
    ("vin", "vin"),
    ("brand", "brand"),
    ("model", "model"),
    ("modelYear", "model_year"),
    ("color", "color"),
    ("plateNo", "plate_no"),
    ("engineNo", "engine_no"),
    ("dealerCode", "dealer_code"),
    ("salesDate", "sales_date"),
];
const OWNER_FIELDS: [(&str, &str); 3] = [("name", "name"), ("mobile", "mobile"), ("idNo", "id_no")];

/// Problems that refuse the whole request (a Client fault), as opposed to one vehicle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error("SyncVehicles holds no vehicle element; send 1 to {max}")]
    NoVehicles { max: usize },
    #[error("SyncVehicles holds more than {max} vehicle elements; split the batch")]
    TooMany { max: usize },
    #[error("unexpected element {0} in SyncVehicles; only vehicle elements belong there")]
    Unexpected(String),
}

impl RequestError {
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::Xml(x) => x.code(),
            RequestError::NoVehicles { .. } => "no_vehicles",
            RequestError::TooMany { .. } => "too_many_vehicles",
            RequestError::Unexpected(_) => "invalid_request",
        }
    }
}

/// What the request held: one record per vehicle, plus each vehicle's VIN as written (for the
/// response, which names rejected vehicles by VIN even when the record could not be read).
#[derive(Debug, Clone, Default)]
pub struct Vehicles {
    pub records: Vec<RecordIn>,
    pub vins: Vec<Option<String>>,
}

/// The service's elements are qualified (`elementFormDefault="qualified"`); unqualified children
/// are also taken, because hand-written clients often forget the namespace on inner elements and
/// nothing else could be meant.
fn ours(name: &Name) -> bool {
    name.ns.is_none() || name.ns.as_deref() == Some(NS_VEHICLE)
}

fn is_nil(e: &Element) -> bool {
    matches!(e.attr(Some(NS_XSI), "nil"), Some("true" | "1"))
}

/// Reads the inside of `SyncVehicles` (cursor just past its start tag) through its end tag.
/// Memory is bounded by `max_vehicles` records; reading stops at the first vehicle over it.
pub fn read_request(cur: &mut Cursor<'_>, max_vehicles: usize) -> Result<Vehicles, RequestError> {
    let mut out = Vehicles::default();
    while let Some(child) = cur.next_element()? {
        if !(ours(&child.name) && child.name.local == "vehicle") {
            return Err(RequestError::Unexpected(child.name.display()));
        }
        if out.records.len() == max_vehicles {
            return Err(RequestError::TooMany { max: max_vehicles });
        }
        let index = out.records.len();
        let (body, vin) = read_vehicle(cur)?;
        out.records.push(RecordIn {
            index,
            record_type: RECORD_TYPE.to_owned(),
            // VINs are not unique over time (a resale is a new record for the same VIN) and OSM
            // sends no reference of its own: the journal hashes the record instead.
            source_ref: None,
            body,
        });
        out.vins.push(vin);
    }
    if out.records.is_empty() {
        return Err(RequestError::NoVehicles { max: max_vehicles });
    }
    Ok(out)
}

type RecordBody = Result<Value, Vec<FieldError>>;

/// One `vehicle` (cursor just past its start tag) through its end tag.
fn read_vehicle(cur: &mut Cursor<'_>) -> Result<(RecordBody, Option<String>), XmlError> {
    let mut obj = Map::new();
    let mut errors = Vec::new();
    read_fields(cur, &VEHICLE_FIELDS, "", &mut obj, &mut errors, true)?;
    let vin = obj.get("vin").and_then(Value::as_str).map(str::to_owned);
    let body = if errors.is_empty() {
        Ok(Value::Object(obj))
    } else {
        Err(errors)
    };
    Ok((body, vin))
}

/// Reads leaf children named in `fields` into `obj`, and `owner` when `with_owner`. Structural
/// problems become field errors; only XML errors abort.
fn read_fields(
    cur: &mut Cursor<'_>,
    fields: &[(&str, &str)],
    path: &str,
    obj: &mut Map<String, Value>,
    errors: &mut Vec<FieldError>,
    with_owner: bool,
) -> Result<(), XmlError> {
    loop {
        let child = match cur.next_element() {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(()),
            // Stray text between fields is a structural problem of this record, not of the XML.
            Err(XmlError::UnexpectedText { text, .. }) => {
                errors.push(FieldError::new(
                    path.trim_end_matches('.'),
                    format!("unexpected text '{text}'"),
                ));
                continue;
            }
            Err(e) => return Err(e),
        };
        let local = child.name.local.as_str();
        if with_owner && ours(&child.name) && local == "owner" {
            if obj.contains_key("owner") {
                errors.push(FieldError::new("owner", "appears more than once"));
                cur.skip_rest(1)?;
                continue;
            }
            if is_nil(&child) {
                cur.skip_rest(1)?;
                continue;
            }
            let mut owner = Map::new();
            read_fields(cur, &OWNER_FIELDS, "owner.", &mut owner, errors, false)?;
            obj.insert("owner".into(), Value::Object(owner));
            continue;
        }
        let Some((_, key)) = fields
            .iter()
            .find(|(xml, _)| ours(&child.name) && *xml == local)
        else {
            errors.push(FieldError::new(
                format!("{path}{local}"),
                format!("unknown element {}", child.name.display()),
            ));
            cur.skip_rest(1)?;
            continue;
        };
        let field = format!("{path}{key}");
        if obj.contains_key(*key) {
            errors.push(FieldError::new(field, "appears more than once"));
            cur.skip_rest(1)?;
            continue;
        }
        let nil = is_nil(&child);
        match cur.text_content()? {
            Ok(_) if nil => {}
            Ok(text) => {
                let text = text.trim();
                // An empty element carries no value: the same as leaving it out.
                if !text.is_empty() {
                    obj.insert((*key).to_owned(), Value::String(text.to_owned()));
                }
            }
            Err(inner) => errors.push(FieldError::new(
                field,
                format!("must be text, found element {}", inner.display()),
            )),
        }
    }
}

/// One vehicle the journal rejected, for the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// As written in the request (empty when the vehicle had none).
    pub vin: String,
    /// Every field error, `field: reason` joined with `; `.
    pub reason: String,
}

impl Rejected {
    pub fn new(vin: Option<&str>, errors: &[FieldError]) -> Rejected {
        let reason = if errors.is_empty() {
            "rejected".to_owned()
        } else {
            errors
                .iter()
                .map(|e| {
                    if e.field.is_empty() {
                        e.reason.clone()
                    } else {
                        e.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        Rejected {
            vin: vin.unwrap_or_default().to_owned(),
            reason,
        }
    }
}

/// The `SyncVehiclesResponse` element (the Body content), in the service namespace by default
/// declaration so every child is qualified as the schema requires.
pub fn response_xml(message_id: Uuid, accepted: usize, rejected: &[Rejected]) -> String {
    let mut out = String::with_capacity(160 + rejected.len() * 96);
    out.push_str(&format!(
        "<SyncVehiclesResponse xmlns=\"{NS_VEHICLE}\"><messageId>{message_id}</messageId><accepted>{accepted}</accepted>"
    ));
    for r in rejected {
        out.push_str(&format!(
            "<rejected><vin>{}</vin><reason>{}</reason></rejected>",
            escape(&r.vin),
            escape(&r.reason)
        ));
    }
    out.push_str("</SyncVehiclesResponse>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(inner: &str) -> Result<Vehicles, RequestError> {
        let src = format!(
            r#"<v:SyncVehicles xmlns:v="{NS_VEHICLE}" xmlns:xsi="{NS_XSI}">{inner}</v:SyncVehicles>"#
        );
        let mut cur = Cursor::new(&src, 32);
        cur.next_element().unwrap().unwrap();
        read_request(&mut cur, 3)
    }

    #[test]
    fn fields_map_to_snake_case_and_absent_ones_are_omitted() {
        let v = parse(
            r#"<v:vehicle><v:vin> LHG0LVF20VB714970 </v:vin><v:modelYear xsi:type="xs:int">2026</v:modelYear>
               <v:plateNo>粤A&#183;D12345</v:plateNo><v:color/><v:brand xsi:nil="true"/>
               <v:owner><v:name>陈大文</v:name><v:idNo>440106198503021236</v:idNo></v:owner></v:vehicle>"#,
        )
        .unwrap();
        assert_eq!(
            v.records[0].body.as_ref().unwrap(),
            &json!({"vin": "LHG0LVF20VB714970", "model_year": "2026", "plate_no": "粤A·D12345",
                    "owner": {"name": "陈大文", "id_no": "440106198503021236"}})
        );
        assert_eq!(v.records[0].record_type, "vehicle");
        assert_eq!(v.records[0].source_ref, None);
        assert_eq!(v.vins, vec![Some("LHG0LVF20VB714970".to_owned())]);
    }

    #[test]
    fn unqualified_children_are_accepted_foreign_ones_are_not() {
        let v = parse(r#"<v:vehicle><vin>A</vin><x:vin xmlns:x="urn:other">B</x:vin></v:vehicle>"#)
            .unwrap();
        let errors = v.records[0].body.as_ref().unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "vin");
        assert!(errors[0].reason.contains("{urn:other}vin"), "{errors:?}");
        assert_eq!(v.vins[0].as_deref(), Some("A"));
    }

    #[test]
    fn structural_garbage_spoils_only_its_vehicle() {
        let v = parse(
            r#"<v:vehicle><v:vin>A1</v:vin><v:brand><b>x</b></v:brand><v:vin>A2</v:vin>text</v:vehicle>
               <v:vehicle><v:vin>B</v:vin></v:vehicle>"#,
        )
        .unwrap();
        let errors = v.records[0].body.as_ref().unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["brand", "vin", ""], "{errors:?}");
        assert!(errors[0].reason.contains("must be text"));
        assert_eq!(v.vins[0].as_deref(), Some("A1"));
        assert!(v.records[1].body.is_ok());
        assert_eq!(v.records[1].index, 1);
    }

    #[test]
    fn request_level_problems() {
        assert_eq!(parse("").unwrap_err().code(), "no_vehicles");
        let four = "<v:vehicle><v:vin>A</v:vin></v:vehicle>".repeat(4);
        assert_eq!(parse(&four).unwrap_err(), RequestError::TooMany { max: 3 });
        assert_eq!(parse("<v:car/>").unwrap_err().code(), "invalid_request");
    }

    #[test]
    fn response_lists_rejections_escaped() {
        let r = Rejected::new(
            Some("LHG<1>"),
            &[
                FieldError::new("vin", "check digit is '0', expected '6'"),
                FieldError::new("owner.mobile", "11 digits expected"),
            ],
        );
        assert_eq!(
            r.reason,
            "vin: check digit is '0', expected '6'; owner.mobile: 11 digits expected"
        );
        let xml = response_xml(Uuid::nil(), 1, &[r]);
        assert_eq!(
            xml,
            "<SyncVehiclesResponse xmlns=\"urn:synchub:osm:vehicle:v1\"><messageId>00000000-0000-0000-0000-000000000000</messageId><accepted>1</accepted><rejected><vin>LHG&lt;1&gt;</vin><reason>vin: check digit is &apos;0&apos;, expected &apos;6&apos;; owner.mobile: 11 digits expected</reason></rejected></SyncVehiclesResponse>"
        );
    }
}
