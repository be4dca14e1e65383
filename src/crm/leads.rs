//! The lead flow inside the CRM store sink: a new lead is checked for a duplicate (same mobile,
//! open, inside the protection window), scored and graded, and distributed to a dealer (or the
//! call centre) with the decision and its reason recorded on the lead; a dealer assignment
//! yields the `lead.assigned` change event for its DMS. Runs in the sink's transaction, only
//! when the lead is created, so a replay never assigns twice.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::{ChangeEvent, ChangeSource, Columns, CrmFailure, Unit, str_field};
use crate::args;
use crate::rules::distribution::{Ask, DealerLoad, Decision, Strategy};
use crate::rules::scoring::{self, LeadFacts};
use crate::rules::{LeadRules, Level};
use crate::store::exec::{Exec, Ty};
use crate::store::{StoreError, now_ms};

/// Lead statuses after which a lead no longer protects its mobile.
pub const CLOSED: [&str; 4] = ["won", "lost", "invalid", "duplicate"];

/// Key of the PostgreSQL advisory lock every lead distribution (sink batch or escalation run)
/// holds until its transaction ends: capacity counts and round-robin turns are read, decided on
/// and written under it, so concurrent batches on several instances never overbook a dealer.
/// SQLite needs none: it has a single writer.
const DISTRIBUTION_LOCK: i64 = 0x5359_4e43_4c45_4144; // "SYNCLEAD"

/// Per sink batch: the rules, the dealers (read once), and whether the lock is held.
pub struct LeadCtx<'r> {
    pub rules: &'r LeadRules,
    dealers: Option<Vec<DealerLoad>>,
    locked: bool,
    /// Leads created earlier in this batch by mobile: they are not in the table yet.
    created: HashMap<String, String>,
    /// Today's assignments per dealer, read once per batch and kept current under the lock.
    loads: Option<(String, HashMap<String, u32>)>,
}

impl<'r> LeadCtx<'r> {
    pub fn new(rules: &'r LeadRules) -> LeadCtx<'r> {
        LeadCtx {
            rules,
            dealers: None,
            locked: false,
            created: HashMap::new(),
            loads: None,
        }
    }

    async fn lock(&mut self, conn: &mut dyn Exec) -> Result<(), StoreError> {
        if !self.locked {
            lock_distribution(conn).await?;
            self.locked = true;
        }
        Ok(())
    }
}

/// Takes the distribution lock on PostgreSQL (a no-op on SQLite).
pub async fn lock_distribution(conn: &mut dyn Exec) -> Result<(), StoreError> {
    crate::store::advisory_xact_lock(conn, DISTRIBUTION_LOCK).await
}

/// A time in the rules' business timezone, as partners get it (`2026-11-25T10:02:11+08:00`).
pub fn local_time(ms: i64, offset: FixedOffset) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .with_timezone(&offset)
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

fn business_day(ms: i64, offset: FixedOffset) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .with_timezone(&offset)
        .format("%Y-%m-%d")
        .to_string()
}

fn offset(rules: &LeadRules) -> FixedOffset {
    rules
        .distribution
        .offset()
        .unwrap_or_else(|| FixedOffset::east_opt(8 * 3600).expect("valid offset"))
}

/// Active and inactive dealers with where they serve; loads are filled in per decision.
async fn load_dealers(conn: &mut dyn Exec) -> Result<Vec<DealerLoad>, StoreError> {
    let rows = conn
        .rows(
            "SELECT id, data FROM crm_records WHERE entity = 'dealer' ORDER BY id",
            Vec::new(),
            &[Ty::Text, Ty::Text],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let data: Value = serde_json::from_str(&r.text(1)?).unwrap_or(Value::Null);
        let s = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
        out.push(DealerLoad {
            code: r.text(0)?,
            city: s("city"),
            province: s("province"),
            status: s("status").unwrap_or_else(|| "active".into()),
            today: 0,
        });
    }
    Ok(out)
}

