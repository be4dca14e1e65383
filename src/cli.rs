//! The command line: `synchub run | check | migrate | replay | extract`, each with `--help`.

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
    /// Write one entity's change window to a file, exactly as `GET /api/v1/extracts/<entity>`
    /// would stream it (reads the store directly; no running hub needed).
    Extract(crate::extract::cli::ExtractArgs),
}
