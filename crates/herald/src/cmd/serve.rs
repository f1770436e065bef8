//! `herald serve`: validate the configuration, then bind and serve.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::ArgMatches;
use herald_cluster::{Cluster, ClusterConfig, NodeId};
use herald_core::{EventId, EventLog, Hub, HubConfig};
use herald_log::redis::RedisLog;
use herald_log::{DurableLog, DurableOptions, MemoryLog, Retention};
use herald_server::{AppState, Auth, AuthConfig, ConnectionBudget, ServerConfig};

use crate::config::{Config, ConfigError, LogFormat, Validated};

/// Runs the server until SIGINT or SIGTERM.
pub(crate) fn run(args: Config, matches: &ArgMatches) -> anyhow::Result<()> {
    // Validate everything before a runtime starts or a port is bound.
    let Validated { config, listen } = Config::load(&args, matches)?;
    init_logging(&config.log, config.log_format);
    tracing::info!(
        %listen,
        config = %config.redacted(),
        "effective configuration (secrets redacted)"
    );
    let fd_limit = raise_fd_limit();
    // Event streams and the fan-out on a multi-threaded runtime (a worker per
    // core); the accept loop, publishes and admin requests on a runtime of
    // their own on this thread, so a publish is never queued behind thousands
    // of stream writes (see herald_server's accept module).
    let streams = tokio::runtime::Builder::new_multi_thread()
        .thread_name("herald-streams")
        .enable_all()
        .build()
        .context("starting the streams runtime")?;
    // One thread: publishes are short, and a single control thread costs
    // fewer thread wake-ups per request than a pool that hands work around.
    // Its blocking threads check token signatures (and trim the log): as
    // many as there are cores, since more would only take turns on them.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let control = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(cores)
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    let result = control.block_on(serve(config, listen, fd_limit, streams.handle().clone()));
    streams.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(
    config: Config,
    listen: std::net::SocketAddr,
    fd_limit: Option<usize>,
    streams: tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let (log, trim) = open_log(&config).await?;
    let hub = Hub::new(log.clone(), HubConfig::from(&config));
    // The dispatcher and the lag sampler run here, on the control thread,
    // beside the publishes: an append wakes the dispatcher without waking
    // another thread, and an event for a user is written through to its
    // socket from here, waking no other thread at all. On the streams
    // runtime the dispatcher waited behind thousands of writers catching up
    // (seconds, in a flood); offering big fan-outs there from a task of its
    // own was measured slower for a paced broadcast (p99 1.8-2.7x the floor
    // against 1.1-1.5x) than offering them here, yielding between events.
    tokio::spawn(hub.clone().run_dispatcher());
    tokio::spawn(hub.clone().run_lag_sampler());
    streams.spawn(hub.clone().run_housekeeping());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            // Trimming may delete segment files: keep it off the async workers.
            let trim = trim.clone();
            let _ = tokio::task::spawn_blocking(move || trim()).await;
        }
    });
    let auth = if config.dev {
        if AuthConfig::from(&config).has_credentials() {
            tracing::warn!("--dev: the configured keys are ignored; every request is allowed");
        }
        Auth::Dev
    } else {
        Auth::tokens(&AuthConfig::from(&config))
            .await
            .map_err(|e| ConfigError(e.to_string()))?
    };
    if let Some(refresher) = auth.background() {
        tokio::spawn(refresher);
    }
    let server_config = ServerConfig {
        fd_limit,
        ..ServerConfig::from(&config)
    };
    let shutdown = shutdown_signal()?;
    let listener = bind(listen).await?;
    let local = listener.local_addr().context("reading the bound address")?;
    let cluster = join_cluster(&config, &hub, local)?;
    let state = AppState::with_cluster(hub, log, server_config, auth, cluster.clone());
    log_budget(&config, &state.budget);
    // Tests and scripts read this line to find the port (and the scheme).
    let scheme = if config.tls_files().is_some() {
        "https"
    } else {
        "http"
    };
    println!("herald listening on {scheme}://{local}");
    if config.dev {
        // Only now: a start-up that fails should not first shout about dev mode.
        tracing::warn!(
            "DEV MODE: no authentication; anyone who can reach {local} may subscribe as any user, publish and use admin routes"
        );
        if !local.ip().is_loopback() {
            tracing::warn!(
                "DEV MODE on {local}, which is reachable from other machines: use it on trusted networks only"
            );
        }
        tracing::info!("dashboard: {scheme}://{local}/");
    }
    herald_server::serve(listener, state, streams, shutdown)
        .await
        .context("serving")?;
    if let Some(cluster) = cluster {
        // Gone from the other nodes' counts now, not after the expiry.
        cluster.leave().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Joins the cluster when `redis` is set: this node's presence and the
/// control tail run on this (the control) runtime from now on.
fn join_cluster(
    config: &Config,
    hub: &Arc<Hub>,
    local: std::net::SocketAddr,
) -> anyhow::Result<Option<Arc<Cluster>>> {
    let Some((endpoint, _)) = config
        .redis_log()
        .map_err(|(key, why)| ConfigError(format!("`{key}`: {why}")))?
    else {
        return Ok(None);
    };
    let node_id = match &config.node_id {
        // Checked when the configuration was loaded.
        Some(id) => NodeId::new(id).map_err(|e| ConfigError(format!("`node_id`: {e}")))?,
        None => NodeId::generate(local.port()),
    };
    // The event log's endpoint: each connection goes to the current
    // primary (asked of the sentinels with `redis+sentinel://`).
    let connector: herald_cluster::Connector = Arc::new(move || {
        let endpoint = endpoint.clone();
        Box::pin(async move { endpoint.connect().await })
    });
    let cluster = Cluster::start(
        hub.clone(),
        ClusterConfig {
            node_id,
            // The event log's key prefix: one hash tag for every key.
            prefix: config.redis_prefix.clone(),
            presence_expiry: Duration::from_millis(config.presence_expiry_ms),
            listen: local.to_string(),
        },
        connector,
    );
    tracing::info!(node_id = %cluster.node_id(), "cluster presence in Redis");
    Ok(Some(Arc::new(cluster)))
}

/// Raises the soft open-file limit to the hard one (every connection is a
/// descriptor, and the usual soft default of 1,024 would cap Herald far
/// below what the machine allows) and returns it; `None` when it cannot be
/// read, after a warning.
fn raise_fd_limit() -> Option<usize> {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            tracing::info!(
                fd_limit = limit,
                raised_from = before.map_or_else(|| "unknown".to_owned(), |b| b.to_string()),
                "open-file limit"
            );
            Some(limit)
        }
        Err(err) => {
            tracing::warn!(%err, "the open-file limit could not be read or raised: connections are bounded by --max-connections alone");
            None
        }
    }
}