/// Leads assigned per dealer on a business day.
async fn loads(conn: &mut dyn Exec, day: &str) -> Result<HashMap<String, u32>, StoreError> {
    let rows = conn
        .rows(
            "SELECT dealer_code, COUNT(*) FROM lead_assignments WHERE day = $1 GROUP BY dealer_code",
            args![day],
            &[Ty::Text, Ty::Int],
        )
        .await?;
    let mut out = HashMap::new();
    for r in rows {
        out.insert(r.text(0)?, r.int(1)? as u32);
    }
    Ok(out)
}

async fn rr_counters(conn: &mut dyn Exec, ask: &Ask) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut out = BTreeMap::new();
    let place = |s: &str| {
        let t = s.trim();
        t.strip_suffix('市')
            .or_else(|| t.strip_suffix('省'))
            .unwrap_or(t)
            .to_string()
    };
    let keys: Vec<String> = [
        ask.city.as_deref().map(|c| format!("city:{}", place(c))),
        ask.province
            .as_deref()
            .map(|p| format!("province:{}", place(p))),
    ]
    .into_iter()
    .flatten()
    .collect();
    for k in keys {
        let v = conn
            .opt_row(
                "SELECT value FROM counters WHERE name = $1",
                args![format!("lead_rr:{k}")],
                &[Ty::Int],
            )
            .await?
            .map(|r| r.int(0))
            .transpose()?;
        out.insert(k, v.unwrap_or(0) as u64);
    }
    Ok(out)
}

async fn advance_rr(conn: &mut dyn Exec, key: &str) -> Result<(), StoreError> {
    conn.exec(
        "INSERT INTO counters (name, value) VALUES ($1, 1) \
         ON CONFLICT (name) DO UPDATE SET value = counters.value + 1",
        args![format!("lead_rr:{key}")],
    )
    .await?;
    Ok(())
}

/// A decision for `ask` against today's loads, under the distribution lock.
pub async fn decide(
    conn: &mut dyn Exec,
    rules: &LeadRules,
    dealers: &[DealerLoad],
    ask: &Ask,
    now: i64,
) -> Result<Decision, StoreError> {
    decide_with(conn, rules, dealers, ask, now, &mut None).await
}

/// [`decide`] with the loads a sink batch already read in `cached` (updated with this decision).
async fn decide_with(
    conn: &mut dyn Exec,
    rules: &LeadRules,
    dealers: &[DealerLoad],
    ask: &Ask,
    now: i64,
    cached: &mut Option<(String, HashMap<String, u32>)>,
) -> Result<Decision, StoreError> {
    let day = business_day(now, offset(rules));
    if cached.as_ref().is_none_or(|(d, _)| *d != day) {
        *cached = Some((day.clone(), loads(conn, &day).await?));
    }
    let load = &mut cached.as_mut().expect("filled above").1;
    let dealers: Vec<DealerLoad> = dealers
        .iter()
        .cloned()
        .map(|mut d| {
            d.today = load.get(&d.code).copied().unwrap_or(0);
            d
        })
        .collect();
    // Only round robin reads its turn counters.
    let rr = match rules.distribution.strategy {
        Strategy::RoundRobin => rr_counters(conn, ask).await?,
        Strategy::LeastLoaded => BTreeMap::new(),
    };
    let decision = crate::rules::distribution::decide(&rules.distribution, ask, &dealers, &|k| {
        rr.get(k).copied().unwrap_or(0)
    });
    if let Decision::Dealer { code, rr_key, .. } = &decision {
        *load.entry(code.clone()).or_insert(0) += 1;
        if let Some(k) = rr_key {
            advance_rr(conn, k).await?;
        }
    }
    Ok(decision)
}

/// The dealers' current data, for a decision outside the sink (escalation).
pub async fn dealers(conn: &mut dyn Exec) -> Result<Vec<DealerLoad>, StoreError> {
    load_dealers(conn).await
}

