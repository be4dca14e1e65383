//! Lead scoring and grading: points by source, campaign, interested model, completeness and
//! recency, clamped to 0..=100, then a grade H/A/B/C by thresholds. Pure functions over the
//! rules of `config/rules/lead_scoring.toml`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{Level, Span, problem, read_cases};
use crate::settings::ConfigProblem;

/// `config/rules/lead_scoring.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoringRules {
    /// Points every lead starts with.
    #[serde(default)]
    pub base: i64,
    /// `[source]`: points by the lead's source (the partner key's system).
    #[serde(default)]
    pub source: SourceRule,
    /// `[campaign]`: points for a campaign code, more for listed codes.
    #[serde(default)]
    pub campaign: CampaignRule,
    /// `[model]`: points for naming an interested model, more for listed models.
    #[serde(default)]
    pub model: ModelRule,
    /// `[completeness]`: points per optional field present.
    #[serde(default)]
    pub completeness: CompletenessRule,
    /// `[[recency]]`: points by the lead's age when scored; the first band it falls in counts.
    #[serde(default)]
    pub recency: Vec<RecencyBand>,
    /// `[grades]`: lowest score of each grade; below `B` is C.
    pub grades: Grades,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRule {
    /// Points by source name (`callcenter`, `website`, `dms`, ...).
    #[serde(default)]
    pub points: BTreeMap<String, i64>,
    /// Points for a source not listed.
    #[serde(default)]
    pub other: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignRule {
    /// Points for any campaign code.
    #[serde(default)]
    pub present: i64,
    /// Extra points for these codes.
    #[serde(default)]
    pub codes: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRule {
    /// Points for any interested model.
    #[serde(default)]
    pub present: i64,
    /// Extra points when the model contains this text (case-insensitive); the best match counts.
    #[serde(default)]
    pub models: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletenessRule {
    /// Points per optional field present and not empty.
    #[serde(default)]
    pub fields: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecencyBand {
    /// The band covers leads at most this old (`1h`, `1d`).
    pub within: Span,
    pub points: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grades {
    #[serde(rename = "H")]
    pub h: i64,
    #[serde(rename = "A")]
    pub a: i64,
    #[serde(rename = "B")]
    pub b: i64,
}

/// Optional lead fields completeness may name.
pub const OPTIONAL_FIELDS: [&str; 6] = [
    "name",
    "province",
    "city",
    "interested_model",
    "campaign_code",
    "remark",
];

impl ScoringRules {
    pub(crate) fn validate(&self, file: &Path) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let g = &self.grades;
        if !(g.h > g.a && g.a > g.b) {
            out.push(problem(
                file,
                "grades",
                format!(
                    "thresholds must fall from H to B (H > A > B), got H = {}, A = {}, B = {}",
                    g.h, g.a, g.b
                ),
            ));
        }
        for f in self.completeness.fields.keys() {
            if !OPTIONAL_FIELDS.contains(&f.as_str()) {
                out.push(problem(
                    file,
                    format!("completeness.fields.{f}"),
                    format!(
                        "unknown lead field `{f}`, expected one of {}",
                        OPTIONAL_FIELDS.join(", ")
                    ),
                ));
            }
        }
        for (i, w) in self.recency.windows(2).enumerate() {
            if w[1].within.0 <= w[0].within.0 {
                out.push(problem(
                    file,
                    format!("recency[{}].within", i + 1),
                    "recency bands must be listed from the youngest to the oldest",
                ));
            }
        }
        out
    }
}

/// What scoring looks at.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeadFacts {
    pub source: String,
    #[serde(default)]
    pub campaign_code: Option<String>,
    #[serde(default)]
    pub interested_model: Option<String>,
    /// Optional fields present and not empty.
    #[serde(default)]
    pub present: Vec<String>,
    /// Age of the lead when scored (received → now), in seconds.
    #[serde(default)]
    pub age_secs: u64,
}

/// A score, its grade and how it was reached (`source website +20`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scored {
    pub score: i64,
    pub level: Level,
    pub parts: Vec<String>,
}

pub fn score(rules: &ScoringRules, lead: &LeadFacts) -> Scored {
    let mut total = rules.base;
    let mut parts = Vec::new();
    if rules.base != 0 {
        parts.push(format!("base {}", rules.base));
    }
    let mut add = |what: String, points: i64| {
        if points != 0 {
            total += points;
            parts.push(format!("{what} {points:+}"));
        }
    };
    let src = rules
        .source
        .points
        .get(&lead.source)
        .copied()
        .unwrap_or(rules.source.other);
    add(format!("source {}", lead.source), src);
    if let Some(code) = lead.campaign_code.as_deref().filter(|c| !c.is_empty()) {
        add("campaign".into(), rules.campaign.present);
        if let Some(extra) = rules.campaign.codes.get(code) {
            add(format!("campaign {code}"), *extra);
        }
    }
    if let Some(model) = lead.interested_model.as_deref().filter(|m| !m.is_empty()) {
        add("model".into(), rules.model.present);
        let lower = model.to_lowercase();
        // The best matching entry counts; ties go to the first name in order (BTreeMap).
        let best = rules
            .model
            .models
            .iter()
            .filter(|(k, _)| lower.contains(&k.to_lowercase()))
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)));
        if let Some((k, p)) = best {
            add(format!("model {k}"), *p);
        }
    }
    for (field, points) in &rules.completeness.fields {
        if lead.present.iter().any(|p| p == field) {
            add(format!("has {field}"), *points);
        }
    }
    if let Some(band) = rules
        .recency
        .iter()
        .find(|b| lead.age_secs <= b.within.0.as_secs())
    {
        add(format!("recency ≤{}", band.within), band.points);
    }
    let score = total.clamp(0, 100);
    let g = &rules.grades;
    let level = if score >= g.h {
        Level::H
    } else if score >= g.a {
        Level::A
    } else if score >= g.b {
        Level::B
    } else {
        Level::C
    };
    Scored {
        score,
        level,
        parts,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    lead: LeadFacts,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    score: i64,
    level: Level,
}

