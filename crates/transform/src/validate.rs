//! Record schemas of the partner interfaces: cleanse, then validate one JSON record into its
//! canonical form, reporting every problem of the record at once.

use serde_json::{Map, Value};
use synchub_adapter_sdk::FieldError;

use crate::cleanse;

/// The kinds of record partners send (INTERFACES §1, §2, §4, §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordSchema {
    DmsCustomer,
    Lead,
    LeadResult,
    CampaignResult,
    Vehicle,
    Dealer,
    Campaign,
}

impl RecordSchema {
    pub const ALL: [RecordSchema; 7] = [
        RecordSchema::DmsCustomer,
        RecordSchema::Lead,
        RecordSchema::LeadResult,
        RecordSchema::CampaignResult,
        RecordSchema::Vehicle,
        RecordSchema::Dealer,
        RecordSchema::Campaign,
    ];

    /// The name used in configuration files and routes.
    pub fn name(self) -> &'static str {
        match self {
            RecordSchema::DmsCustomer => "dms_customer",
            RecordSchema::Lead => "lead",
            RecordSchema::LeadResult => "lead_result",
            RecordSchema::CampaignResult => "campaign_result",
            RecordSchema::Vehicle => "vehicle",
            RecordSchema::Dealer => "dealer",
            RecordSchema::Campaign => "campaign",
        }
    }

    pub fn from_name(s: &str) -> Option<RecordSchema> {
        RecordSchema::ALL
            .into_iter()
            .find(|schema| schema.name() == s)
    }

    fn fields(self) -> &'static [Field] {
        match self {
            RecordSchema::DmsCustomer => DMS_CUSTOMER,
            RecordSchema::Lead => LEAD,
            RecordSchema::LeadResult => LEAD_RESULT,
            RecordSchema::CampaignResult => CAMPAIGN_RESULT,
            RecordSchema::Vehicle => VEHICLE,
            RecordSchema::Dealer => DEALER,
            RecordSchema::Campaign => CAMPAIGN,
        }
    }
}

impl std::fmt::Display for RecordSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How one field is cleansed and checked.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Scalar(Scalar),
    /// Non-empty list of upper-cased codes.
    CodeList,
    /// List of customer ids or mobile numbers.
    CustomerList,
    /// The vehicle owner: a nested record.
    Owner,
}

/// A field holding one value, given as a string (or, for some, a number).
#[derive(Debug, Clone, Copy)]
enum Scalar {
    Text,
    /// Codes are compared across systems that disagree on case, so they are kept upper-case.
    Code,
    Mobile,
    IdNo,
    Vin,
    Gender,
    Date,
    DateTime,
    Email,
    /// Lower-case keyword out of a fixed set.
    OneOf(&'static [&'static str]),
    ModelYear,
}

const TEXT: Kind = Kind::Scalar(Scalar::Text);
const CODE: Kind = Kind::Scalar(Scalar::Code);
const MOBILE: Kind = Kind::Scalar(Scalar::Mobile);
const ID_NO: Kind = Kind::Scalar(Scalar::IdNo);
const VIN: Kind = Kind::Scalar(Scalar::Vin);
const GENDER: Kind = Kind::Scalar(Scalar::Gender);
const DATE: Kind = Kind::Scalar(Scalar::Date);
const DATE_TIME: Kind = Kind::Scalar(Scalar::DateTime);
const EMAIL: Kind = Kind::Scalar(Scalar::Email);
const MODEL_YEAR: Kind = Kind::Scalar(Scalar::ModelYear);

const fn one_of_kind(allowed: &'static [&'static str]) -> Kind {
    Kind::Scalar(Scalar::OneOf(allowed))
}

#[derive(Debug, Clone, Copy)]
struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

const LEAD_STATUSES: &[&str] = &[
    "contacted",
    "test_drive",
    "ordered",
    "won",
    "lost",
    "invalid",
];
/// Statuses that close a lead without a sale; the dealer has to say why.
const LEAD_STATUSES_NEEDING_REASON: &[&str] = &["lost", "invalid"];
const CAMPAIGN_RESULTS: &[&str] = &["contacted", "attended", "purchased", "declined"];
const DEALER_STATUSES: &[&str] = &["active", "suspended", "closed"];

const DMS_CUSTOMER: &[Field] = &[
    req("source_ref", TEXT),
    req("dealer_code", CODE),
    req("name", TEXT),
    req("mobile", MOBILE),
    opt("id_no", ID_NO),
    opt("gender", GENDER),
    opt("birth_date", DATE),
    opt("province", TEXT),
    opt("city", TEXT),
    opt("address", TEXT),
    opt("email", EMAIL),
    opt("updated_at", DATE_TIME),
];