/// What an assignment writes: the assignment row, then the lead's fields.
pub struct Assignment {
    pub dealer: String,
    pub level: Level,
    pub score: i64,
    pub assigned_at: i64,
    pub respond_by: i64,
    pub reason: String,
}

/// Records the assignment row (capacity and escalation read it).
pub async fn insert_assignment(
    conn: &mut dyn Exec,
    rules: &LeadRules,
    lead_id: &str,
    a: &Assignment,
) -> Result<(), StoreError> {
    conn.exec("INSERT INTO lead_assignments (lead_id, dealer_code, day, level, score, assigned_at, respond_by, state, reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8) ON CONFLICT (lead_id, dealer_code) DO NOTHING", args![lead_id, &a.dealer, business_day(a.assigned_at, offset(rules)), a.level.as_str(), a.score, a.assigned_at, a.respond_by, &a.reason]).await?;
    Ok(())
}

/// The INTERFACES §3 `lead` body for the dealer's DMS, from the lead as stored.
pub fn assigned_event(
    lead_id: &str,
    lead: &Map<String, Value>,
    rules: &LeadRules,
    a: &Assignment,
) -> ChangeEvent {
    let customer = lead
        .get("customer")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let c = |k: &str| customer.get(k).cloned().unwrap_or(Value::Null);
    let f = |k: &str| lead.get(k).cloned().unwrap_or(Value::Null);
    let tz = offset(rules);
    ChangeEvent {
        record_type: "lead_event",
        dealer_code: Some(a.dealer.clone()),
        body: json!({
            "event": "lead.assigned",
            "lead_id": lead_id,
            "dealer_code": a.dealer,
            "level": a.level.as_str(),
            "score": a.score,
            "customer": {"name": c("name"), "mobile": c("mobile"), "province": c("province"), "city": c("city")},
            "interested_model": f("interested_model"),
            "campaign_code": f("campaign_code"),
            "source": f("source"),
            "assigned_at": local_time(a.assigned_at, tz),
            "respond_by": local_time(a.respond_by, tz),
        }),
    }
}

/// The lead fields an assignment sets (its timeline shows each change).
pub fn assignment_fields(a: &Assignment, rules: &LeadRules) -> Map<String, Value> {
    let tz = offset(rules);
    let mut m = Map::new();
    m.insert("status".into(), json!("assigned"));
    m.insert("assigned_to".into(), json!(a.dealer));
    m.insert("dealer_code".into(), json!(a.dealer));
    m.insert("assigned_at".into(), json!(local_time(a.assigned_at, tz)));
    m.insert("respond_by".into(), json!(local_time(a.respond_by, tz)));
    m.insert("assignment_reason".into(), json!(a.reason));
    m
}