/// Says how the descriptors are shared out, and warns when an explicitly
/// configured `max_connections` does not fit under the limit.
fn log_budget(config: &Config, budget: &ConnectionBudget) {
    let Some(fd_limit) = budget.fd_limit else {
        return;
    };
    if budget.streams < config.max_connections {
        let reserve = ConnectionBudget::reserve(fd_limit);
        // A value other than the default was asked for by someone.
        if config.max_connections == ServerConfig::DEFAULT_MAX_CONNECTIONS {
            tracing::info!(
                max_connections = budget.streams,
                fd_limit,
                reserve,
                "max_connections lowered to fit the open-file limit (the reserve is kept for publishers, admin and health checks)"
            );
        } else {
            tracing::warn!(
                configured = config.max_connections,
                max_connections = budget.streams,
                fd_limit,
                reserve,
                "max_connections is above what the open-file limit allows: lowered (raise the hard limit, e.g. LimitNOFILE= or ulimit -Hn, to allow more)"
            );
        }
    }
}

/// Retention work the log wants done every second.
type Trim = Arc<dyn Fn() + Send + Sync>;

/// Binds the listening socket; an address in use gets a message saying what
/// to do about it.
async fn bind(listen: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    match listen_socket(listen) {
        Ok(listener) => Ok(listener),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => Err(anyhow::anyhow!(
            "binding {listen}: the address is already in use (another Herald, or another \
             program, is listening there); stop it or choose another address with \
             --listen ADDR:PORT (or HERALD_LISTEN)"
        )),
        Err(err) => Err(err).with_context(|| format!("binding {listen}")),
    }
}