const LEAD: &[Field] = &[
    req("source_ref", TEXT),
    req("name", TEXT),
    req("mobile", MOBILE),
    opt("province", TEXT),
    opt("city", TEXT),
    opt("interested_model", TEXT),
    opt("campaign_code", TEXT),
    opt("remark", TEXT),
];

const LEAD_RESULT: &[Field] = &[
    req("source_ref", TEXT),
    req("lead_id", TEXT),
    req("dealer_code", CODE),
    req("status", one_of_kind(LEAD_STATUSES)),
    opt("reason", TEXT),
    opt("occurred_at", DATE_TIME),
];

const CAMPAIGN_RESULT: &[Field] = &[
    req("source_ref", TEXT),
    req("campaign_code", TEXT),
    req("dealer_code", CODE),
    req("customer_mobile", MOBILE),
    opt("customer_name", TEXT),
    req("result", one_of_kind(CAMPAIGN_RESULTS)),
    opt("result_date", DATE),
    opt("remark", TEXT),
];

const VEHICLE: &[Field] = &[
    opt("source_ref", TEXT),
    req("vin", VIN),
    opt("brand", TEXT),
    opt("model", TEXT),
    opt("model_year", MODEL_YEAR),
    opt("color", TEXT),
    opt("plate_no", TEXT),
    opt("engine_no", TEXT),
    req("dealer_code", CODE),
    opt("sales_date", DATE),
    opt("owner", Kind::Owner),
];

/// The owner is matched to a CRM customer by mobile or ID number, created by name otherwise.
const OWNER: &[Field] = &[
    req("name", TEXT),
    opt("mobile", MOBILE),
    opt("id_no", ID_NO),
];

const DEALER: &[Field] = &[
    req("dealer_code", CODE),
    req("dealer_name", TEXT),
    opt("region", TEXT),
    opt("province", TEXT),
    opt("city", TEXT),
    opt("address", TEXT),
    opt("phone", TEXT),
    opt("status", one_of_kind(DEALER_STATUSES)),
];

const CAMPAIGN: &[Field] = &[
    req("campaign_code", TEXT),
    req("name", TEXT),
    req("start_date", DATE),
    req("end_date", DATE),
    req("dealer_codes", Kind::CodeList),
    opt("target_customers", Kind::CustomerList),
];

const MIN_MODEL_YEAR: i64 = 1990;
const MAX_MODEL_YEAR: i64 = 2100;

/// Cleanses and validates one record. On success the map holds only the schema's fields that
/// are present, in canonical form; on failure every problem found in the record.
pub fn validate(
    schema: RecordSchema,
    input: &Value,
) -> Result<Map<String, Value>, Vec<FieldError>> {
    let Value::Object(record) = input else {
        return Err(vec![FieldError::new(
            "",
            format!("record must be a JSON object, got {}", type_name(input)),
        )]);
    };
    let mut errors = Vec::new();
    let mut out = validate_fields(schema.fields(), record, "", &mut errors);
    cross_checks(schema, &mut out, &mut errors);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn validate_fields(
    fields: &[Field],
    record: &Map<String, Value>,
    prefix: &str,
    errors: &mut Vec<FieldError>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for field in fields {
        let path = FieldPath {
            prefix,
            name: field.name,
        };
        match cleanse_field(field.kind, record.get(field.name), path, errors) {
            Present(value) => {
                out.insert(field.name.to_owned(), value);
            }
            Absent if field.required => errors.push(FieldError::new(path.to_string(), "required")),
            Absent | Invalid => {}
        }
    }
    out
}

/// Where a field sits in the record, e.g. `owner.mobile`. Only rendered for an error, so that
/// valid records (a million rows in a daily file) do not pay for a string per field.
#[derive(Debug, Clone, Copy)]
struct FieldPath<'a> {
    prefix: &'a str,
    name: &'a str,
}

impl std::fmt::Display for FieldPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.prefix, self.name)
    }
}

/// Outcome for one field. `Invalid` means the error is already recorded.
enum Cleansed {
    Present(Value),
    Absent,
    Invalid,
}
use Cleansed::{Absent, Invalid, Present};