/// Scores, deduplicates and distributes a lead just created in `unit`. Returns the summary for
/// the attempt and the `lead.assigned` event when a dealer got it.
#[allow(clippy::too_many_arguments)]
pub async fn on_created(
    conn: &mut dyn Exec,
    unit: &mut Unit,
    ctx: &mut LeadCtx<'_>,
    lead_id: &str,
    rec: &Map<String, Value>,
    received_at: Option<i64>,
    src: &ChangeSource,
) -> Result<(String, Option<ChangeEvent>), CrmFailure> {
    ctx.lock(conn).await?;
    let rules = ctx.rules;
    let now = now_ms();
    let customer = rec
        .get("customer")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mobile = str_field(&customer, "mobile");

    if let Some(m) = &mobile
        && let Some((orig, orig_lead)) = open_lead(conn, unit, ctx, m, lead_id, now).await?
    {
        let window = rules.distribution.duplicate_window;
        let with = orig_lead
            .get("assigned_to")
            .and_then(Value::as_str)
            .map(|d| format!(", with {d}"))
            .unwrap_or_default();
        let reason = format!(
            "duplicate of {orig} (same mobile, open lead{with}, within the {window} protection window); not distributed again"
        );
        let mut change = Map::new();
        change.insert("status".into(), json!("duplicate"));
        change.insert("duplicate_of".into(), json!(orig));
        change.insert("assignment_reason".into(), json!(reason));
        // The original's dealer may see the duplicate: it is the same customer's interest.
        let dealer = str_field(&orig_lead, "dealer_code");
        let cols = Columns {
            dealer_code: dealer,
            ..Default::default()
        };
        unit.upsert(conn, "lead", lead_id, &change, &cols, src)
            .await?;
        let mut dups: Vec<Value> = orig_lead
            .get("duplicates")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        dups.push(json!(lead_id));
        let mut on_orig = Map::new();
        on_orig.insert("duplicates".into(), Value::Array(dups));
        unit.upsert(conn, "lead", &orig, &on_orig, &Columns::default(), src)
            .await?;
        metrics::counter!(crate::telemetry::metrics_names::LEADS, "outcome" => "duplicate")
            .increment(1);
        return Ok((format!("lead {lead_id} created: {reason}"), None));
    }
    if let Some(m) = &mobile {
        ctx.created.insert(m.clone(), lead_id.to_string());
    }

    let text = |m: &Map<String, Value>, k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
    };
    let mut present = Vec::new();
    for k in ["name", "province", "city"] {
        if text(&customer, k).is_some() {
            present.push(k.to_string());
        }
    }
    for k in ["interested_model", "campaign_code", "remark"] {
        if text(rec, k).is_some() {
            present.push(k.to_string());
        }
    }
    let facts = LeadFacts {
        source: text(rec, "source").unwrap_or_default(),
        campaign_code: text(rec, "campaign_code"),
        interested_model: text(rec, "interested_model"),
        present,
        age_secs: received_at
            .map(|r| ((now - r).max(0) / 1000) as u64)
            .unwrap_or(0),
    };
    let scored = scoring::score(&rules.scoring, &facts);
    if ctx.dealers.is_none() {
        ctx.dealers = Some(load_dealers(conn).await?);
    }
    let ask = Ask {
        level: Some(scored.level),
        city: text(&customer, "city"),
        province: text(&customer, "province"),
        exclude: Vec::new(),
    };
    let dealers = ctx.dealers.take().unwrap_or_default();
    let decision = decide_with(conn, rules, &dealers, &ask, now, &mut ctx.loads).await;
    ctx.dealers = Some(dealers);
    let decision = decision?;
    let mut change = Map::new();
    change.insert("score".into(), json!(scored.score));
    change.insert("level".into(), json!(scored.level.as_str()));
    change.insert("score_detail".into(), json!(scored.parts.join(", ")));
    match decision {
        Decision::Dealer { code, reason, .. } => {
            let a = Assignment {
                dealer: code.clone(),
                level: scored.level,
                score: scored.score,
                assigned_at: now,
                respond_by: now + rules.distribution.respond_within(scored.level).as_millis(),
                reason: reason.clone(),
            };
            insert_assignment(conn, rules, lead_id, &a).await?;
            change.extend(assignment_fields(&a, rules));
            let cols = Columns {
                dealer_code: Some(code.clone()),
                ..Default::default()
            };
            let up = unit
                .upsert(conn, "lead", lead_id, &change, &cols, src)
                .await?;
            metrics::counter!(crate::telemetry::metrics_names::LEADS, "outcome" => "dealer")
                .increment(1);
            Ok((
                format!(
                    "lead {lead_id} created: score {} grade {}, {reason}",
                    scored.score, scored.level
                ),
                Some(assigned_event(lead_id, &up.data, rules, &a)),
            ))
        }
        Decision::Fallback { reason } => {
            let tz = offset(rules);
            change.insert("status".into(), json!("assigned"));
            change.insert("assigned_to".into(), json!(rules.distribution.fallback));
            change.insert("assigned_at".into(), json!(local_time(now, tz)));
            change.insert("assignment_reason".into(), json!(reason));
            unit.upsert(conn, "lead", lead_id, &change, &Columns::default(), src)
                .await?;
            metrics::counter!(crate::telemetry::metrics_names::LEADS, "outcome" => "fallback")
                .increment(1);
            Ok((
                format!(
                    "lead {lead_id} created: score {} grade {}, {reason}",
                    scored.score, scored.level
                ),
                None,
            ))
        }
    }
}

