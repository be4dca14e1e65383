//! Builds and runs the whole hub from `Settings`: store, mappings, routes, pipeline, outbound
//! adapters, dispatcher and HTTP server. `main` and the end-to-end tests share this code, so the
//! tests run exactly what production runs (on port 0, against a private store).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use synchub_adapter_amqp::{AmqpConfig, AmqpInbound, AmqpOutbound, Link, LinkEvent};
use synchub_adapter_rest::{ApiKey, InboundConfig, RestOutbound, RestOutboundConfig};
use synchub_adapter_sdk::{Inbox, Outbound, Principal};
use synchub_adapter_soap::{SoapInboundConfig, SoapOutbound, SoapOutboundConfig};
use synchub_transform::jq::Mappings;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::dispatch::Dispatcher;
use crate::http::AppState;
use crate::http::auth::Operators;
use crate::pipeline::Pipeline;
use crate::routing::RouteTable;
use crate::settings::{AmqpEndpoint, AmqpQueueType, Direction, EndpointConfig, Settings};
use crate::status::EndpointStates;
use crate::store::Store;

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    dispatcher: Arc<Dispatcher>,
    store: Store,
    pipeline: Arc<Pipeline>,
    purge: PurgeJob,
    dispatch_enabled: bool,
    links: Vec<Arc<Link>>,
    consumers: Vec<Arc<AmqpInbound>>,
    sftp: Arc<crate::sftp::SftpEndpoints>,
    metrics_refresh: std::time::Duration,
    pushes: Vec<Arc<crate::extract::push::PushJob>>,
    escalation: Option<crate::crm::escalation::EscalationJob>,
}

/// Drops raw payloads of finished messages after the retention period, on a cron schedule.
/// Metadata, keys, deliveries and attempts stay, so the message is still searchable and its
/// history readable; only replay needs the payload.
pub struct PurgeJob {
    store: Store,
    schedule: croner::Cron,
    retention_days: u32,
    /// `0`: the extract change log is never compacted.
    changes_retention_days: u32,
}

impl PurgeJob {
    pub fn new(store: Store, schedule: croner::Cron, retention_days: u32) -> PurgeJob {
        PurgeJob {
            store,
            schedule,
            retention_days,
            changes_retention_days: 0,
        }
    }

    /// Also compacts the extract change log past `days` (see [`crate::extract::changes::compact`]).
    pub fn with_changes_retention_days(mut self, days: u32) -> PurgeJob {
        self.changes_retention_days = days;
        self
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let now = chrono::Utc::now();
            let Ok(next) = self.schedule.find_next_occurrence(&now, false) else {
                tracing::error!("The purge schedule has no next occurrence; purging is off.");
                return;
            };
            let wait = (next - now).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if !crate::schedule::ours(&self.store, "purge", next.timestamp_millis()).await {
                continue;
            }
            let week_ago = crate::store::now_ms() - 7 * 86_400_000;
            if let Err(e) = crate::schedule::forget_before(&self.store, week_ago).await {
                tracing::warn!(error = %e, "Could not drop old schedule ticks.");
            }
            match self.purge_once().await {
                Ok(n) => tracing::info!(
                    messages = n,
                    days = self.retention_days,
                    "Purged payloads past retention."
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "Payload purge failed; it runs again at the next schedule.")
                }
            }
            match self.compact_changes_once().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    versions = n,
                    days = self.changes_retention_days,
                    "Compacted superseded versions out of the extract change log."
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "Change-log compaction failed; it runs again at the next schedule.")
                }
            }
        }
    }

    /// Drops superseded CRM versions older than the change log's retention from the extract
    /// change log; nothing when the retention is 0.
    pub async fn compact_changes_once(&self) -> Result<u64, crate::store::StoreError> {
        if self.changes_retention_days == 0 {
            return Ok(0);
        }
        let cutoff = crate::store::now_ms() - i64::from(self.changes_retention_days) * 86_400_000;
        crate::extract::changes::compact(&self.store, cutoff).await
    }

    /// Empties the bodies of messages older than the retention period whose deliveries are all
    /// finished (open work keeps its payload whatever its age).
    pub async fn purge_once(&self) -> Result<u64, crate::store::StoreError> {
        let cutoff = crate::store::now_ms() - i64::from(self.retention_days) * 86_400_000;
        self.store
            .write(move |c| {
                Box::pin(async move {
                    let n = sqlx::query(
                        "UPDATE messages SET body = $1, headers = $2 WHERE received_at < $3 AND length(body) > 0 \
                         AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = messages.id \
                         AND d.status IN ('pending','in_flight','parked'))",
                    )
                    .bind(Vec::<u8>::new())
                    .bind(r#"{"purged":"payload dropped after the retention period"}"#)
                    .bind(cutoff)
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                    // The overview looks back one day; a second day is margin for clock skew.
                    crate::store::stats::purge(c, crate::store::now_ms() - 2 * 86_400_000)
                        .await?;
                    Ok(n)
                })
            })
            .await
    }
}

