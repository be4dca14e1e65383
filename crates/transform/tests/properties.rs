//! Property tests (issue 10) of the cleansing functions, record validation and the shipped jq
//! mappings: nothing panics on arbitrary input, cleansing is idempotent, and what validation
//! produces is a fixed point of validation.

use std::path::Path;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use synchub_transform::cleanse::*;
use synchub_transform::jq::Mappings;
use synchub_transform::validate::{RecordSchema, validate};

/// Text with the characters partner systems get wrong: full-width forms, ideographic and
/// other Unicode spaces, NUL and control characters, CJK, and plain ASCII.
fn messy() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            any::<char>(),
            prop::char::range('\u{FF01}', '\u{FF5E}'),
            Just('\u{3000}'),
            Just(' '),
            Just('\t'),
            Just('\0'),
            prop::char::range('0', '9'),
            prop::char::range('\u{4E00}', '\u{4E40}'),
        ],
        0..40,
    )
    .prop_map(|v| v.into_iter().collect())
}

/// Arbitrary JSON, shallow enough to stay fast.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        messy().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Field names of the schemas mixed with noise, so records hit real fields.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "source_ref",
            "name",
            "mobile",
            "dealer_code",
            "id_no",
            "gender",
            "birth_date",
            "vin",
            "owner",
            "status",
            "result",
            "lead_id",
            "campaign_code",
            "customer_mobile",
            "model_year",
            "sales_date",
            "occurred_at",
            "email",
            "dealer_codes",
            "target_customers",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ]
}

/// A mainland mobile, decorated the ways DMS exports write it.
fn decorated_mobile() -> impl Strategy<Value = (String, String)> {
    ("1[3-9][0-9]{9}", 0..5usize).prop_map(|(m, style)| {
        let shown = match style {
            0 => m.clone(),
            1 => format!("+86 {} {} {}", &m[..3], &m[3..7], &m[7..]),
            2 => format!("0086-{m}"),
            3 => half_to_full(&m),
            _ => format!(" ({}) {}-{} ", &m[..3], &m[3..7], &m[7..]),
        };
        (m, shown)
    })
}