fn cleanse_field(
    kind: Kind,
    value: Option<&Value>,
    path: FieldPath<'_>,
    errors: &mut Vec<FieldError>,
) -> Cleansed {
    let value = match value {
        None | Some(Value::Null) => return Absent,
        Some(value) => value,
    };
    let scalar_kind = match kind {
        Kind::Scalar(scalar_kind) => scalar_kind,
        Kind::Owner => return cleanse_owner(value, path, errors),
        Kind::CodeList => return cleanse_list(value, path, errors, code_item, true),
        Kind::CustomerList => return cleanse_list(value, path, errors, customer_item, false),
    };
    let max = if path.name == "source_ref" {
        MAX_REF_CHARS
    } else {
        MAX_TEXT_CHARS
    };
    let outcome = field_text(scalar_kind, value, max).and_then(|text| {
        text.map(|text| cleanse_scalar(scalar_kind, &text))
            .transpose()
    });
    match outcome {
        Ok(Some(value)) => Present(value),
        Ok(None) => Absent,
        Err(reason) => {
            errors.push(FieldError::new(path.to_string(), reason));
            Invalid
        }
    }
}

/// Longest text a field may hold after cleaning. Partner systems store names and addresses in
/// columns of a few hundred characters; a longer value is a broken export or an attack, and
/// taking it would only move the failure to every system the record fans out to.
pub const MAX_TEXT_CHARS: usize = 1000;
/// Longest `source_ref`: it is the idempotency key and a search key, both indexed (a PostgreSQL
/// index entry holds at most 2,704 bytes).
pub const MAX_REF_CHARS: usize = 128;

/// The cleaned text of a partner string, or why it cannot be a field value: a NUL character
/// (never meaningful in text, and PostgreSQL cannot store it) or more than `max` characters.
/// Neither reason echoes the value.
fn checked_text(s: &str, max: usize) -> Result<String, String> {
    if s.contains('\0') {
        return Err("contains a NUL character (U+0000), which no text field may hold".into());
    }
    let text = cleanse::clean_text(s);
    let n = text.chars().count();
    if n > max {
        return Err(format!("longer than {max} characters ({n})"));
    }
    Ok(text)
}

/// A scalar field's cleaned text; `None` when empty after cleaning, which counts as missing.
fn field_text(kind: Scalar, value: &Value, max: usize) -> Result<Option<String>, String> {
    match value {
        Value::String(s) => checked_text(s, max).map(non_empty),
        // Spreadsheets and some DMS exports write phone and ID numbers, and years, as JSON
        // numbers. Their decimal text is then validated like any string.
        Value::Number(n) if matches!(kind, Scalar::Mobile | Scalar::IdNo | Scalar::ModelYear) => {
            Ok(Some(n.to_string()))
        }
        other => Err(format!("expected a string, got {}", type_name(other))),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn cleanse_scalar(kind: Scalar, text: &str) -> Result<Value, String> {
    match kind {
        Scalar::Text => Ok(Value::from(text)),
        Scalar::Code => Ok(Value::from(text.to_uppercase())),
        Scalar::Mobile => cleanse::normalize_mobile(text).map(Value::from),
        Scalar::IdNo => cleanse::normalize_id_no(text).map(Value::from),
        Scalar::Vin => cleanse::normalize_vin(text).map(Value::from),
        Scalar::Gender => gender(text).map(Value::from),
        Scalar::Date => cleanse::parse_date(text).map(|date| Value::from(format_date(date))),
        Scalar::DateTime => cleanse::parse_datetime(text)
            .map(|dt| Value::from(dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false))),
        Scalar::Email => email(text).map(Value::from),
        Scalar::OneOf(allowed) => one_of(allowed, text).map(Value::from),
        Scalar::ModelYear => model_year(text).map(Value::from),
    }
}

fn format_date(date: chrono::NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

fn gender(text: &str) -> Result<String, String> {
    match text {
        "M" | "m" | "男" => Ok("M".to_owned()),
        "F" | "f" | "女" => Ok("F".to_owned()),
        _ => Err(format!(
            "expected M or F (男/女), got {}",
            cleanse::echo(text)
        )),
    }
}

fn email(text: &str) -> Result<String, String> {
    let valid = match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !text.contains(char::is_whitespace)
        }
        None => false,
    };
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "not an e-mail address: expected one '@' with text on both sides and no spaces, got {}",
            cleanse::echo(text)
        ))
    }
}

fn one_of(allowed: &[&str], text: &str) -> Result<String, String> {
    let lower = text.to_lowercase();
    if allowed.contains(&lower.as_str()) {
        Ok(lower)
    } else {
        Err(format!(
            "expected one of {}, got {}",
            allowed.join(", "),
            cleanse::echo(text)
        ))
    }
}