fn problems_to_error<P: std::fmt::Display>(what: &str, problems: &[P]) -> anyhow::Error {
    let lines: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
    anyhow!(
        "{what} ({} problems):\n{}",
        problems.len(),
        lines.join("\n")
    )
}

/// Resolves a secret named by `*_env` from the environment; never logged.
fn secret_from_env(var: &Option<String>) -> anyhow::Result<Option<String>> {
    match var {
        Some(v) => std::env::var(v)
            .map(Some)
            .with_context(|| format!("Failed to read the secret from environment variable {v}")),
        None => Ok(None),
    }
}

/// Everything but the listener: what `run` serves, and what `replay` needs without binding a port.
pub struct Assembled {
    pub router: axum::Router,
    pub dispatcher: Arc<Dispatcher>,
    pub store: Store,
    pub pipeline: Arc<Pipeline>,
    pub purge: PurgeJob,
    pub dispatch_enabled: bool,
    /// Broker connections to keep up while running.
    pub links: Vec<Arc<Link>>,
    /// AMQP consumers to run while running.
    pub consumers: Vec<Arc<AmqpInbound>>,
    /// SFTP endpoints; the enabled inbound ones poll while running.
    pub sftp: Arc<crate::sftp::SftpEndpoints>,
    /// How often the flow gauges are re-read.
    pub metrics_refresh: std::time::Duration,
    /// Scheduled extract pushes (IF-09b) to run while running.
    pub pushes: Vec<Arc<crate::extract::push::PushJob>>,
    /// The lead escalation job, when lead rules are configured and escalation is enabled.
    pub escalation: Option<crate::crm::escalation::EscalationJob>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let listen = settings.http.listen.clone();
        let a = Self::assemble(settings).await?;
        let listener = TcpListener::bind(&listen)
            .await
            .with_context(|| format!("Failed to listen on {listen}"))?;
        Ok(Application {
            listener,
            router: a.router,
            dispatcher: a.dispatcher,
            store: a.store,
            pipeline: a.pipeline,
            purge: a.purge,
            dispatch_enabled: a.dispatch_enabled,
            links: a.links,
            consumers: a.consumers,
            sftp: a.sftp,
            metrics_refresh: a.metrics_refresh,
            pushes: a.pushes,
            escalation: a.escalation,
        })
    }

    /// Validates the settings, loads mappings and routes, opens (and migrates) the store and
    /// wires the pipeline, adapters and dispatcher.
    pub async fn assemble(settings: Settings) -> anyhow::Result<Assembled> {
        let problems = settings.validate();
        if !problems.is_empty() {
            return Err(problems_to_error("Configuration rejected", &problems));
        }
        let mappings = Mappings::load(&settings.mappings_dir()).map_err(|p| {
            problems_to_error(
                "Mappings failed to load",
                &p.iter()
                    .map(|p| format!("{}: {}: {}", p.file.display(), p.key_path, p.message))
                    .collect::<Vec<_>>(),
            )
        })?;
        let mappings = Arc::new(mappings);
        let routes = Arc::new(
            RouteTable::compile(&settings, &mappings)
                .map_err(|p| problems_to_error("Routes rejected", &p))?,
        );
        let store = Store::open(&settings.store.url).await.with_context(|| {
            format!(
                "Failed to open the store at {}",
                redact_url(&settings.store.url)
            )
        })?;
        if settings.profile == crate::settings::Profile::Local {
            let seeded = store
                .write(|c| Box::pin(crate::crm::seed_demo_dealers(c)))
                .await
                .context("Failed to seed the demo dealers")?;
            if seeded > 0 {
                tracing::info!(dealers = seeded, "Seeded the local profile's demo dealers.");
            }
        }
        let wake = Arc::new(Notify::new());
        let status = Arc::new(EndpointStates::default());
        let pipeline = Arc::new(Pipeline::new(
            store.clone(),
            routes.clone(),
            mappings.clone(),
            &settings,
            wake.clone(),
            status.clone(),
        ));

        let mut outbounds: HashMap<String, Arc<dyn Outbound>> = HashMap::new();
        let mut crm = HashMap::new();
        let mut partner_routes = axum::Router::new();
        let mut endpoint_kinds = Vec::new();
        let mut links = Vec::new();
        let mut consumers = Vec::new();
        let mut sftp = crate::sftp::SftpEndpoints::default();
        let pushes = crate::extract::push::from_settings(&settings, &store);
        partner_routes = partner_routes.merge(crate::extract::http::router(
            crate::extract::http::ExtractState::new(store.clone(), &settings, pushes.clone()),
        ));
        let link_status = status.clone();
        let observer: synchub_adapter_amqp::Observer = Arc::new(move |id, ev| match ev {
            LinkEvent::Up => link_status.connection(id, Ok(())),
            LinkEvent::Down { error } => link_status.connection(id, Err(error)),
        });
        for (id, ep) in &settings.endpoints {
            match ep {
                EndpointConfig::Soap(x) if x.direction == Direction::Out && !x.enabled => {
                    outbounds.insert(
                        id.clone(),
                        Arc::new(crate::disabled::DisabledOutbound::new(id.clone())),
                    );
                    sftp.mark_disabled(id);
                    endpoint_kinds.push((id.clone(), "soap out".to_string()));
                }
                EndpointConfig::Soap(x) if x.direction == Direction::Out => {
                    let password = x
                        .password_env
                        .as_deref()
                        .and_then(|var| settings.secrets.get(var))
                        .map(|s| secrecy::ExposeSecret::expose_secret(s).to_string())
                        .unwrap_or_default();
                    let mut cfg = SoapOutboundConfig::new(
                        x.url.clone().unwrap_or_default(),
                        x.username.clone().unwrap_or_default(),
                        password,
                    );
                    cfg.timeout_ms = x.timeout_ms;
                    let out = SoapOutbound::new(cfg)
                        .with_context(|| format!("Failed to build endpoint {id}"))?;
                    outbounds.insert(id.clone(), Arc::new(out));
                    endpoint_kinds.push((id.clone(), "soap out".to_string()));
                }
                EndpointConfig::Soap(x) => {
                    let mut cfg = SoapInboundConfig::new(id.clone());
                    cfg.max_body_bytes = x.max_body_bytes;
                    cfg.public_url = x.public_url.clone();
                    for u in &settings.auth.soap_users {
                        let password = match (&u.password, &u.password_env) {
                            (Some(p), _) => p.clone(),
                            (None, Some(var)) => settings
                                .secrets
                                .get(var)
                                .map(|s| secrecy::ExposeSecret::expose_secret(s).to_string())
                                .with_context(|| {
                                    format!("SOAP user {}: {var} is not set", u.username)
                                })?,
                            (None, None) => continue,
                        };
                        cfg = cfg.with_user(
                            &u.username,
                            &password,
                            Principal {
                                system: u.system.clone(),
                                dealer_code: None,
                            },
                        );
                    }
                    let problems = cfg.validate();
                    if !problems.is_empty() {
                        return Err(problems_to_error(
                            &format!("Endpoint {id} rejected"),
                            &problems,
                        ));
                    }
                    let inbox: Arc<dyn Inbox> = pipeline.clone();
                    partner_routes = partner_routes.merge(synchub_adapter_soap::router(cfg, inbox));
                    endpoint_kinds.push((id.clone(), "soap in".to_string()));
                }
                EndpointConfig::Amqp(a) => {
                    let link = Link::new(amqp_config(id, a)?, Some(observer.clone()));
                    links.push(link.clone());
                    match a.direction {
                        Direction::Out => {
                            outbounds.insert(id.clone(), Arc::new(AmqpOutbound::new(link)));
                            endpoint_kinds.push((id.clone(), "amqp out".to_string()));
                        }
                        Direction::In => {
                            let inbox: Arc<dyn Inbox> = pipeline.clone();
                            consumers.push(Arc::new(AmqpInbound::new(link, inbox)));
                            endpoint_kinds.push((id.clone(), "amqp in".to_string()));
                        }
                    }
                }
                EndpointConfig::Rest(r) if r.direction == Direction::Out => {
                    let mut cfg = RestOutboundConfig::new(r.url.clone().unwrap_or_default());
                    cfg.timeout_ms = r.timeout_ms;
                    cfg.method = r.method;
                    cfg.headers = r.headers.clone();
                    cfg.bearer_token = secret_from_env(&r.bearer_token_env)?;
                    let out = RestOutbound::new(cfg)
                        .with_context(|| format!("Failed to build endpoint {id}"))?;
                    outbounds.insert(id.clone(), Arc::new(out));
                    endpoint_kinds.push((id.clone(), "rest out".to_string()));
                }
                EndpointConfig::Rest(_) => {
                    let mut cfg = InboundConfig::new(id.clone());
                    cfg.max_body_bytes = settings.http.max_body_bytes;
                    cfg.max_records = settings.http.max_records;
                    cfg.api_keys = settings
                        .auth
                        .api_keys
                        .iter()
                        .map(|k| ApiKey {
                            sha256: k.key_sha256.to_ascii_lowercase(),
                            principal: Principal {
                                system: k.system.clone(),
                                dealer_code: k.dealer_code.clone(),
                            },
                        })
                        .collect();
                    let inbox: Arc<dyn Inbox> = pipeline.clone();
                    partner_routes = partner_routes.merge(synchub_adapter_rest::router(cfg, inbox));
                    endpoint_kinds.push((id.clone(), "rest in".to_string()));
                }
                EndpointConfig::Sftp(s) => {
                    endpoint_kinds.push((id.clone(), crate::sftp::kind(s).to_string()));
                    if let Some(out) =
                        sftp.add(id, s, &settings, pipeline.clone(), &store, status.clone())
                    {
                        outbounds.insert(id.clone(), out);
                    }
                }
                EndpointConfig::CrmStore(c) => {
                    crm.insert(id.clone(), c.key_field_approval);
                    endpoint_kinds.push((id.clone(), "crm store".to_string()));
                }
                // Read by `synchub import`, which hands its rows to the pipeline itself.
                EndpointConfig::Import(_) => {
                    endpoint_kinds.push((id.clone(), "import".to_string()));
                }
            }
        }
        let sftp = Arc::new(sftp);
        let lead_rules = settings.lead_rules.clone().map(Arc::new);
        if lead_rules.is_none() {
            tracing::warn!(
                "No lead rules in config/rules/: leads are stored but neither scored nor distributed."
            );
        }
        let escalation = lead_rules
            .clone()
            .filter(|r| r.distribution.escalation.enabled)
            .map(|r| {
                crate::crm::escalation::EscalationJob::new(store.clone(), pipeline.clone(), r)
            });
        let dispatcher = Arc::new(
            Dispatcher::new(
                store.clone(),
                pipeline.clone(),
                outbounds,
                crm,
                settings.dispatch.clone(),
                wake,
                status.clone(),
            )
            .with_lead_rules(lead_rules),
        );
        let state = AppState {
            store: store.clone(),
            pipeline: pipeline.clone(),
            operators: Arc::new(Operators::from_config(&settings.auth.operators)),
            prometheus: crate::telemetry::prometheus(),
            route_ids: Arc::new(routes.routes().iter().map(|r| r.id.clone()).collect()),
            endpoints: Arc::new(endpoint_kinds),
            endpoint_state: status,
            sftp: sftp.clone(),
            ui: Arc::new(settings.ui.clone()),
        };
        let router = crate::http::router(state, partner_routes)
            .layer(CatchPanicLayer::new())
            .layer(TraceLayer::new_for_http());
        let purge = PurgeJob::new(
            store.clone(),
            crate::settings::parse_cron(&settings.store.purge_schedule)
                .map_err(|e| anyhow!("store.purge_schedule: {e}"))?,
            settings.store.payload_retention_days,
        )
        .with_changes_retention_days(settings.store.changes_retention_days);
        Ok(Assembled {
            router,
            dispatcher,
            store,
            pipeline,
            purge,
            dispatch_enabled: settings.dispatch.enabled,
            links,
            consumers,
            sftp,
            metrics_refresh: std::time::Duration::from_secs(
                settings.http.metrics_refresh_secs.max(1),
            ),
            pushes,
            escalation,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn dispatcher(&self) -> Arc<Dispatcher> {
        self.dispatcher.clone()
    }

    pub fn pipeline(&self) -> Arc<Pipeline> {
        self.pipeline.clone()
    }

    /// Serves until `shutdown` resolves, then stops taking requests, lets in-flight attempts
    /// finish and closes the store (the SQLite writer commits what it has queued).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Links stop last: consumers still ack what they journaled while shutting down.
        let (link_stop_tx, link_stop_rx) = watch::channel(false);
        let links: Vec<_> = self
            .links
            .iter()
            .map(|l| tokio::spawn(l.clone().run(link_stop_rx.clone())))
            .collect();
        let consumers: Vec<_> = self
            .consumers
            .iter()
            .map(|c| tokio::spawn(c.clone().run(stop_rx.clone())))
            .collect();
        let pollers = self.sftp.spawn(&stop_rx);
        for p in &self.pushes {
            tokio::spawn(p.clone().run(stop_rx.clone()));
        }
        let dispatcher = if self.dispatch_enabled {
            tokio::spawn(self.dispatcher.clone().run(stop_rx.clone()))
        } else {
            tracing::warn!(
                "Dispatching is disabled (dispatch.enabled = false): messages are journaled but not delivered."
            );
            tokio::spawn(async {})
        };
        tokio::spawn(self.purge.run(stop_rx.clone()));
        tokio::spawn(crate::monitor::run(
            self.store.clone(),
            self.metrics_refresh,
            self.pipeline
                .routes()
                .routes()
                .iter()
                .map(|r| r.id.clone())
                .collect(),
            crate::telemetry::prometheus(),
            stop_rx.clone(),
        ));
        if let Some(job) = self.escalation {
            tokio::spawn(job.run(stop_rx.clone()));
        }
        tokio::spawn(
            self.dispatcher
                .clone()
                .watch_endpoints(std::time::Duration::from_secs(30), stop_rx),
        );
        tracing::info!(listen = %self.listener.local_addr()?, "synchub is serving.");
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed")?;
        let _ = stop_tx.send(true);
        let _ = dispatcher.await;
        for c in consumers {
            let _ = c.await;
        }
        for p in pollers {
            let _ = p.await;
        }
        let _ = link_stop_tx.send(true);
        for l in links {
            let _ = l.await;
        }
        self.store.close().await;
        tracing::info!("synchub stopped.");
        Ok(())
    }
}

/// The adapter's configuration for an `amqp` endpoint: names with the endpoint's prefix, the
/// password from its secret variable.
pub(crate) fn amqp_config(id: &str, a: &AmqpEndpoint) -> anyhow::Result<AmqpConfig> {
    let url = match secret_from_env(&a.password_env)? {
        Some(pw) => with_password(&a.url, &pw)
            .with_context(|| format!("endpoint {id}: cannot put the password into url"))?,
        None => a.url.clone(),
    };
    let mut cfg = AmqpConfig::new(id, url);
    let p = &a.name_prefix;
    if !p.is_empty() {
        cfg.connection_name = format!("synchub:{id}:{p}");
    }
    for name in [
        &mut cfg.dealer_exchange,
        &mut cfg.inbound_exchange,
        &mut cfg.dead_letter_exchange,
        &mut cfg.dead_letter_queue,
    ] {
        *name = format!("{p}{name}");
    }
    cfg.queue_type = match a.queue_type {
        AmqpQueueType::Quorum => synchub_adapter_amqp::QueueType::Quorum,
        AmqpQueueType::Classic => synchub_adapter_amqp::QueueType::Classic,
    };
    cfg.prefetch = a.prefetch;
    cfg.queue_expires = a.queue_expires_ms.map(std::time::Duration::from_millis);
    if let Some(k) = &a.routing_key {
        cfg.routing_key = k.clone();
    }
    cfg.confirm_timeout = std::time::Duration::from_millis(a.confirm_timeout_ms);
    if a.direction == Direction::In {
        cfg.bindings = match &a.queues {
            Some(qs) => qs
                .iter()
                .map(|q| synchub_adapter_amqp::Binding {
                    queue: q.queue.clone(),
                    routing_key: q.routing_key.clone(),
                    record_type: q.record_type.clone(),
                })
                .collect(),
            None => AmqpConfig::reference_bindings(),
        };
        for b in &mut cfg.bindings {
            b.queue = format!("{p}{}", b.queue);
        }
    }
    Ok(cfg)
}

/// `amqp://user@host/...` with `password` percent-encoded into the user info.
fn with_password(url: &str, password: &str) -> anyhow::Result<String> {
    let scheme_end = url.find("://").context("no scheme")? + 3;
    let at = url[scheme_end..]
        .find('@')
        .map(|i| i + scheme_end)
        .context("url names no user (amqp://user@host)")?;
    let user = url[scheme_end..at].split(':').next().unwrap_or_default();
    let mut enc = String::new();
    for b in password.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(format!("{}{user}:{enc}{}", &url[..scheme_end], &url[at..]))
}

/// A store URL with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
