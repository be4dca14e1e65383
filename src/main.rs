//! Entry point: parse the command line, load settings, start logging, run the command.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use synchub::app::Application;
use synchub::cli::{Cli, Command};
use synchub::settings::{Profile, Settings};

// mimalloc: the hub allocates per message (JSON values, jq values, SQL arguments) from many
// threads; glibc malloc was a quarter of the CPU profile under load.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // One crypto provider for every rustls user (reqwest, sqlx, lapin, russh): without this, a
    // second provider pulled in by any dependency makes rustls panic at the first TLS handshake.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("synchub: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("synchub: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = cli.command.unwrap_or(Command::Run);
    if let Command::Check = command {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let profile = Profile::from_env(&env).context("Failed to read SYNCHUB_PROFILE")?;
        let problems = synchub::check::run_check(&cli.config, &env, profile);
        if problems.is_empty() {
            println!(
                "synchub check: configuration in {} is valid.",
                cli.config.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        for p in &problems {
            println!("{p}");
        }
        println!("synchub check: {} problem(s).", problems.len());
        return Ok(ExitCode::from(1));
    }
    let settings = Settings::load_from_env(&cli.config).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
        anyhow::anyhow!("configuration rejected:\n{}", lines.join("\n"))
    })?;
    synchub::telemetry::init_logging(settings.log.format, &settings.log.level);
    match command {
        Command::Run | Command::Check => {
            let app = Application::build(settings)
                .await
                .context("Failed to start synchub")?;
            app.run_until_stopped(shutdown_signal()).await?;
        }
        Command::Migrate => {
            let store = synchub::store::Store::open(&settings.store.url)
                .await
                .context("Failed to open and migrate the store")?;
            store.close().await;
            println!("synchub migrate: the store is up to date.");
        }
        Command::Replay {
            message_id,
            mapping_version,
        } => {
            // No listener: a replay runs beside a serving hub, which then delivers.
            let app = Application::assemble(settings)
                .await
                .context("Failed to open synchub")?;
            let ids = app
                .pipeline
                .replay(message_id, mapping_version)
                .await
                .with_context(|| format!("Failed to replay message {message_id}"))?;
            app.store.close().await;
            println!(
                "synchub replay: {} record(s) queued for delivery again; a running hub delivers them.",
                ids.len()
            );
        }
        Command::Extract(args) => return synchub::extract::cli::run(&settings, &args).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM, so orchestrators can stop the hub gracefully.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("Shutdown requested.");
}
