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
        Command::Demo { duration } => {
            let mut settings = settings;
            if std::env::var_os("SYNCHUB__STORE__URL").is_none() {
                settings.store.url = "sqlite://data/demo.db".into();
            }
            let opts = synchub::demo::DemoOptions {
                duration: duration.map(std::time::Duration::from_secs),
            };
            synchub::demo::run(settings, opts, shutdown_signal()).await?;
        }
        Command::Import {
            entity,
            file,
            charset,
            dry_run,
            report_dir,
            endpoint,
            apply_timeout_secs,
        } => {
            let (endpoint, rules) = synchub::import::endpoint(&settings, endpoint.as_deref())?;
            let rules = rules.clone();
            let app = Application::assemble(settings)
                .await
                .context("Failed to open synchub")?;
            let opts = synchub::import::ImportOptions {
                endpoint,
                entity,
                file,
                charset,
                dry_run,
                report_dir: report_dir.clone(),
                apply_timeout: std::time::Duration::from_secs(apply_timeout_secs),
            };
            let report = synchub::import::run(&app, &rules, &opts).await?;
            app.store.close().await;
            println!(
                "synchub import: {} rows: {} imported, {} merged, {} rejected, {} flagged; go-live check {}; report in {}",
                report.source_rows,
                report.imported,
                report.merged,
                report.rejected,
                report.flagged,
                if report.go_live() { "PASS" } else { "FAIL" },
                report_dir.join("report.md").display()
            );
            if !report.go_live() {
                return Ok(ExitCode::from(3));
            }
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
