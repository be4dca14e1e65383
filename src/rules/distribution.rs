//! Lead distribution: which dealer gets a graded lead. Candidates are the active dealers of the
//! customer's city, else of its province; a dealer at its daily capacity is passed over; among
//! the rest `round_robin` or `least_loaded` picks one; no candidate, or a grade below the
//! minimum, sends the lead to the call centre. Pure and deterministic: the same dealers, loads
//! and round-robin counters always give the same decision and the same reason text.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::FixedOffset;
use serde::Deserialize;

use super::{Level, Span, problem, read_cases};
use crate::settings::ConfigProblem;

/// `config/rules/lead_distribution.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributionRules {
    /// Lowest grade that goes to a dealer; lower grades go to the call centre.
    pub min_level: Level,
    /// How a dealer is chosen among the qualifying ones.
    pub strategy: Strategy,
    /// Leads a dealer takes per local day, unless `capacity` names it.
    pub daily_capacity: u32,
    /// Per-dealer daily capacity overrides, by dealer code.
    #[serde(default)]
    pub capacity: BTreeMap<String, u32>,
    /// UTC offset of the business day capacity counts against (`+08:00`), and of the times
    /// sent to dealers.
    pub timezone: String,
    /// How long a dealer has to report a first result (`8h`).
    pub respond_within: Span,
    /// Per-grade overrides of `respond_within` (`{ H = "2h" }`).
    #[serde(default)]
    pub respond_within_by_level: BTreeMap<Level, Span>,
    /// A lead whose mobile has an open lead younger than this is a duplicate (`30d`).
    pub duplicate_window: Span,
    /// Who takes leads no dealer qualifies for (recorded as `assigned_to`).
    #[serde(default = "default_fallback")]
    pub fallback: String,
    /// `[escalation]`: leads a dealer did not answer in time.
    pub escalation: EscalationRules,
}

fn default_fallback() -> String {
    "callcenter".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    RoundRobin,
    LeastLoaded,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastLoaded => "least_loaded",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationRules {
    /// false: no escalation job runs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How often the job looks for overdue leads (`1m`).
    pub interval: Span,
    /// Give an overdue lead to the next qualifying dealer (a new `lead.assigned`; the first
    /// dealer's results are then refused).
    #[serde(default)]
    pub reassign_on_escalation: bool,
    /// How long a dealer has to report a first result for a campaign assigned to it before the
    /// campaign task escalates (`3d`).
    #[serde(default = "three_days")]
    pub campaign_respond_within: Span,
}

fn yes() -> bool {
    true
}

fn three_days() -> Span {
    Span(std::time::Duration::from_secs(3 * 86_400))
}

impl DistributionRules {
    pub(crate) fn validate(&self, file: &Path) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        if self.offset().is_none() {
            out.push(problem(
                file,
                "timezone",
                format!("`{}` is not a UTC offset such as +08:00", self.timezone),
            ));
        }
        if self.daily_capacity == 0 {
            out.push(problem(
                file,
                "daily_capacity",
                "must be at least 1 (lower min_level to send fewer leads to dealers)",
            ));
        }
        if self.respond_within.0.is_zero() {
            out.push(problem(file, "respond_within", "must be longer than 0s"));
        }
        if self.escalation.interval.0.is_zero() {
            out.push(problem(
                file,
                "escalation.interval",
                "must be longer than 0s",
            ));
        }
        if self.fallback.trim().is_empty() {
            out.push(problem(
                file,
                "fallback",
                "must name who takes undistributed leads",
            ));
        }
        out
    }

    /// The business day's offset.
    pub fn offset(&self) -> Option<FixedOffset> {
        self.timezone.parse::<FixedOffset>().ok()
    }

    pub fn capacity_of(&self, dealer: &str) -> u32 {
        self.capacity
            .get(dealer)
            .copied()
            .unwrap_or(self.daily_capacity)
    }

    pub fn respond_within(&self, level: Level) -> Span {
        self.respond_within_by_level
            .get(&level)
            .copied()
            .unwrap_or(self.respond_within)
    }
}

/// A dealer as distribution sees it: where it serves, whether it is active, its load today.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DealerLoad {
    pub code: String,
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default)]
    pub province: Option<String>,
    #[serde(default = "active")]
    pub status: String,
    /// Leads assigned to it today (before this one).
    #[serde(default)]
    pub today: u32,
}

fn active() -> String {
    "active".into()
}

/// What distribution is asked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ask {
    pub level: Option<Level>,
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default)]
    pub province: Option<String>,
    /// Dealers that already had the lead (reassignment skips them).
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// The decision and the reason recorded on the lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Dealer {
        code: String,
        reason: String,
        /// The round-robin counter this decision used (the caller advances it).
        rr_key: Option<String>,
    },
    Fallback {
        reason: String,
    },
}

impl Decision {
    pub fn reason(&self) -> &str {
        match self {
            Decision::Dealer { reason, .. } | Decision::Fallback { reason } => reason,
        }
    }
}

/// Place names compare without the administrative suffix: 深圳市 serves 深圳.
fn place(s: &str) -> &str {
    let t = s.trim();
    t.strip_suffix('市')
        .or_else(|| t.strip_suffix('省'))
        .unwrap_or(t)
}

fn same_place(a: Option<&str>, b: Option<&str>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if !place(a).is_empty() && place(a) == place(b))
}