fn model_year(text: &str) -> Result<i64, String> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "expected an integer year, got {}",
            cleanse::echo(text)
        ));
    }
    // All digits, so parsing can only overflow, which is out of range anyway.
    let year = text.parse().unwrap_or(i64::MAX);
    if (MIN_MODEL_YEAR..=MAX_MODEL_YEAR).contains(&year) {
        Ok(year)
    } else {
        Err(format!(
            "expected a year between {MIN_MODEL_YEAR} and {MAX_MODEL_YEAR}, got {text}"
        ))
    }
}

fn cleanse_owner(value: &Value, path: FieldPath<'_>, errors: &mut Vec<FieldError>) -> Cleansed {
    let Value::Object(owner) = value else {
        errors.push(FieldError::new(
            path.to_string(),
            format!("expected an object, got {}", type_name(value)),
        ));
        return Invalid;
    };
    // Flattened sources (IF-02b CSV) send an owner with every column empty for a vehicle
    // without a known owner: that is no owner, not an owner without a name.
    let all_empty = OWNER.iter().all(|field| match owner.get(field.name) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => cleanse::clean_text(s).is_empty(),
        Some(_) => false,
    });
    if all_empty {
        return Absent;
    }
    let before = errors.len();
    let out = validate_fields(OWNER, owner, &format!("{path}."), errors);
    if errors.len() == before {
        Present(Value::Object(out))
    } else {
        Invalid
    }
}

fn code_item(text: String) -> String {
    text.to_uppercase()
}

/// Targets are customer ids or mobiles; mobiles are normalised so they match the CRM store.
fn customer_item(text: String) -> String {
    cleanse::normalize_mobile(&text).unwrap_or(text)
}

/// A list of strings, each cleaned, empties rejected, duplicates dropped (a dealer listed
/// twice must not get the campaign twice).
fn cleanse_list(
    value: &Value,
    path: FieldPath<'_>,
    errors: &mut Vec<FieldError>,
    item: fn(String) -> String,
    non_empty_required: bool,
) -> Cleansed {
    let Value::Array(items) = value else {
        errors.push(FieldError::new(
            path.to_string(),
            format!("expected an array of strings, got {}", type_name(value)),
        ));
        return Invalid;
    };
    let before = errors.len();
    let mut out: Vec<Value> = Vec::with_capacity(items.len());
    // Target lists can hold thousands of customers: no quadratic duplicate search.
    let mut seen = std::collections::HashSet::new();
    for (i, element) in items.iter().enumerate() {
        let cleaned = match element {
            Value::String(s) => checked_text(s, MAX_TEXT_CHARS).and_then(|t| {
                non_empty(t)
                    .ok_or_else(|| "expected a non-empty string".to_owned())
                    .map(item)
            }),
            other => Err(format!("expected a string, got {}", type_name(other))),
        };
        match cleaned {
            Ok(text) => {
                if seen.insert(text.clone()) {
                    out.push(Value::String(text));
                }
            }
            Err(reason) => errors.push(FieldError::new(format!("{path}[{i}]"), reason)),
        }
    }
    if errors.len() > before {
        return Invalid;
    }
    if non_empty_required && out.is_empty() {
        errors.push(FieldError::new(
            path.to_string(),
            "must contain at least one entry",
        ));
        return Invalid;
    }
    Present(Value::Array(out))
}

