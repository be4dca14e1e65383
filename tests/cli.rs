//! The command line as a user runs it: `--help`, `check` on the shipped configuration and on a
//! broken one (every problem listed, exit code 1), `migrate`.

use std::process::Command;

#[path = "support/tree.rs"]
mod tree;

fn synchub() -> Command {
    Command::new(env!("CARGO_BIN_EXE_synchub"))
}

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn help_lists_every_command() {
    let out = synchub().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "run", "check", "migrate", "replay", "import", "extract", "demo",
    ] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
    let out = synchub().args(["replay", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--mapping-version"));
}

#[test]
fn check_passes_on_the_shipped_configuration() {
    let out = synchub()
        .arg("check")
        .arg("--config")
        .arg(repo().join("config"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("valid"), "{text}");
}

#[test]
fn check_reports_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    tree::copy_shipped_config(&repo(), dir.path());
    let cfg = dir.path().join("config");
    std::fs::write(
        cfg.join("endpoints/partners_rest_in.toml"),
        "type = \"rest\"\ndirection = \"in\"\nspeed = 3\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("routes/broken.toml"),
        "from = \"partners_rest_in\"\nrecord_type = \"lead\"\nmapping = \"no_such_mapping\"\nto = [\"nowhere\"]\n",
    )
    .unwrap();
    let mut base = std::fs::read_to_string(cfg.join("synchub.toml")).unwrap();
    base.push_str("\n[retention_typo]\nx = 1\n");
    std::fs::write(cfg.join("synchub.toml"), base).unwrap();
    let out = synchub()
        .arg("check")
        .arg("--config")
        .arg(&cfg)
        .env("SYNCHUB__STORE__PURGE_SCHEDULE", "61 * * *")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for needle in [
        "speed",
        "no_such_mapping",
        "nowhere",
        "retention_typo",
        "purge_schedule",
        "partners_rest_in.toml",
        "broken.toml",
    ] {
        assert!(
            text.contains(needle),
            "check output lacks {needle}:\n{text}"
        );
    }
}

#[test]
fn production_profile_refuses_demo_credentials() {
    let dir = tempfile::tempdir().unwrap();
    tree::copy_shipped_config(&repo(), dir.path());
    // An operator copies the local profile's demo keys into production by mistake.
    let local = std::fs::read_to_string(dir.path().join("config/synchub.local.toml")).unwrap();
    let prod = std::fs::read_to_string(dir.path().join("config/synchub.production.toml")).unwrap();
    std::fs::write(
        dir.path().join("config/synchub.production.toml"),
        format!("{prod}\n{local}"),
    )
    .unwrap();
    let out = synchub()
        .arg("run")
        .arg("--config")
        .arg(dir.path().join("config"))
        .env("SYNCHUB_PROFILE", "production")
        .env(
            "SYNCHUB__STORE__URL",
            format!("sqlite://{}/hub.db", dir.path().display()),
        )
        .env("SYNCHUB__HTTP__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.to_lowercase().contains("demo"), "{err}");
    assert!(
        !err.contains("demo-admin\""),
        "the secret itself is not printed: {err}"
    );
}

#[test]
fn migrate_creates_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m/hub.db");
    let out = synchub()
        .arg("migrate")
        .arg("--config")
        .arg(repo().join("config"))
        .env("SYNCHUB__STORE__URL", format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(db.exists());
}