/// Room for connections the kernel has accepted and Herald not yet: a
/// reconnect storm (every client of a restarted node at once) overflows the
/// usual 128, and each overflowed SYN waits a full second to be retried. The
/// kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

fn listen_socket(listen: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's bind does: a restarted Herald can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The event log the configuration asks for: in memory, or durable in the data
/// directory (the default).
async fn open_log(config: &Config) -> anyhow::Result<(Arc<dyn EventLog>, Trim)> {
    let redis = config
        .redis_log()
        .map_err(|(key, why)| ConfigError(format!("`{key}`: {why}")))?;
    if let Some((endpoint, options)) = redis {
        let log = Arc::new(RedisLog::new(endpoint, options));
        // A node comes up while Redis is down for a moment: it serves
        // (publishes answer 503, /readyz fails) and catches up once Redis
        // answers.
        match log.connect().await {
            Ok(()) => tracing::info!(
                redis = %log.endpoint(),
                prefix = %config.redis_prefix,
                durability = %config.redis_durability,
                newest_id = %shown(log.last_fetched()),
                "event log on Redis"
            ),
            Err(err) => tracing::error!(
                redis = %log.endpoint(),
                %err,
                "Redis is not reachable at start-up: serving anyway; publishes answer 503 and /readyz fails until it is"
            ),
        }
        // Retention is applied by the append script itself.
        return Ok((log, Arc::new(|| {})));
    }
    if config.memory {
        tracing::warn!("--memory: events are kept in memory only and lost on restart");
        let log = Arc::new(MemoryLog::new(Retention::from(config)));
        let trimmed = log.clone();
        return Ok((log, Arc::new(move || trimmed.trim())));
    }
    let log = DurableLog::open(&config.data_dir, DurableOptions::from(config))
        .with_context(|| format!("opening the event log in {}", config.data_dir.display()))?;
    let report = log.recovery_report();
    tracing::info!(
        data_dir = %config.data_dir.display(),
        durability = %config.durability,
        events = report.events,
        segments = report.segments,
        first_id = %shown(report.first_id),
        last_id = %shown(report.last_id),
        "event log opened"
    );
    if !report.is_clean() {
        tracing::warn!(
            dropped_bytes = report.dropped_bytes,
            dropped_after_id = %shown(report.dropped_at_id),
            damaged_bytes = report.damaged_bytes,
            notes = %report.notes.join("; "),
            "the event log was repaired at start-up: torn tails (never acknowledged) were cut, damaged records and stray files set aside"
        );
    }
    let log = Arc::new(log);
    let trimmed = log.clone();
    Ok((log, Arc::new(move || trimmed.trim())))
}

/// An id as logs show it: the id, or `none`.
fn shown(id: Option<EventId>) -> String {
    id.map_or_else(|| "none".to_owned(), |id| id.to_string())
}

/// Registers for SIGINT and SIGTERM now (so a signal that arrives before the
/// accept loop first polls the future is not the default "terminate"), and
/// returns a future that resolves on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        tracing::info!("shutting down");
    })
}

/// Logs to stderr, as text for people or one JSON object per line. At
/// `info` nothing is logged per event or per stream (stream opens and closes
/// are `debug`, in `herald_core::hub`), so the volume follows what operators
/// do, not the traffic.
fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
}