/// Rules that relate fields to each other, and defaults. Only checked on fields that were
/// valid on their own, so that one mistake is not reported twice.
fn cross_checks(schema: RecordSchema, out: &mut Map<String, Value>, errors: &mut Vec<FieldError>) {
    match schema {
        RecordSchema::LeadResult => {
            if let Some(status) = out.get("status").and_then(Value::as_str)
                && LEAD_STATUSES_NEEDING_REASON.contains(&status)
                && !out.contains_key("reason")
            {
                errors.push(FieldError::new(
                    "reason",
                    format!("required when status is {status}"),
                ));
            }
        }
        RecordSchema::Campaign => {
            let date = |key: &str| {
                out.get(key)
                    .and_then(Value::as_str)
                    .and_then(|s| cleanse::parse_date(s).ok())
            };
            if let (Some(start), Some(end)) = (date("start_date"), date("end_date"))
                && end < start
            {
                errors.push(FieldError::new(
                    "end_date",
                    format!(
                        "must not be before start_date {}, got {}",
                        format_date(start),
                        format_date(end)
                    ),
                ));
            }
            if !out.contains_key("target_customers") {
                out.insert("target_customers".to_owned(), Value::Array(Vec::new()));
            }
        }
        RecordSchema::Dealer => {
            if !out.contains_key("status") {
                out.insert("status".to_owned(), Value::from("active"));
            }
        }
        RecordSchema::DmsCustomer
        | RecordSchema::Lead
        | RecordSchema::CampaignResult
        | RecordSchema::Vehicle => {}
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // The samples partners were given (shared/samples/rest/), copied verbatim so that the
    // crate's tests do not depend on files outside the repository.
    fn sample_dms_customers_request() -> Value {
        json!([
            {
                "source_ref": "DMS-D0001-C000123",
                "dealer_code": "D0001",
                "name": "王小明",
                "mobile": "+86 139 1234 5678",
                "id_no": "440104199007152511",
                "gender": "M",
                "birth_date": "1990-07-15",
                "province": "广东",
                "city": "广州",
                "address": "天河区体育西路１０１号",
                "email": "wxm@example.com",
                "updated_at": "2026-11-25T09:30:00+08:00"
            },
            {
                "source_ref": "DMS-D0001-C000124",
                "dealer_code": "D0001",
                "name": "李四",
                "mobile": "12345"
            }
        ])
    }

    fn sample_lead_request() -> Value {
        json!({
            "source_ref": "WEB-20261125-000981",
            "name": "周杰",
            "mobile": "13760001234",
            "province": "广东",
            "city": "深圳",
            "interested_model": "雅阁 Accord",
            "campaign_code": "C2026-11-DOUBLE11",
            "remark": "周末想试驾"
        })
    }

    fn sample_lead_result_request() -> Value {
        json!({
            "source_ref": "DMS-D0002-R7781",
            "lead_id": "L2026112500017",
            "dealer_code": "D0002",
            "status": "test_drive",
            "occurred_at": "2026-11-25T15:20:00+08:00"
        })
    }

    fn sample_campaign_result_request() -> Value {
        json!({
            "source_ref": "DMS-D0002-CR-5521",
            "campaign_code": "C2026-12-WINTERCARE",
            "dealer_code": "D0002",
            "customer_mobile": "13912345678",
            "customer_name": "林小红",
            "result": "attended",
            "result_date": "2026-12-06",
            "remark": "到店检测"
        })
    }

    fn sample_campaign_request() -> Value {
        json!({
            "campaign_code": "C2026-12-WINTERCARE",
            "name": "冬季关怀免费检测",
            "start_date": "2026-12-01",
            "end_date": "2026-12-31",
            "dealer_codes": ["D0001", "D0002"],
            "target_customers": ["C000000042", "13912345678"]
        })
    }

    fn ok(schema: RecordSchema, input: Value) -> Value {
        match validate(schema, &input) {
            Ok(out) => Value::Object(out),
            Err(errors) => panic!("{schema} record rejected: {errors:?}"),
        }
    }

    fn errs(schema: RecordSchema, input: Value) -> Vec<(String, String)> {
        match validate(schema, &input) {
            Ok(out) => panic!("{schema} record accepted: {out:?}"),
            Err(errors) => errors.into_iter().map(|e| (e.field, e.reason)).collect(),
        }
    }

    fn err(field: &str, reason: &str) -> (String, String) {
        (field.to_owned(), reason.to_owned())
    }

    #[test]
    fn schema_names_round_trip() {
        let names: Vec<_> = RecordSchema::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "dms_customer",
                "lead",
                "lead_result",
                "campaign_result",
                "vehicle",
                "dealer",
                "campaign"
            ]
        );
        for schema in RecordSchema::ALL {
            assert_eq!(RecordSchema::from_name(schema.name()), Some(schema));
        }
        assert_eq!(RecordSchema::from_name("customer"), None);
        assert_eq!(RecordSchema::Vehicle.to_string(), "vehicle");
    }

    #[test]
    fn record_must_be_an_object() {
        assert_eq!(
            errs(RecordSchema::Lead, json!([1, 2])),
            [err("", "record must be a JSON object, got array")]
        );
        assert_eq!(
            errs(RecordSchema::Lead, json!("x")),
            [err("", "record must be a JSON object, got string")]
        );
        assert_eq!(
            errs(RecordSchema::Lead, Value::Null),
            [err("", "record must be a JSON object, got null")]
        );
    }

    #[test]
    fn sample_dms_customers() {
        let records = sample_dms_customers_request();
        assert_eq!(
            ok(RecordSchema::DmsCustomer, records[0].clone()),
            json!({
                "source_ref": "DMS-D0001-C000123",
                "dealer_code": "D0001",
                "name": "王小明",
                "mobile": "13912345678",
                "id_no": "440104199007152511",
                "gender": "M",
                "birth_date": "1990-07-15",
                "province": "广东",
                "city": "广州",
                "address": "天河区体育西路101号",
                "email": "wxm@example.com",
                "updated_at": "2026-11-25T09:30:00+08:00"
            })
        );
        assert_eq!(
            errs(RecordSchema::DmsCustomer, records[1].clone()),
            [err(
                "mobile",
                "not a mainland mobile number: 11 digits starting with 1 expected, got '12345'"
            )]
        );
    }

    #[test]
    fn dms_customer_cleanses_every_field() {
        let out = ok(
            RecordSchema::DmsCustomer,
            json!({
                "source_ref": "  ＤＭＳ-1 ",
                "dealer_code": "d0001",
                "name": " 王\u{3000}\u{3000}小明 ",
                "mobile": 13912345678_u64,
                "id_no": "11010519491231002x",
                "gender": "女",
                "birth_date": "1949年12月31日",
                "email": "ｗ@example.com",
                "updated_at": "2026-11-25 09:30:00",
                "province": "   ",
                "city": null,
                "loyalty_tier": "gold"
            }),
        );
        assert_eq!(
            out,
            json!({
                "source_ref": "DMS-1",
                "dealer_code": "D0001",
                "name": "王 小明",
                "mobile": "13912345678",
                "id_no": "11010519491231002X",
                "gender": "F",
                "birth_date": "1949-12-31",
                "email": "w@example.com",
                "updated_at": "2026-11-25T09:30:00+08:00"
            })
        );
    }

    #[test]
    fn all_errors_of_a_record_are_collected() {
        let errors = errs(
            RecordSchema::DmsCustomer,
            json!({
                "source_ref": 17,
                "dealer_code": "  ",
                "mobile": "12345",
                "id_no": "440104199007152512",
                "gender": "X",
                "birth_date": "1990-02-30",
                "email": "a@b@c",
                "updated_at": "later",
                "address": ["x"]
            }),
        );
        assert_eq!(
            errors,
            [
                err("source_ref", "expected a string, got number"),
                err("dealer_code", "required"),
                err("name", "required"),
                err(
                    "mobile",
                    "not a mainland mobile number: 11 digits starting with 1 expected, got '12345'"
                ),
                err(
                    "id_no",
                    "ID number check digit mismatch: position 18 is '2', expected '1'"
                ),
                err("gender", "expected M or F (男/女), got 'X'"),
                err("birth_date", "not a real calendar date: '1990-02-30'"),
                err("address", "expected a string, got array"),
                err(
                    "email",
                    "not an e-mail address: expected one '@' with text on both sides and no spaces, got 'a@b@c'"
                ),
                err(
                    "updated_at",
                    "not a date-time: expected RFC 3339 such as 2026-11-25T09:30:00+08:00, got 'later'"
                ),
            ]
        );
    }

    #[test]
    fn email_needs_text_on_both_sides_of_one_at() {
        for bad in ["@example.com", "wxm@", "wxm", "a b@example.com"] {
            let errors = errs(
                RecordSchema::DmsCustomer,
                json!({"source_ref": "r", "dealer_code": "D1", "name": "n",
                       "mobile": "13912345678", "email": bad}),
            );
            assert_eq!(errors.len(), 1, "{bad}");
            assert_eq!(errors[0].0, "email", "{bad}");
        }
    }

    #[test]
    fn mobile_accepts_numbers_but_other_text_fields_do_not() {
        let errors = errs(
            RecordSchema::Lead,
            json!({"source_ref": "r", "name": true, "mobile": 12345, "remark": {}}),
        );
        assert_eq!(
            errors,
            [
                err("name", "expected a string, got boolean"),
                err(
                    "mobile",
                    "not a mainland mobile number: 11 digits starting with 1 expected, got '12345'"
                ),
                err("remark", "expected a string, got object"),
            ]
        );
    }

    #[test]
    fn sample_lead() {
        let input = sample_lead_request();
        assert_eq!(ok(RecordSchema::Lead, input.clone()), input);
        assert_eq!(
            errs(RecordSchema::Lead, json!({})),
            [
                err("source_ref", "required"),
                err("name", "required"),
                err("mobile", "required")
            ]
        );
    }

    #[test]
    fn lead_result_status_and_reason() {
        let input = sample_lead_result_request();
        assert_eq!(ok(RecordSchema::LeadResult, input.clone()), input);

        let base = json!({"source_ref": "r", "lead_id": "L1", "dealer_code": "d0002"});
        let with = |extra: Value| {
            let mut record = base.clone();
            record
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            record
        };
        assert_eq!(
            errs(RecordSchema::LeadResult, with(json!({"status": "lost"}))),
            [err("reason", "required when status is lost")]
        );
        assert_eq!(
            errs(
                RecordSchema::LeadResult,
                with(json!({"status": "invalid", "reason": " "}))
            ),
            [err("reason", "required when status is invalid")]
        );
        assert_eq!(
            ok(
                RecordSchema::LeadResult,
                with(json!({"status": "LOST", "reason": "买了别家"}))
            ),
            json!({"source_ref": "r", "lead_id": "L1", "dealer_code": "D0002",
                   "status": "lost", "reason": "买了别家"})
        );
        assert_eq!(
            errs(RecordSchema::LeadResult, with(json!({"status": "sold"}))),
            [err(
                "status",
                "expected one of contacted, test_drive, ordered, won, lost, invalid, got 'sold'"
            )]
        );
    }

    #[test]
    fn sample_campaign_result() {
        let input = sample_campaign_result_request();
        assert_eq!(ok(RecordSchema::CampaignResult, input.clone()), input);
        let errors = errs(
            RecordSchema::CampaignResult,
            json!({"source_ref": "r", "campaign_code": "C1", "dealer_code": "D1",
                   "customer_mobile": "0139", "result": "bought", "result_date": "06/12/2026"}),
        );
        let fields: Vec<_> = errors.iter().map(|(field, _)| field.as_str()).collect();
        assert_eq!(fields, ["customer_mobile", "result", "result_date"]);
        assert_eq!(
            errors[1].1,
            "expected one of contacted, attended, purchased, declined, got 'bought'"
        );
    }

    #[test]
    fn vehicle_from_the_soap_sample() {
        let out = ok(
            RecordSchema::Vehicle,
            json!({
                "vin": "lhg0lvf20vb714970",
                "brand": "Honda",
                "model": "雅阁 Accord",
                "model_year": "2026",
                "color": "珍珠白",
                "plate_no": "粤A·D12345",
                "engine_no": "L15B7714970",
                "dealer_code": "D0001",
                "sales_date": "2026-11-20",
                "owner": {"name": "陈大文", "mobile": "+86 138-0013-8000",
                          "id_no": "440106198503021236"}
            }),
        );
        assert_eq!(
            out,
            json!({
                "vin": "LHG0LVF20VB714970",
                "brand": "Honda",
                "model": "雅阁 Accord",
                "model_year": 2026,
                "color": "珍珠白",
                "plate_no": "粤A·D12345",
                "engine_no": "L15B7714970",
                "dealer_code": "D0001",
                "sales_date": "2026-11-20",
                "owner": {"name": "陈大文", "mobile": "13800138000",
                          "id_no": "440106198503021236"}
            })
        );
        assert_eq!(
            errs(
                RecordSchema::Vehicle,
                json!({"vin": "LHGHL1LV0VD172367", "dealer_code": "D0002",
                       "owner": {"name": "林小红", "mobile": "13912345678"}})
            ),
            [err(
                "vin",
                "VIN check digit mismatch: position 9 is '0', expected '6'"
            )]
        );
    }

    #[test]
    fn vehicle_model_year_and_owner_rules() {
        let vehicle = |model_year: Value, owner: Value| {
            json!({"vin": "LHGCV3CK9VA118682", "dealer_code": "D0001",
                   "model_year": model_year, "owner": owner})
        };
        let out = ok(RecordSchema::Vehicle, vehicle(json!(2026), Value::Null));
        assert_eq!(out["model_year"], json!(2026));
        assert!(out.get("owner").is_none());
        // A flattened CSV row without owner data has an owner with only empty columns.
        let out = ok(
            RecordSchema::Vehicle,
            vehicle(
                json!(" ２０２６ "),
                json!({"name": "", "mobile": "", "id_no": " "}),
            ),
        );
        assert_eq!(out["model_year"], json!(2026));
        assert!(out.get("owner").is_none());

        assert_eq!(
            errs(
                RecordSchema::Vehicle,
                vehicle(
                    json!(1989),
                    json!({"mobile": "123", "id_no": "440104199007152512"})
                )
            ),
            [
                err(
                    "model_year",
                    "expected a year between 1990 and 2100, got 1989"
                ),
                err("owner.name", "required"),
                err(
                    "owner.mobile",
                    "not a mainland mobile number: 11 digits starting with 1 expected, got '123'"
                ),
                err(
                    "owner.id_no",
                    "ID number check digit mismatch: position 18 is '2', expected '1'"
                ),
            ]
        );
        assert_eq!(
            errs(
                RecordSchema::Vehicle,
                vehicle(json!("2026a"), json!("陈大文"))
            ),
            [
                err("model_year", "expected an integer year, got '2026a'"),
                err("owner", "expected an object, got string"),
            ]
        );
        assert_eq!(
            errs(RecordSchema::Vehicle, vehicle(json!(2026.5), Value::Null)),
            [err("model_year", "expected an integer year, got '2026.5'")]
        );
        assert_eq!(
            errs(RecordSchema::Vehicle, json!({"vin": "LHGCV3CK9VA11868"})),
            [
                err("vin", "VIN must be 17 characters, got 16"),
                err("dealer_code", "required")
            ]
        );
    }

    #[test]
    fn dealer_defaults_to_active_and_checks_status() {
        let out = ok(
            RecordSchema::Dealer,
            json!({"dealer_code": "d0001", "dealer_name": "广州 一店",
                   "phone": " ０２０-1234　5678 "}),
        );
        assert_eq!(
            out,
            json!({"dealer_code": "D0001", "dealer_name": "广州 一店",
                   "phone": "020-1234 5678", "status": "active"})
        );
        assert_eq!(
            ok(
                RecordSchema::Dealer,
                json!({"dealer_code": "D1", "dealer_name": "n", "status": "Closed"})
            )["status"],
            json!("closed")
        );
        assert_eq!(
            errs(
                RecordSchema::Dealer,
                json!({"dealer_code": "D1", "status": "open"})
            ),
            [
                err("dealer_name", "required"),
                err(
                    "status",
                    "expected one of active, suspended, closed, got 'open'"
                ),
            ]
        );
    }

    #[test]
    fn sample_campaign_and_its_defaults() {
        let input = sample_campaign_request();
        assert_eq!(ok(RecordSchema::Campaign, input.clone()), input);

        let out = ok(
            RecordSchema::Campaign,
            json!({"campaign_code": "C1", "name": "n", "start_date": "2026/12/01",
                   "end_date": "20261201", "dealer_codes": ["d0001", " D0001 ", "d0002"]}),
        );
        assert_eq!(
            out,
            json!({"campaign_code": "C1", "name": "n", "start_date": "2026-12-01",
                   "end_date": "2026-12-01", "dealer_codes": ["D0001", "D0002"],
                   "target_customers": []})
        );
        assert_eq!(
            ok(
                RecordSchema::Campaign,
                json!({"campaign_code": "C1", "name": "n", "start_date": "2026-12-01",
                       "end_date": "2026-12-31", "dealer_codes": ["D1"],
                       "target_customers": ["C000000042", "+86 139-1234-5678"]})
            )["target_customers"],
            json!(["C000000042", "13912345678"])
        );
    }

    #[test]
    fn campaign_errors() {
        assert_eq!(
            errs(
                RecordSchema::Campaign,
                json!({"campaign_code": "C1", "name": "n", "start_date": "2026-12-31",
                       "end_date": "2026-12-01", "dealer_codes": []})
            ),
            [
                err("dealer_codes", "must contain at least one entry"),
                err(
                    "end_date",
                    "must not be before start_date 2026-12-31, got 2026-12-01"
                ),
            ]
        );
        assert_eq!(
            errs(
                RecordSchema::Campaign,
                json!({"campaign_code": "C1", "name": "n", "start_date": "2026-12-01",
                       "end_date": "2026-12-31", "dealer_codes": ["D1", 2, " "],
                       "target_customers": "C1"})
            ),
            [
                err("dealer_codes[1]", "expected a string, got number"),
                err("dealer_codes[2]", "expected a non-empty string"),
                err(
                    "target_customers",
                    "expected an array of strings, got string"
                ),
            ]
        );
        assert_eq!(
            errs(RecordSchema::Campaign, json!({"name": "n"})),
            [
                err("campaign_code", "required"),
                err("start_date", "required"),
                err("end_date", "required"),
                err("dealer_codes", "required"),
            ]
        );
    }
}
