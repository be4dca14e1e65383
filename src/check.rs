//! `synchub check`: loads the whole configuration (settings, endpoints, routes, mappings),
//! validates every cross-reference, runs every mapping's test cases, and returns **all**
//! problems at once, each with its file and key path (DESIGN §4).

use std::path::Path;

use synchub_transform::jq::{self, Mappings};

use crate::settings::{ConfigProblem, Profile, Settings};

/// Every problem of the configuration in `config_dir` for `profile`, sorted by file (problems
/// of one file keep the order they were found in). Empty means the hub can start with it.
///
/// `env` is the environment to resolve overrides and secrets from (the process environment
/// for the CLI), so the check sees exactly what `synchub run` would.
pub fn run_check(
    config_dir: &Path,
    env: &[(String, String)],
    profile: Profile,
) -> Vec<ConfigProblem> {
    // Partial settings, so cross-references are checked even when some file failed to load.
    let (settings, mut problems) = Settings::load_partial(config_dir, profile, env);
    problems.extend(settings.validate());

    let mappings_dir = settings.mappings_dir();
    match Mappings::load(&mappings_dir) {
        Ok(mappings) => {
            check_mapping_references(&settings, &mut problems, |id| match mappings.versions(id) {
                versions if versions.is_empty() => MappingVersions::Missing,
                versions => MappingVersions::Known(versions),
            });
            problems.extend(
                mappings
                    .run_tests(&mappings_dir)
                    .into_iter()
                    .map(from_mapping_problem),
            );
        }
        Err(mapping_problems) => {
            // Nothing is loaded when a mapping fails to compile, so versions are unknown and the
            // tests cannot run; still catch references to mappings that do not exist at all.
            problems.extend(mapping_problems.into_iter().map(from_mapping_problem));
            check_mapping_references(&settings, &mut problems, |id| {
                if mappings_dir.join(id).is_dir() {
                    MappingVersions::Unknown
                } else {
                    MappingVersions::Missing
                }
            });
        }
    }

    problems.sort_by(|a, b| a.file.cmp(&b.file));
    problems
}

/// What is known about a mapping a route names.
enum MappingVersions {
    /// No such mapping.
    Missing,
    /// The mapping exists with these versions.
    Known(Vec<u32>),
    /// The folder exists but the mappings did not load, so the versions are unknown.
    Unknown,
}

/// Checks each route's `mapping` (and pinned `mapping_version`) against what exists.
fn check_mapping_references(
    settings: &Settings,
    problems: &mut Vec<ConfigProblem>,
    lookup: impl Fn(&str) -> MappingVersions,
) {
    for (id, route) in &settings.routes {
        // An empty name was reported by `Settings::validate`.
        let Some(mapping) = route.mapping.as_deref().filter(|m| !m.trim().is_empty()) else {
            continue;
        };
        let problem = |key: &str, message: String| ConfigProblem {
            file: settings.route_file(id),
            key_path: format!("routes.{id}.{key}"),
            message,
        };
        match lookup(mapping) {
            MappingVersions::Missing => problems.push(problem(
                "mapping",
                format!(
                    "no mapping `{mapping}` (expected {})",
                    settings
                        .mappings_dir()
                        .join(mapping)
                        .join("v<N>.jq")
                        .display()
                ),
            )),
            MappingVersions::Known(versions) => {
                if let Some(pinned) = route.mapping_version
                    && !versions.contains(&pinned)
                {
                    let list: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
                    problems.push(problem(
                        "mapping_version",
                        format!(
                            "mapping `{mapping}` has no version {pinned} (it has {})",
                            list.join(", ")
                        ),
                    ));
                }
            }
            MappingVersions::Unknown => {}
        }
    }
}

fn from_mapping_problem(problem: jq::Problem) -> ConfigProblem {
    ConfigProblem {
        file: problem.file,
        key_path: problem.key_path,
        message: problem.message,
    }
}
