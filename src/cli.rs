//! The command line: `synchub run | check | migrate | replay | import | extract | demo`, each
//! with `--help`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "synchub",
    version,
    about = "Integration hub: journal, route, map and deliver business data between systems."
)]
pub struct Cli {
    /// Configuration directory (synchub.toml, synchub.<profile>.toml, endpoints/). Routes and
    /// mappings are found beside it (../routes, ../mappings) unless configured otherwise.
    #[arg(long, global = true, default_value = "config", env = "SYNCHUB_CONFIG")]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve: HTTP API and partner endpoints, dispatcher (the default command).
    Run,
    /// Validate configuration, endpoints, routes and mappings (running every mapping test);
    /// print every problem with file and key path; exit 1 if there is any.
    Check,
    /// Create or upgrade the store's tables, then exit.
    Migrate,
    /// Queue a journaled message for delivery again (optionally through another mapping version).
    Replay {
        /// The message id (a transport unit replays all its accepted records).
        message_id: uuid::Uuid,
        /// Map with this version instead of the route's.
        #[arg(long)]
        mapping_version: Option<u32>,
    },
    /// Run the hub with built-in partner simulators (website, call centre, DMS, OSM) on its own
    /// store (`data/demo.db` unless SYNCHUB__STORE__URL is set), so every flow moves at once.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Migrate legacy customers, vehicles or dealers from a CSV file into the CRM store with
    /// the cleansing rules of the `import` endpoint; writes a validation report. Run it again
    /// with the same file to resume an interrupted import. Exit code 0 when the report's
    /// go-live check passes, 3 when it fails.
    Import {
        /// What the file holds.
        #[arg(long, value_enum)]
        entity: crate::import::ImportEntity,
        /// The CSV file (header row first).
        file: PathBuf,
        /// `utf-8` or `gb18030` (default: the endpoint's `charset`).
        #[arg(long, value_parser = parse_charset)]
        charset: Option<synchub_adapter_sftp::Charset>,
        /// Analyse and write the report only; the store is not changed.
        #[arg(long)]
        dry_run: bool,
        /// Where report.md, report.html, rejected.csv and flagged.csv go.
        #[arg(long, default_value = "import-report")]
        report_dir: PathBuf,
        /// The `type = "import"` endpoint whose rules apply (default: the only one).
        #[arg(long)]
        endpoint: Option<String>,
        /// Seconds to wait for the CRM store to apply the journaled rows.
        #[arg(long, default_value_t = 600)]
        apply_timeout_secs: u64,
    },
    /// Write one entity's change window to a file, exactly as `GET /api/v1/extracts/<entity>`
    /// would stream it (reads the store directly; no running hub needed).
    Extract(crate::extract::cli::ExtractArgs),
}

fn parse_charset(s: &str) -> Result<synchub_adapter_sftp::Charset, String> {
    match s.to_ascii_lowercase().as_str() {
        "utf-8" | "utf8" => Ok(synchub_adapter_sftp::Charset::Utf8),
        "gb18030" | "gbk" => Ok(synchub_adapter_sftp::Charset::Gb18030),
        other => Err(format!("unknown charset `{other}`: utf-8 or gb18030")),
    }
}
