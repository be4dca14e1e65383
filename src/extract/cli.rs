//! `synchub extract`: one entity's change window written to a file by hand, through the same
//! window and rendering code as the extract API, so the file equals the API's body byte for byte.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{Charset, Format, Window};
use crate::settings::Settings;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct ExtractArgs {
    /// customers, vehicles, dealers, leads, lead_results, campaigns or campaign_results.
    #[arg(long)]
    pub entity: String,
    /// Exclusive start cursor (0 = from the beginning), e.g. the last run's `to_cursor`.
    #[arg(long, default_value = "0")]
    pub since: String,
    /// Inclusive end cursor (default: everything final now).
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many rows.
    #[arg(long)]
    pub limit: Option<u64>,
    /// csv or ndjson.
    #[arg(long, default_value = "csv")]
    pub format: String,
    /// utf-8, or gb18030 for legacy CSV consumers.
    #[arg(long, default_value = "utf-8")]
    pub charset: String,
    /// File to write (written as <FILE>.part, renamed when complete).
    #[arg(long)]
    pub out: PathBuf,
}

/// Exit codes: 0 written, 2 bad arguments, 1 store or file failure.
pub async fn run(settings: &Settings, a: &ExtractArgs) -> anyhow::Result<ExitCode> {
    let usage = |msg: String| {
        eprintln!("synchub extract: {msg}");
        Ok(ExitCode::from(2))
    };
    let Some(entity) = super::entity(&a.entity) else {
        return usage(format!(
            "unknown entity '{}'; entities are: {}",
            a.entity,
            super::entity_names().join(", ")
        ));
    };
    let since = match super::parse_cursor("--since", &a.since) {
        Ok(v) => v,
        Err(e) => return usage(e),
    };
    let until = match a
        .until
        .as_deref()
        .map(|u| super::parse_cursor("--until", u))
    {
        Some(Err(e)) => return usage(e),
        Some(Ok(u)) if u < since => {
            return usage(format!("--until ({u}) must not be below --since ({since})"));
        }
        other => other.and_then(Result::ok),
    };
    let format = match Format::parse(&a.format) {
        Ok(f) => f,
        Err(e) => return usage(e),
    };
    let charset = match Charset::parse(&a.charset) {
        Ok(Charset::Gb18030) if format != Format::Csv => {
            return usage("--charset gb18030 is for --format csv only".into());
        }
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    let store = Store::open(&settings.store.url)
        .await
        .context("Failed to open the store")?;
    let result = write(
        &store, entity, since, until, a.limit, format, charset, &a.out,
    )
    .await;
    store.close().await;
    let (rows, end) = result?;
    println!(
        "synchub extract: {rows} {} row(s) from cursor {since} to {end} written to {}; next cursor {end}",
        entity.name,
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
async fn write(
    store: &Store,
    entity: &'static super::Entity,
    since: i64,
    until: Option<i64>,
    limit: Option<u64>,
    format: Format,
    charset: Charset,
    out: &std::path::Path,
) -> anyhow::Result<(u64, i64)> {
    let window = Window::resolve(store, entity, since, until, limit)
        .await
        .context("Failed to read the change log")?;
    let end = window.end;
    let part = PathBuf::from(format!("{}.part", out.display()));
    let mut file = tokio::fs::File::create(&part)
        .await
        .with_context(|| format!("Failed to create {}", part.display()))?;
    let (mut rows, count) = super::stream(store.clone(), window, format, charset);
    while let Some(chunk) = rows.next().await {
        let chunk = chunk.context("Failed to read the change log")?;
        file.write_all(&chunk)
            .await
            .with_context(|| format!("Failed to write {}", part.display()))?;
    }
    file.sync_all()
        .await
        .with_context(|| format!("Failed to write {}", part.display()))?;
    drop(file);
    tokio::fs::rename(&part, out)
        .await
        .with_context(|| format!("Failed to rename {} to {}", part.display(), out.display()))?;
    Ok((count.get(), end))
}
