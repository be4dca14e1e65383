//! Lead rules from `config/rules/`: scoring and grading (`lead_scoring.toml`) and distribution,
//! duplicate protection and escalation (`lead_distribution.toml`), loaded and validated with
//! file and key path in every problem, plus their table-driven cases (`config/rules/tests/`).

pub mod distribution;
pub mod scoring;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use self::distribution::DistributionRules;
pub use self::scoring::ScoringRules;
use crate::settings::ConfigProblem;

/// File names under `config/rules/`.
pub const SCORING_FILE: &str = "lead_scoring.toml";
pub const DISTRIBUTION_FILE: &str = "lead_distribution.toml";

/// A lead's grade, best first: H (hot), A, B, C.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
pub enum Level {
    H,
    A,
    B,
    C,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::H => "H",
            Level::A => "A",
            Level::B => "B",
            Level::C => "C",
        }
    }

    /// Whether `self` is at least as good as `min` (H beats A beats B beats C).
    pub fn meets(self, min: Level) -> bool {
        self <= min
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A duration written as a number and a unit: `45s`, `30m`, `8h`, `30d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Span(pub Duration);

impl TryFrom<String> for Span {
    type Error = String;

    fn try_from(s: String) -> Result<Span, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration such as 45s, 30m, 8h or 30d"))?;
        let secs = match unit.trim() {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            "d" => n * 86_400,
            _ => {
                return Err(format!(
                    "`{s}` has no unit: write a number followed by s, m, h or d (e.g. 8h)"
                ));
            }
        };
        Ok(Span(Duration::from_secs(secs)))
    }
}

impl Span {
    pub fn as_millis(self) -> i64 {
        self.0.as_millis() as i64
    }
}

impl fmt::Display for Span {
    /// In the largest unit that divides it: `30d`, `8h`, `90m`, `45s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        for (unit, secs) in [("d", 86_400), ("h", 3600), ("m", 60)] {
            if s >= secs && s.is_multiple_of(secs) {
                return write!(f, "{}{unit}", s / secs);
            }
        }
        write!(f, "{s}s")
    }
}

/// Both rule files, validated.
#[derive(Debug, Clone)]
pub struct LeadRules {
    pub scoring: ScoringRules,
    pub distribution: DistributionRules,
}

/// Loads `config/rules/lead_scoring.toml` and `lead_distribution.toml`. Both absent: `None`
/// (leads are stored but neither scored nor distributed — a deployment without the lead flow).
/// One present without the other, or any invalid value: problems naming file and key.
pub fn load(config_dir: &Path) -> (Option<LeadRules>, Vec<ConfigProblem>) {
    let dir = config_dir.join("rules");
    let scoring_file = dir.join(SCORING_FILE);
    let distribution_file = dir.join(DISTRIBUTION_FILE);
    let mut problems = Vec::new();
    if !scoring_file.exists() && !distribution_file.exists() {
        return (None, problems);
    }
    let scoring: Option<ScoringRules> = read(&scoring_file, &mut problems);
    let distribution: Option<DistributionRules> = read(&distribution_file, &mut problems);
    if let Some(s) = &scoring {
        problems.extend(s.validate(&scoring_file));
    }
    if let Some(d) = &distribution {
        problems.extend(d.validate(&distribution_file));
    }
    match (scoring, distribution) {
        (Some(scoring), Some(distribution)) if problems.is_empty() => (
            Some(LeadRules {
                scoring,
                distribution,
            }),
            problems,
        ),
        _ => (None, problems),
    }
}

fn problem(file: &Path, key_path: impl Into<String>, message: impl Into<String>) -> ConfigProblem {
    ConfigProblem {
        file: file.to_path_buf(),
        key_path: key_path.into(),
        message: message.into(),
    }
}

/// One rule file: TOML syntax, then the typed shape (unknown keys are errors, named by path).
fn read<T: DeserializeOwned>(file: &Path, problems: &mut Vec<ConfigProblem>) -> Option<T> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            problems.push(problem(
                file,
                "",
                "file not found: lead scoring and lead distribution rules go together",
            ));
            return None;
        }
        Err(e) => {
            problems.push(problem(file, "", format!("cannot read: {e}")));
            return None;
        }
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            problems.push(problem(file, "", format!("TOML syntax: {}", e.message())));
            return None;
        }
    };
    match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(table)) {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let key = if path == "." { String::new() } else { path };
            problems.push(problem(file, key, e.inner().message().to_string()));
            None
        }
    }
}

/// Runs the table-driven cases in `config/rules/tests/` against the loaded rules (`synchub
/// check` and the unit tests share this), one problem per failing case.
pub fn run_cases(config_dir: &Path, rules: &LeadRules) -> Vec<ConfigProblem> {
    let dir = config_dir.join("rules").join("tests");
    let mut problems = Vec::new();
    let scoring = dir.join("lead_scoring.json");
    if scoring.exists() {
        problems.extend(scoring::run_cases(&scoring, &rules.scoring));
    }
    let distribution = dir.join("lead_distribution.json");
    if distribution.exists() {
        problems.extend(distribution::run_cases(&distribution, &rules.distribution));
    }
    problems
}

/// Reads a JSON array of test cases.
fn read_cases<T: DeserializeOwned>(file: &Path) -> Result<Vec<T>, ConfigProblem> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| problem(file, "", format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| problem(file, "", format!("not a list of cases: {e}")))
}