/// The oldest open lead of this mobile inside the protection window (not `except`), with its
/// current data.
async fn open_lead(
    conn: &mut dyn Exec,
    unit: &mut Unit,
    ctx: &LeadCtx<'_>,
    mobile: &str,
    except: &str,
    now: i64,
) -> Result<Option<(String, Map<String, Value>)>, StoreError> {
    let since = now - ctx.rules.distribution.duplicate_window.as_millis();
    let ids = conn
        .rows(
            "SELECT id FROM crm_records WHERE entity = 'lead' AND mobile = $1 AND id <> $2 \
             AND created_at >= $3 ORDER BY created_at, id",
            args![mobile, except, since],
            &[Ty::Text],
        )
        .await?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<Vec<String>, StoreError>>()?;
    let mut candidates = ids;
    if let Some(id) = ctx.created.get(mobile)
        && id != except
        && !candidates.contains(id)
    {
        candidates.push(id.clone());
    }
    for id in candidates {
        // The unit's copy is current (a result earlier in this batch may have closed it).
        let Some(data) = unit.get(conn, "lead", &id).await?.cloned() else {
            continue;
        };
        let status = data.get("status").and_then(Value::as_str).unwrap_or("new");
        if CLOSED.contains(&status) || data.contains_key("duplicate_of") {
            continue;
        }
        return Ok(Some((id, data)));
    }
    Ok(None)
}

/// Why a result from `dealer` on this lead is refused, if it is: only the lead's dealer may
/// report (a lead that went to the call centre takes no DMS results; a duplicate's results
/// belong on the original). A lead never distributed (no rules) takes results from anyone.
pub fn refuse_result(lead_id: &str, lead: &Map<String, Value>, dealer: &str) -> Option<String> {
    if let Some(orig) = lead.get("duplicate_of").and_then(Value::as_str) {
        return Some(format!(
            "lead {lead_id} is a duplicate of {orig}; report results on {orig}"
        ));
    }
    let assigned = str_field(lead, "dealer_code");
    if let Some(assigned) = &assigned {
        if assigned == dealer {
            return None;
        }
        let was_ours = lead
            .get("reassigned_from")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|d| d.as_str() == Some(dealer)));
        return Some(if was_ours {
            format!(
                "lead {lead_id} was reassigned from dealer {dealer} to {assigned} after no result by its respond_by; results from {dealer} are no longer accepted"
            )
        } else {
            format!("lead {lead_id} is assigned to dealer {assigned}, not {dealer}")
        });
    }
    str_field(lead, "assigned_to").map(|to| {
        format!("lead {lead_id} went to {to}, not to a dealer; {dealer} may not report on it")
    })
}

/// A result from the assigned dealer: its assignment is answered and open escalations of the
/// lead are resolved.
pub async fn on_result(
    conn: &mut dyn Exec,
    lead_id: &str,
    dealer: &str,
    status: &str,
) -> Result<u64, StoreError> {
    let now = now_ms();
    conn.exec(
        "UPDATE lead_assignments SET state = 'responded', responded_at = $1 \
         WHERE lead_id = $2 AND dealer_code = $3 AND state = 'active'",
        args![now, lead_id, dealer],
    )
    .await?;
    let resolved = conn
        .exec(
            "UPDATE escalations SET status = 'resolved', resolved_at = $1, resolution = $2 \
         WHERE kind = 'lead' AND entity_id = $3 AND status = 'open'",
            args![now, format!("result {status} from {dealer}"), lead_id],
        )
        .await?;
    Ok(resolved)
}
