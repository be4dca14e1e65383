//! The shipped `mappings/` folder: everything compiles, every data-file case passes, the
//! customer body matches the published AMQP sample byte for byte, and `apply` is fast.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use synchub_transform::jq::Mappings;

fn mappings_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mappings")
}

fn load() -> Mappings {
    Mappings::load(&mappings_dir()).unwrap_or_else(|problems| {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        panic!("shipped mappings do not load:\n{}", list.join("\n"))
    })
}

#[test]
fn every_shipped_case_passes() {
    let mappings = load();
    let report = mappings.run_tests_report(&mappings_dir());
    let list: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert!(
        report.problems.is_empty(),
        "failing cases:\n{}",
        list.join("\n\n")
    );
    // Guards against a layout change that silently makes the runner find nothing.
    assert!(report.cases >= 5, "only {} cases ran", report.cases);
    assert_eq!(mappings.latest("crm_customer_to_dms"), Some(1));
    assert_eq!(mappings.versions("rest_lead_to_crm"), [1, 2]);
}

/// JSON equality ignores key order, but partners see the text: the customer body must come
/// out in the field order of the published sample.
#[test]
fn customer_body_matches_the_sample_text() {
    let mappings = load();
    let dir = mappings_dir().join("crm_customer_to_dms/tests");
    let input: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("updated.in.json")).expect("in"))
            .expect("json");
    let (_, out) = mappings
        .apply("crm_customer_to_dms", None, &input)
        .expect("apply");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/samples/amqp/dealer.D0001.customer.json");
    let expected = match std::fs::read_to_string(&sample) {
        Ok(text) => text,
        // The shared samples live outside the repository; the copy in the test case is the
        // same text, so fall back to it when the repository is checked out alone.
        Err(_) => std::fs::read_to_string(dir.join("updated.out.json")).expect("out"),
    };
    assert_eq!(
        serde_json::to_string_pretty(&out).expect("serialise"),
        expected.trim_end()
    );
}

fn read_case(rel: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(mappings_dir().join(rel)).expect("read case");
    serde_json::from_str(&text).expect("case is JSON")
}

/// The hot path: 10k applies (both shipped mappings, alternating) from two threads sharing
/// one `Mappings`. Release builds did this in about 0.5 s on the 2-core build machine.
#[test]
fn apply_is_fast_and_shared_across_threads() {
    let mappings = Arc::new(load());
    let inputs = Arc::new([
        (
            "rest_lead_to_crm",
            read_case("rest_lead_to_crm/tests/callcenter.in.json"),
        ),
        (
            "crm_customer_to_dms",
            read_case("crm_customer_to_dms/tests/updated.in.json"),
        ),
    ]);
    const TOTAL: usize = 10_000;
    const THREADS: usize = 2;
    let started = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (mappings, inputs) = (mappings.clone(), inputs.clone());
            std::thread::spawn(move || {
                for i in 0..TOTAL / THREADS {
                    let (id, input) = &inputs[i % inputs.len()];
                    let (_, out) = mappings.apply(id, None, input).expect("apply");
                    assert!(out.is_object());
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("thread");
    }
    let elapsed = started.elapsed();
    eprintln!("{TOTAL} applies on {THREADS} threads: {elapsed:?}");
    // Debug builds of this crate are unoptimised; give them slack, but still catch a
    // per-call recompilation or similar blunder (that would take minutes).
    let limit = if cfg!(debug_assertions) {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(1)
    };
    assert!(elapsed < limit, "{TOTAL} applies took {elapsed:?}");
}
