//! `synchub check`: loads the whole configuration (settings, endpoints, routes, mappings),
//! validates every cross-reference, compiles every route's `when` predicate, runs every
//! mapping's test cases, and returns **all** problems at once, each with its file and key path
//! (DESIGN §4).

use std::path::Path;

use synchub_transform::jq::{self, Mappings, Predicate};

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
    check_predicates(&settings, &mut problems);

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

    if let Some(rules) = &settings.lead_rules {
        problems.extend(crate::rules::run_cases(config_dir, rules));
    }

    problems.sort_by(|a, b| a.file.cmp(&b.file));
    problems
}

/// Compiles each route's `when` with the same jq dialect the pipeline uses.
fn check_predicates(settings: &Settings, problems: &mut Vec<ConfigProblem>) {
    for (id, route) in &settings.routes {
        // An empty predicate was reported by `Settings::validate`.
        let Some(when) = route.when.as_deref().filter(|w| !w.trim().is_empty()) else {
            continue;
        };
        if let Err(e) = Predicate::compile(when) {
            problems.push(ConfigProblem {
                file: settings.route_file(id),
                key_path: format!("routes.{id}.when"),
                message: format!("the jq predicate does not compile: {e}"),
            });
        }
    }
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn reports_every_mistake_at_once_with_file_and_key_path() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            root,
            "config/synchub.toml",
            "[http]\nlistne = \"0.0.0.0:1\"\n\n[store]\npurge_schedule = \"every night\"\n",
        );
        let demo_osm = crate::settings::sha256_hex("demo-osm");
        write(
            root,
            "config/synchub.production.toml",
            &format!(
                "[[auth.api_keys]]\nname = \"osm\"\nkey_sha256 = \"{demo_osm}\"\nsystem = \"osm\"\n"
            ),
        );
        write(
            root,
            "config/endpoints/rest_in.toml",
            "type = \"rest\"\ndirection = \"in\"\ncolour = \"blue\"\n",
        );
        write(
            root,
            "config/endpoints/partner_out.toml",
            "type = \"rest\"\ndirection = \"out\"\nurl = \"https://partner.example/leads\"\n\
             bearer_token_env = \"PARTNER_TOKEN\"\n",
        );
        write(root, "config/endpoints/crm.toml", "type = \"crm_store\"\n");
        write(
            root,
            "routes/r1.toml",
            "from = \"rest_in\"\nrecord_type = \"lead\"\nto = [\"crm\", \"ghost\"]\n",
        );
        write(
            root,
            "routes/r2.toml",
            "from = \"rest_in\"\nrecord_type = \"lead\"\nmapping = \"nope\"\nto = [\"partner_out\"]\n",
        );
        write(
            root,
            "routes/r3.toml",
            "from = \"rest_in\"\nrecord_type = \"lead\"\nmapping = \"known\"\nmapping_version = 2\n\
             to = [\"partner_out\"]\n",
        );
        write(
            root,
            "routes/r4.toml",
            "from = \"rest_in\"\nrecord_type = \"lead\"\nwhen = \".province ==\"\n\
             to = [\"crm\"]\n",
        );
        write(
            root,
            "routes/r5.toml",
            "from = \"rest_in\"\nrecord_type = \"lead\"\nwhen = \".province == \\\"广东\\\"\"\n\
             to = [\"crm\"]\n",
        );
        write(root, "mappings/known/v1.jq", ".\n");
        write(root, "mappings/known/tests/a.in.json", "{\"x\": 1}\n");
        write(root, "mappings/known/tests/a.out.json", "{\"x\": 2}\n");

        let config = root.join("config");
        // Another variable is set, but not the one the endpoint names.
        let env = vec![("OTHER_TOKEN".to_owned(), "x".to_owned())];
        let problems = run_check(&config, &env, Profile::Production);
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();

        let expected: [(PathBuf, &str); 10] = [
            (config.join("synchub.toml"), "http.listne"),
            (config.join("synchub.toml"), "store.purge_schedule"),
            (
                config.join("synchub.production.toml"),
                "auth.api_keys[0].key_sha256",
            ),
            (
                config.join("endpoints/rest_in.toml"),
                "endpoints.rest_in.colour",
            ),
            (
                config.join("endpoints/partner_out.toml"),
                "endpoints.partner_out.bearer_token_env",
            ),
            (root.join("routes/r1.toml"), "routes.r1.to[1]"),
            (root.join("routes/r2.toml"), "routes.r2.mapping"),
            (root.join("routes/r3.toml"), "routes.r3.mapping_version"),
            (root.join("routes/r4.toml"), "routes.r4.when"),
            (
                root.join("mappings/known/tests/a.out.json"),
                "known/tests/a",
            ),
        ];
        for (file, key_path) in &expected {
            assert!(
                problems
                    .iter()
                    .any(|p| &p.file == file && p.key_path == *key_path),
                "no problem at {}: {key_path}; got {shown:#?}",
                file.display()
            );
        }
        assert_eq!(
            problems.len(),
            expected.len(),
            "unexpected extra problems: {shown:#?}"
        );

        let files: Vec<&PathBuf> = problems.iter().map(|p| &p.file).collect();
        assert!(
            files.windows(2).all(|w| w[0] <= w[1]),
            "not sorted by file: {shown:#?}"
        );

        let all = shown.join("\n");
        assert!(all.contains("PARTNER_TOKEN"), "{all}");
        assert!(all.contains("`osm`"), "the demo key is named: {all}");
        assert!(
            !all.contains("demo-osm"),
            "the demo secret is not printed: {all}"
        );
    }

    #[test]
    fn shipped_configuration_has_no_problems() {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for profile in Profile::ALL {
            let problems = run_check(&config, &[], profile);
            let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
            assert!(problems.is_empty(), "{profile}: {shown:#?}");
        }
        let settings = Settings::load(&config, Profile::Local, &[]).unwrap();
        assert_eq!(settings.auth.api_keys.len(), 7);
        assert_eq!(settings.auth.operators.len(), 2);
        let route_files = std::fs::read_dir(settings.routes_dir())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "toml"))
            })
            .count();
        assert_eq!(settings.routes.len(), route_files, "every route file loads");
        assert!(settings.endpoints.contains_key("partners_rest_in"));
        assert!(settings.endpoints.contains_key("crm_store"));
    }

    #[test]
    fn shipped_production_profile_refuses_the_local_demo_keys() {
        // Someone copying the local keys into production (here: via the environment) is
        // stopped, with the key named and the secret not shown.
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let admin = crate::settings::sha256_hex("demo-admin");
        let env = vec![(
            "SYNCHUB__AUTH__OPERATORS".to_owned(),
            format!("[{{ user = \"boss\", token_sha256 = \"{admin}\", role = \"admin\" }}]"),
        )];
        let problems = run_check(&config, &env, Profile::Production);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(
            problems[0].file,
            PathBuf::from("env:SYNCHUB__AUTH__OPERATORS")
        );
        assert_eq!(problems[0].key_path, "auth.operators[0].token_sha256");
        assert!(problems[0].message.contains("boss"), "{}", problems[0]);
    }
}
