//! The route table: `routes/*.toml` compiled once at start (predicates parsed, schemas and
//! mappings resolved, every cross-reference checked) into what the pipeline looks up per record.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;
use synchub_transform::jq::{Mappings, Predicate};
use synchub_transform::validate::RecordSchema;

use crate::settings::{ConfigProblem, EndpointConfig, RetryPolicy, Settings};

#[derive(Debug)]
pub struct Route {
    pub id: String,
    pub from: String,
    pub record_type: String,
    pub when: Option<Predicate>,
    pub validate: Option<RecordSchema>,
    pub mapping: Option<String>,
    pub mapping_version: Option<u32>,
    pub to: Vec<String>,
    /// Dotted path into the validated record whose value orders deliveries (per target).
    pub lane_key: Option<Vec<String>>,
    pub retry: RetryPolicy,
    /// The route's `headers`, merged into each delivery's headers.
    pub headers: std::collections::BTreeMap<String, String>,
}

impl Route {
    /// The lane key's value in `record`, as text (numbers are stringified; missing → no lane).
    pub fn lane(&self, record: &Value) -> Option<String> {
        self.lane_in(record.as_object()?)
    }

    /// [`Route::lane`] of a record held as a map (no copy into a `Value` needed).
    pub fn lane_in(&self, record: &serde_json::Map<String, Value>) -> Option<String> {
        let (first, rest) = self.lane_key.as_ref()?.split_first()?;
        let mut cur = record.get(first)?;
        for seg in rest {
            cur = cur.get(seg)?;
        }
        match cur {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    by_source: HashMap<(String, String), Vec<usize>>,
}

impl RouteTable {
    pub fn compile(
        settings: &Settings,
        mappings: &Mappings,
    ) -> Result<RouteTable, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut table = RouteTable::default();
        for (id, rc) in &settings.routes {
            let file = PathBuf::from(format!("{}/{id}.toml", settings.routes_dir().display()));
            let mut problem = |key: &str, message: String| {
                problems.push(ConfigProblem {
                    file: file.clone(),
                    key_path: key.to_string(),
                    message,
                })
            };
            let when = match rc.when.as_deref().map(Predicate::compile) {
                Some(Ok(p)) => Some(p),
                Some(Err(e)) => {
                    problem("when", format!("predicate does not compile: {e}"));
                    None
                }
                None => None,
            };
            let validate = match rc.validate.as_deref() {
                Some(name) => match RecordSchema::from_name(name) {
                    Some(s) => Some(s),
                    None => {
                        problem("validate", format!("unknown record schema '{name}'"));
                        None
                    }
                },
                None => None,
            };
            if let Some(m) = &rc.mapping {
                let versions = mappings.versions(m);
                if versions.is_empty() {
                    problem("mapping", format!("no mapping '{m}' under mappings/"));
                } else if let Some(v) = rc.mapping_version
                    && !versions.contains(&v)
                {
                    problem(
                        "mapping_version",
                        format!("mapping '{m}' has no version {v} (has {versions:?})"),
                    );
                }
            }
            for k in rc.headers.keys() {
                if ["dealer_code", "record_type", "route"].contains(&k.as_str()) {
                    problem(
                        &format!("headers.{k}"),
                        format!("`{k}` is set by the hub from the record; choose another name"),
                    );
                }
            }
            if !settings.endpoints.contains_key(&rc.from) {
                problem("from", format!("no endpoint '{}'", rc.from));
            }
            for (i, t) in rc.to.iter().enumerate() {
                if !settings.endpoints.contains_key(t) {
                    problem(&format!("to[{i}]"), format!("no endpoint '{t}'"));
                }
            }
            let idx = table.routes.len();
            table
                .by_source
                .entry((rc.from.clone(), rc.record_type.clone()))
                .or_default()
                .push(idx);
            table.routes.push(Route {
                id: id.clone(),
                from: rc.from.clone(),
                record_type: rc.record_type.clone(),
                when,
                validate,
                mapping: rc.mapping.clone(),
                mapping_version: rc.mapping_version,
                to: rc.to.clone(),
                lane_key: rc
                    .lane_key
                    .as_ref()
                    .map(|k| k.split('.').map(str::to_string).collect()),
                retry: rc.retry.clone(),
                headers: rc.headers.clone(),
            });
        }
        if problems.is_empty() {
            Ok(table)
        } else {
            Err(problems)
        }
    }

    /// Routes listening to `record_type` records from `endpoint`, in file-name order.
    pub fn candidates(&self, endpoint: &str, record_type: &str) -> Vec<&Route> {
        self.by_source
            .get(&(endpoint.to_string(), record_type.to_string()))
            .map(|ix| ix.iter().map(|&i| &self.routes[i]).collect())
            .unwrap_or_default()
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Whether `target` is a CRM store endpoint (its writes happen inside the dispatcher's transaction).
    pub fn is_crm(settings: &Settings, target: &str) -> bool {
        matches!(
            settings.endpoints.get(target),
            Some(EndpointConfig::CrmStore(_))
        )
    }
}