fn half_to_full(s: &str) -> String {
    s.chars()
        .map(|c| char::from_u32(c as u32 + 0xFEE0).unwrap_or(c))
        .collect()
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn half_width_and_clean_text_are_idempotent(s in messy()) {
        let h = half_width(&s);
        prop_assert_eq!(half_width(&h), h.clone());
        // With a message of its own: the default one is the condition's text, whose braces
        // would be read as format arguments.
        prop_assert!(
            !h.chars().any(|c| ('\u{FF01}'..='\u{FF5E}').contains(&c) || c == '\u{3000}'),
            "full-width characters left in {:?}",
            h
        );
        let c = clean_text(&s);
        prop_assert_eq!(clean_text(&c), c.clone());
        prop_assert_eq!(c.trim(), c.as_str());
        prop_assert!(!c.contains("  "));
    }

    #[test]
    fn full_width_ascii_becomes_half_width(s in "[!-~]{0,30}") {
        prop_assert_eq!(half_width(&half_to_full(&s)), s);
    }

    #[test]
    fn mobiles_normalise_to_their_11_digits_idempotently((m, shown) in decorated_mobile()) {
        prop_assert_eq!(normalize_mobile(&shown), Ok(m.clone()));
        prop_assert_eq!(normalize_mobile(&m), Ok(m));
    }

    #[test]
    fn any_mobile_text_is_normalised_or_refused_without_panicking(s in messy()) {
        if let Ok(m) = normalize_mobile(&s) {
            prop_assert!(m.len() == 11 && m.starts_with('1') && m.bytes().all(|b| b.is_ascii_digit()));
            prop_assert_eq!(normalize_mobile(&m), Ok(m.clone()));
        }
    }

    #[test]
    fn vins_are_upper_case_and_idempotent(s in "[A-HJ-NPR-Za-hj-npr-z0-9]{17}|.{0,20}") {
        if let Ok(v) = normalize_vin(&s) {
            prop_assert_eq!(v.to_uppercase(), v.clone());
            prop_assert_eq!(normalize_vin(&v), Ok(v.clone()));
            prop_assert_eq!(normalize_vin(&v.to_lowercase()), Ok(v.clone()));
            prop_assert_eq!(normalize_vin(&half_to_full(&v.to_lowercase())), Ok(v));
        }
    }

    #[test]
    fn id_numbers_are_idempotent(s in "[0-9]{17}[0-9xX]|.{0,20}") {
        if let Ok(id) = normalize_id_no(&s) {
            prop_assert_eq!(normalize_id_no(&id), Ok(id.clone()));
            prop_assert!(id.len() == 18);
        }
    }

    #[test]
    fn every_date_format_gives_the_same_date(y in 1900i32..2100, m in 1u32..=12, d in 1u32..=28, style in 0..5usize) {
        let text = match style {
            0 => format!("{y}-{m:02}-{d:02}"),
            1 => format!("{y}/{m}/{d}"),
            2 => format!("{y}.{m:02}.{d}"),
            3 => format!("{y}{m:02}{d:02}"),
            _ => format!("{y}年{m}月{d}日"),
        };
        let date = parse_date(&text).expect("a valid date");
        prop_assert_eq!(date, chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap());
        let canonical = date.format("%Y-%m-%d").to_string();
        prop_assert_eq!(parse_date(&canonical), Ok(date));
        prop_assert_eq!(parse_date(&half_to_full(&canonical)), Ok(date));
    }

    #[test]
    fn date_and_time_parsers_never_panic(s in messy()) {
        let _ = parse_date(&s);
        if let Ok(dt) = parse_datetime(&s) {
            prop_assert_eq!(parse_datetime(&dt.to_rfc3339()), Ok(dt));
        }
    }

    #[test]
    fn validation_never_panics_and_its_output_is_a_fixed_point(v in json_value(), schema in prop::sample::select(RecordSchema::ALL.to_vec())) {
        if let Ok(canonical) = validate(schema, &v) {
            let again = validate(schema, &Value::Object(canonical.clone()));
            prop_assert_eq!(again, Ok(canonical));
        }
    }

    #[test]
    fn valid_customers_validate_to_their_cleansed_form(
        (m, shown) in decorated_mobile(),
        name in "[\u{4E00}-\u{4E40}]{2,4}",
        pad in " {0,3}",
    ) {
        let rec = json!({"source_ref": format!("{pad}R-1{pad}"), "dealer_code": " d0001", "name": format!("{pad}{name}\u{3000}"), "mobile": shown});
        let c = validate(RecordSchema::DmsCustomer, &rec).expect("valid");
        prop_assert_eq!(&c["mobile"], &json!(m));
        prop_assert_eq!(&c["dealer_code"], &json!("D0001"));
        prop_assert_eq!(&c["source_ref"], &json!("R-1"));
        prop_assert_eq!(&c["name"], &json!(name));
    }

    #[test]
    fn shipped_mappings_never_panic_and_are_deterministic(v in json_value()) {
        let m = mappings();
        for id in m.ids() {
            for version in m.versions(&id) {
                let a = m.apply(&id, Some(version), &v).map_err(|e| e.to_string());
                let b = m.apply(&id, Some(version), &v).map_err(|e| e.to_string());
                prop_assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn the_lead_mapping_carries_the_validated_lead_through(
        (m, shown) in decorated_mobile(),
        name in "[\u{4E00}-\u{4E40}]{2,4}",
        // A NUL makes the lead invalid (see the property below); this one is about what a
        // valid lead carries through.
        remark in messy().prop_map(|s| s.replace('\0', "")),
    ) {
        let mut lead: Map<String, Value> = validate(
            RecordSchema::Lead,
            &json!({"source_ref": "WEB-1", "name": name, "mobile": shown, "remark": remark}),
        )
        .expect("valid lead");
        lead.insert("source".into(), json!("website"));
        let maps = mappings();
        for version in maps.versions("rest_lead_to_crm") {
            let (_, out) = maps.apply("rest_lead_to_crm", Some(version), &Value::Object(lead.clone())).expect("maps");
            prop_assert_eq!(&out["source_ref"], &json!("WEB-1"));
            prop_assert_eq!(&out["source"], &json!("website"));
            prop_assert_eq!(&out["customer"]["mobile"], &json!(m));
            prop_assert_eq!(&out["customer"]["name"], &lead["name"]);
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_nul_anywhere_in_a_text_field_is_refused_naming_the_field(
        before in messy(),
        after in messy(),
    ) {
        let remark = format!("{before}\0{after}");
        let errors = validate(
            RecordSchema::Lead,
            &json!({"source_ref": "WEB-1", "name": "周杰", "mobile": "13760001240", "remark": remark}),
        )
        .expect_err("a NUL is refused");
        prop_assert!(
            errors.iter().any(|e| e.field == "remark" && e.reason.contains("NUL")),
            "{:?}",
            errors
        );
    }
}

fn mappings() -> &'static Mappings {
    static M: std::sync::OnceLock<Mappings> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mappings");
        Mappings::load(&dir).unwrap_or_else(|p| panic!("shipped mappings load: {p:?}"))
    })
}
