//! Settings overrides that point one of the hub's SFTP endpoints at a test sshd fixture, for the
//! e2e, fault and corpus tests and the benchmarks.

use synchub_adapter_sftp::testkit::SshdFixture;

/// Extra fields of an inbound endpoint that tests poll themselves ("poll now"): files are taken
/// at once, and the schedule fires once a year.
pub(crate) const POLLED_ON_REQUEST: [(&str, &str); 2] =
    [("STABLE_SECS", "0"), ("SCHEDULE", "0 0 1 1 *")];

/// Overrides enabling endpoint `ep` (its id) on the fixture's directory `dir_rel` (created),
/// with the fixture's client key and known_hosts, plus the endpoint fields in `extra`.
pub(crate) fn sftp_endpoint_env(
    fx: &SshdFixture,
    ep: &str,
    dir_rel: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    std::fs::create_dir_all(fx.path(dir_rel)).expect("sftp dir");
    let up = ep.to_ascii_uppercase();
    let k = |f: &str| format!("SYNCHUB__ENDPOINTS__{up}__{f}");
    let mut env = vec![
        (k("ENABLED"), "true".to_string()),
        (k("HOST"), "127.0.0.1".to_string()),
        (k("PORT"), fx.port.to_string()),
        (k("USER"), fx.user.clone()),
        (k("PRIVATE_KEY_FILE"), fx.client_key.display().to_string()),
        (k("KNOWN_HOSTS_FILE"), fx.known_hosts.display().to_string()),
        (k("DIR"), fx.remote(dir_rel)),
    ];
    env.extend(extra.iter().map(|(f, v)| (k(f), v.to_string())));
    env
}