/// The rules folder of a configuration directory (for messages).
pub fn rules_dir(config_dir: &Path) -> PathBuf {
    config_dir.join("rules")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    #[test]
    fn spans_parse_with_units_and_refuse_bare_numbers() {
        assert_eq!(Span::try_from("45s".to_string()).unwrap().0.as_secs(), 45);
        assert_eq!(
            Span::try_from("8h".to_string()).unwrap().0.as_secs(),
            28_800
        );
        assert_eq!(
            Span::try_from("30d".to_string()).unwrap().0.as_secs(),
            2_592_000
        );
        assert!(
            Span::try_from("30".to_string())
                .unwrap_err()
                .contains("no unit")
        );
        assert!(Span::try_from("soon".to_string()).is_err());
        assert_eq!(
            Span::try_from("30d".to_string()).unwrap().to_string(),
            "30d"
        );
        assert_eq!(
            Span::try_from("90m".to_string()).unwrap().to_string(),
            "90m"
        );
        assert_eq!(
            Span::try_from("3600s".to_string()).unwrap().to_string(),
            "1h"
        );
    }

    #[test]
    fn levels_order_best_first() {
        assert!(Level::H.meets(Level::B));
        assert!(Level::B.meets(Level::B));
        assert!(!Level::C.meets(Level::B));
    }

    #[test]
    fn shipped_rules_load_and_pass_their_cases() {
        let (rules, problems) = load(&shipped());
        assert!(problems.is_empty(), "{problems:#?}");
        let rules = rules.expect("shipped rules");
        let failing = run_cases(&shipped(), &rules);
        assert!(failing.is_empty(), "{failing:#?}");
    }

    #[test]
    fn a_case_the_rules_do_not_meet_is_a_problem_naming_it() {
        let (rules, _) = load(&shipped());
        let rules = rules.expect("shipped rules");
        let dir = tempfile::tempdir().unwrap();
        let tests = dir.path().join("rules").join("tests");
        std::fs::create_dir_all(&tests).unwrap();
        std::fs::write(
            tests.join("lead_scoring.json"),
            r#"[{"name": "wrong", "lead": {"source": "website"}, "expect": {"score": 99, "level": "H"}}]"#,
        )
        .unwrap();
        std::fs::write(
            tests.join("lead_distribution.json"),
            r#"[{"name": "wrong too", "ask": {"level": "A", "city": "深圳"},
                 "dealers": [{"code": "D0002", "city": "深圳"}],
                 "expect": {"assigned_to": "D0001", "reason": "x"}}]"#,
        )
        .unwrap();
        let problems = run_cases(dir.path(), &rules);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert_eq!(problems[0].key_path, "[0] wrong");
        assert!(
            problems[0].message.contains("expected score 99 grade H"),
            "{}",
            problems[0]
        );
        assert_eq!(problems[1].key_path, "[0] wrong too");
        assert!(
            problems[1].message.contains("the rules give D0002"),
            "{}",
            problems[1]
        );
    }

    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_tree(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    #[test]
    fn synchub_check_reports_bad_rules_and_failing_cases() {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        for sub in ["config", "routes", "mappings"] {
            copy_tree(&repo.join(sub), &dir.path().join(sub));
        }
        let config = dir.path().join("config");
        let check = || crate::check::run_check(&config, &[], crate::settings::Profile::Local);
        assert!(check().is_empty(), "{:#?}", check());

        let cases = config.join("rules/tests/lead_distribution.json");
        let text = std::fs::read_to_string(&cases)
            .unwrap()
            .replace("(least_loaded, 3/50 today)", "(least_loaded, 4/50 today)");
        std::fs::write(&cases, text).unwrap();
        let problems = check();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0]
                .file
                .ends_with("rules/tests/lead_distribution.json")
        );
        assert_eq!(problems[0].key_path, "[0] city match, least loaded");

        let scoring = config.join("rules").join(SCORING_FILE);
        let text = std::fs::read_to_string(&scoring)
            .unwrap()
            .replace("H = 80", "H = 10");
        std::fs::write(&scoring, text).unwrap();
        let problems = check();
        let grades = problems
            .iter()
            .find(|p| p.key_path == "grades")
            .unwrap_or_else(|| panic!("{problems:#?}"));
        assert!(grades.file.ends_with("rules/lead_scoring.toml"));
        assert!(grades.message.contains("H > A > B"), "{grades}");
    }

    #[test]
    fn problems_name_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules");
        std::fs::create_dir_all(&rules).unwrap();
        std::fs::copy(
            shipped().join("rules").join(SCORING_FILE),
            rules.join(SCORING_FILE),
        )
        .unwrap();
        let text = std::fs::read_to_string(shipped().join("rules").join(DISTRIBUTION_FILE))
            .unwrap()
            .replace("strategy = \"least_loaded\"", "strategy = \"random\"");
        std::fs::write(rules.join(DISTRIBUTION_FILE), text).unwrap();
        let (loaded, problems) = load(dir.path());
        assert!(loaded.is_none());
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].key_path, "strategy");
        assert!(problems[0].file.ends_with("rules/lead_distribution.toml"));
        assert!(problems[0].message.contains("random"), "{}", problems[0]);

        let text = std::fs::read_to_string(shipped().join("rules").join(DISTRIBUTION_FILE))
            .unwrap()
            .replace("respond_within = \"8h\"", "respond_within = \"8\"");
        std::fs::write(rules.join(DISTRIBUTION_FILE), text).unwrap();
        let (_, problems) = load(dir.path());
        assert_eq!(problems[0].key_path, "respond_within", "{problems:#?}");
        assert!(problems[0].message.contains("no unit"), "{}", problems[0]);

        std::fs::remove_file(rules.join(DISTRIBUTION_FILE)).unwrap();
        let (_, problems) = load(dir.path());
        assert!(problems[0].message.contains("go together"), "{problems:#?}");
    }
}