/// Runs `config/rules/tests/lead_scoring.json`: `[{name, lead: {source, campaign_code,
/// interested_model, present, age_secs}, expect: {score, level}}]`.
pub(crate) fn run_cases(file: &Path, rules: &ScoringRules) -> Vec<ConfigProblem> {
    let cases: Vec<Case> = match read_cases(file) {
        Ok(c) => c,
        Err(p) => return vec![p],
    };
    let mut out = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let got = score(rules, &c.lead);
        if got.score != c.expect.score || got.level != c.expect.level {
            out.push(problem(
                file,
                format!("[{i}] {}", c.name),
                format!(
                    "expected score {} grade {}, the rules give {} grade {} ({})",
                    c.expect.score,
                    c.expect.level,
                    got.score,
                    got.level,
                    got.parts.join(", ")
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> ScoringRules {
        toml::from_str(
            r#"
            base = 10
            [source]
            points = { callcenter = 30 }
            other = 5
            [campaign]
            present = 10
            codes = { X = 5 }
            [model]
            present = 5
            models = { "雅阁" = 10, "accord" = 8 }
            [completeness]
            fields = { city = 5 }
            [[recency]]
            within = "1h"
            points = 10
            [grades]
            H = 80
            A = 60
            B = 40
            "#,
        )
        .unwrap()
    }

    #[test]
    fn best_model_match_counts_once_and_case_does_not_matter() {
        let got = score(
            &rules(),
            &LeadFacts {
                source: "callcenter".into(),
                interested_model: Some("雅阁 ACCORD".into()),
                ..Default::default()
            },
        );
        // base 10 + source 30 + model 5 + 雅阁 10 + recency 10 (age 0)
        assert_eq!(got.score, 65, "{:?}", got.parts);
        assert_eq!(got.level, Level::A);
    }

    #[test]
    fn score_is_clamped_and_unknown_source_gets_other() {
        let mut r = rules();
        r.base = -50;
        let got = score(
            &r,
            &LeadFacts {
                source: "thirdparty".into(),
                age_secs: 7200,
                ..Default::default()
            },
        );
        assert_eq!((got.score, got.level), (0, Level::C));
    }
}