/// Chooses the dealer for a lead. `rr` gives the current value of a round-robin counter by key.
pub fn decide(
    rules: &DistributionRules,
    ask: &Ask,
    dealers: &[DealerLoad],
    rr: &dyn Fn(&str) -> u64,
) -> Decision {
    let fallback = &rules.fallback;
    let Some(level) = ask.level else {
        return Decision::Fallback {
            reason: format!("lead has no grade → {fallback}"),
        };
    };
    if !level.meets(rules.min_level) {
        return Decision::Fallback {
            reason: format!(
                "level {level} is below the dealer minimum {} → {fallback}",
                rules.min_level
            ),
        };
    }
    let city = ask.city.as_deref().filter(|c| !c.trim().is_empty());
    let province = ask.province.as_deref().filter(|p| !p.trim().is_empty());
    if city.is_none() && province.is_none() {
        return Decision::Fallback {
            reason: format!("lead names no city or province → {fallback}"),
        };
    }
    let mut sorted: Vec<&DealerLoad> = dealers
        .iter()
        .filter(|d| d.status == "active" && !ask.exclude.contains(&d.code))
        .collect();
    sorted.sort_by(|a, b| a.code.cmp(&b.code));
    let mut notes: Vec<String> = Vec::new();
    let tiers = [("city", city, true), ("province", province, false)];
    for (tier, area, by_city) in tiers {
        let Some(area) = area else { continue };
        let serving: Vec<&DealerLoad> = sorted
            .iter()
            .copied()
            .filter(|d| {
                if by_city {
                    same_place(d.city.as_deref(), Some(area))
                } else {
                    same_place(d.province.as_deref(), Some(area))
                }
            })
            .collect();
        if serving.is_empty() {
            continue;
        }
        let (open, full): (Vec<&DealerLoad>, Vec<&DealerLoad>) = serving
            .into_iter()
            .partition(|d| d.today < rules.capacity_of(&d.code));
        for d in &full {
            let note = format!(
                "{} full ({}/{})",
                d.code,
                d.today,
                rules.capacity_of(&d.code)
            );
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
        if open.is_empty() {
            continue;
        }
        let (chosen, rr_key) = match rules.strategy {
            Strategy::LeastLoaded => {
                let best = open
                    .iter()
                    .copied()
                    .min_by(|a, b| {
                        // Lowest share of capacity used; then fewest leads; then code order.
                        let (ca, cb) = (
                            u64::from(rules.capacity_of(&a.code)),
                            u64::from(rules.capacity_of(&b.code)),
                        );
                        (u64::from(a.today) * cb)
                            .cmp(&(u64::from(b.today) * ca))
                            .then(a.today.cmp(&b.today))
                            .then(a.code.cmp(&b.code))
                    })
                    .expect("open is not empty");
                (best, None)
            }
            Strategy::RoundRobin => {
                let key = format!("{tier}:{}", place(area));
                let i = (rr(&key) % open.len() as u64) as usize;
                (open[i], Some(key))
            }
        };
        let prefix = if notes.is_empty() {
            String::new()
        } else {
            format!("{}; ", notes.join(", "))
        };
        return Decision::Dealer {
            code: chosen.code.clone(),
            reason: format!(
                "{prefix}{tier} {area} → {} ({}, {}/{} today)",
                chosen.code,
                rules.strategy.as_str(),
                chosen.today,
                rules.capacity_of(&chosen.code)
            ),
            rr_key,
        };
    }
    let wanted = match (city, province) {
        (Some(c), Some(p)) => format!("city {c} or province {p}"),
        (Some(c), None) => format!("city {c}"),
        (None, Some(p)) => format!("province {p}"),
        (None, None) => unreachable!("checked above"),
    };
    let excluded = if ask.exclude.is_empty() {
        String::new()
    } else {
        format!(" other than {}", ask.exclude.join(", "))
    };
    let prefix = if notes.is_empty() {
        String::new()
    } else {
        format!("{}; ", notes.join(", "))
    };
    Decision::Fallback {
        reason: format!(
            "{prefix}no active dealer{excluded} with capacity for {wanted} → {fallback}"
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    ask: Ask,
    dealers: Vec<DealerLoad>,
    #[serde(default)]
    round_robin: BTreeMap<String, u64>,
    /// Overrides of the shipped rules for this case (`strategy`, `daily_capacity`).
    #[serde(default)]
    strategy: Option<Strategy>,
    #[serde(default)]
    daily_capacity: Option<u32>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// The dealer code, or the fallback's name.
    assigned_to: String,
    reason: String,
}

/// Runs `config/rules/tests/lead_distribution.json`: `[{name, ask: {level, city, province,
/// exclude}, dealers: [{code, city, province, status, today}], round_robin: {key: n},
/// strategy?, daily_capacity?, expect: {assigned_to, reason}}]`.
pub(crate) fn run_cases(file: &Path, rules: &DistributionRules) -> Vec<ConfigProblem> {
    let cases: Vec<Case> = match read_cases(file) {
        Ok(c) => c,
        Err(p) => return vec![p],
    };
    let mut out = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let mut r = rules.clone();
        if let Some(s) = c.strategy {
            r.strategy = s;
        }
        if let Some(n) = c.daily_capacity {
            r.daily_capacity = n;
            r.capacity.clear();
        }
        let rr = |k: &str| c.round_robin.get(k).copied().unwrap_or(0);
        let got = decide(&r, &c.ask, &c.dealers, &rr);
        let to = match &got {
            Decision::Dealer { code, .. } => code.clone(),
            Decision::Fallback { .. } => r.fallback.clone(),
        };
        if to != c.expect.assigned_to || got.reason() != c.expect.reason {
            out.push(problem(
                file,
                format!("[{i}] {}", c.name),
                format!(
                    "expected {} ({}), the rules give {to} ({})",
                    c.expect.assigned_to,
                    c.expect.reason,
                    got.reason()
                ),
            ));
        }
    }
    out
}
