//! Assembles the Pingora server (public listener, admin listener) and runs it until a signal.
//!
//! Signals are ours, not Pingora's defaults: Pingora treats SIGINT as a fast shutdown that
//! drops requests in flight, and its graceful shutdown sleeps the whole grace period even when
//! nothing is in flight. Here SIGTERM and SIGINT both stop accepting and let requests in flight
//! finish; [`Options::on_drained`] is called as soon as none is left (the binary exits 0 there,
//! rather than sit out Pingora's grace period), and [`run`] itself returns once Pingora is
//! done (at the latest after `timeouts.shutdown_grace`). SIGHUP reloads the config file; the
//! file is read and checked (DNS lookups, PEM files) on a blocking thread, off the runtime.
//!
//! This is also where the parts are wired together: the replay guard is built here (its store
//! outlives config reloads) and handed to the gateway; the admin listener reads its size.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::{AdminApp, Health};
use crate::config::{self, Config, ConfigErrors};
use crate::metrics::Metrics;
use crate::proxy::{Gateway, GatewayApp};
use crate::replay::ReplayGuard;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot start the replay store client: {0}")]
    ReplayStore(std::io::Error),
    #[error("cannot start the spool: {0}")]
    Spool(String),
}

/// How a server is told to stop and reload, and what happens once it has drained.
pub struct Options {
    /// The file SIGHUP reloads.
    pub config_path: PathBuf,
    /// Listen for SIGHUP, SIGTERM and SIGINT (the binary); in-process tests do not.
    pub signals: bool,
    /// Stops the server as SIGTERM would, when it fires (or when its sender is dropped).
    pub stop: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Called once, on a thread of its own, when no request is in flight after a stop (or
    /// when the grace period ends). The binary flushes its log and exits 0 there.
    pub on_drained: Option<Box<dyn FnOnce() + Send>>,
}

impl Options {
    /// Signals on, nothing else: what the binary runs with (plus its `on_drained`).
    pub fn signals(config_path: PathBuf) -> Self {
        Options {
            config_path,
            signals: true,
            stop: None,
            on_drained: None,
        }
    }
}

/// Runs hookguard until it is told to stop. Returns once shutdown is complete.
pub fn run(config: Config, options: Options) -> Result<(), StartError> {
    // Pingora panics in a service thread when it cannot bind; find out here, with a message.
    check_bindable(config.listen, "listen")?;
    check_bindable(config.admin_listen, "admin_listen")?;

    let metrics = Metrics::new();
    // A reservation lives while its request is in flight; this bounds it should its holder
    // ever vanish.
    let t = &config.timeouts;
    let hold = t.upstream_connect + t.upstream_read * 2 + Duration::from_secs(10);
    let replay = ReplayGuard::with_settings(&config.replay, hold, metrics.replay_error_sink())
        .map_err(StartError::ReplayStore)?;
    let replay = Arc::new(replay);
    // Background work (the spool's deliveries) runs on a runtime of its own, beside Pingora's.
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("hookguard-background")
        .enable_all()
        .build()
        .map_err(|e| StartError::Spool(e.to_string()))?;
    let spool = match &config.spool {
        Some(settings) => Some(start_spool(settings, &config, &metrics, &background)?),
        None => None,
    };
    let gateway = Gateway::new(
        config.clone(),
        Arc::clone(&replay),
        spool.clone(),
        Arc::clone(&metrics),
    );
    let health = Arc::new(Health::default());

    let conf = ServerConf {
        threads: config.threads,
        // Our signal handler exits as soon as the last request in flight is done; this is
        // only the upper bound.
        grace_period_seconds: Some(config.timeouts.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        // One single-threaded runtime per thread: no cross-thread task stealing on the
        // request path.
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut public = Service::new("hookguard".to_owned(), GatewayApp(Arc::clone(&gateway)));
    public.add_tcp(&config.listen.to_string());
    public.threads = Some(config.threads);

    let mut admin = Service::new(
        "hookguard-admin".to_owned(),
        HttpServer::new_app(AdminApp {
            health: Arc::clone(&health),
            replay_entries: Box::new(move || replay.len()),
            spool: spool.as_ref().map(|s| s.store.clone()),
            spool_token: config.spool.as_ref().and_then(|s| s.admin_token.clone()),
            metrics: Arc::clone(&metrics),
        }),
    );
    admin.add_tcp(&config.admin_listen.to_string());
    admin.threads = Some(1);

    server.add_service(public);
    server.add_service(admin);

    tracing::info!(
        listen = %config.listen,
        admin_listen = %config.admin_listen,
        threads = config.threads,
        routes = config.routes.len(),
        "hookguard starting"
    );
    tracing::info!("{}", config.replay.summary());
    for route in config.routes.iter() {
        tracing::info!("{}", route.summary());
    }

    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            config_path: options.config_path,
            signals: options.signals,
            stop: std::sync::Mutex::new(options.stop),
            on_drained: std::sync::Mutex::new(options.on_drained),
            gateway,
            health,
            metrics,
        }),
    });
    tracing::info!("hookguard stopped");
    // The background runtime may be dropped from here (this thread is not async).
    background.shutdown_background();
    Ok(())
}

/// Opens the spool's store (the embedded file, or the replay guard's Redis after checking its
/// durability) and starts its delivery workers on `background`.
fn start_spool(
    settings: &crate::config::SpoolSettings,
    config: &Config,
    metrics: &Arc<Metrics>,
    background: &tokio::runtime::Runtime,
) -> Result<Arc<crate::proxy::spool::Spool>, StartError> {
    let commits = metrics.spool.commit.clone();
    let on_commit = move |d: Duration| commits.observe(d.as_secs_f64());
    let store: Arc<dyn crate::spool::SpoolBackend> = match settings.backend {
        crate::config::SpoolStoreKind::Embedded => Arc::new(
            crate::spool::SpoolStore::open(
                &settings.path,
                crate::spool::store::Limits::of(settings),
                Box::new(on_commit),
            )
            .map_err(StartError::Spool)?,
        ),
        crate::config::SpoolStoreKind::Redis => {
            // The loader refuses `spool.backend: redis` without the replay guard's Redis.
            let crate::config::ReplayStore::Redis(redis) = &config.replay.store else {
                return Err(StartError::Spool(
                    "spool.backend: redis needs replay.backend: redis".into(),
                ));
            };
            let spool = crate::spool::RedisSpool::open(redis, settings, Box::new(on_commit))
                .map_err(StartError::Spool)?;
            // A 202 promises a durable record: a Redis that keeps none is refused.
            for note in spool
                .check_durability(settings.redis_allow_volatile)
                .map_err(StartError::Spool)?
            {
                match note {
                    crate::spool::redis::Durability::Synced => tracing::info!(
                        "spool: Redis syncs every write to its append-only file (appendfsync always)"
                    ),
                    crate::spool::redis::Durability::Warning(w) => tracing::warn!("{w}"),
                }
            }
            tracing::info!(
                redis = %redis.display,
                replica = spool.holder(),
                "spool: shared by the replicas on this Redis"
            );
            Arc::new(spool)
        }
    };
    let deliverer = crate::proxy::spool::SpoolDeliverer::new(
        config.timeouts.clone(),
        settings.abort_header.clone(),
    );
    let observer: Arc<dyn crate::spool::delivery::Observer> = metrics.spool.clone();
    let delivery =
        crate::spool::Delivery::new(Arc::clone(&store), settings.clone(), deliverer, observer);
    background.spawn(Arc::clone(&delivery).run());
    tracing::info!("{}", settings.summary());
    Ok(Arc::new(crate::proxy::spool::Spool {
        store,
        delivery,
        commit_timeout: settings.commit_timeout,
    }))
}

fn check_bindable(addr: SocketAddr, what: &'static str) -> Result<(), StartError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| StartError::Bind { addr, what, source })
}

/// Handles SIGHUP (reload) and SIGTERM/SIGINT or the stop channel (graceful stop); also marks
/// the server ready once its public listener accepts connections.
struct Signals {
    config_path: PathBuf,
    signals: bool,
    stop: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    on_drained: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    gateway: Arc<Gateway>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let listen = self.gateway.config().config.listen;
        let health = Arc::clone(&self.health);
        tokio::spawn(async move {
            wait_until_accepting(listen).await;
            health.set_listening();
            tracing::info!(%listen, "ready");
        });

        let stop = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        let stopped = async move {
            match stop {
                // A dropped sender stops the server too.
                Some(rx) => drop(rx.await),
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(stopped);
        let which = if self.signals {
            let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::hangup()),
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers; stopping");
                return ShutdownSignal::FastShutdown;
            };
            loop {
                tokio::select! {
                    _ = hup.recv() => self.reload().await,
                    _ = term.recv() => break "SIGTERM",
                    _ = int.recv() => break "SIGINT",
                    _ = &mut stopped => break "stop",
                }
            }
        } else {
            stopped.await;
            "stop"
        };
        let grace = self.gateway.config().config.timeouts.shutdown_grace;
        tracing::info!(
            signal = which,
            in_flight = self.gateway.in_flight(),
            ?grace,
            "shutting down"
        );
        self.health.set_draining();
        self.gateway.start_draining();
        let gateway = Arc::clone(&self.gateway);
        let on_drained = self
            .on_drained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        std::thread::spawn(move || {
            wait_drained(&gateway, grace);
            if let Some(f) = on_drained {
                f();
            }
        });
        ShutdownSignal::GracefulTerminate
    }
}

impl Signals {
    async fn reload(&self) {
        // Reading files and resolving upstream names block: off the runtime.
        let path = self.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load_file(&path))
            .await
            .unwrap_or_else(|e| {
                Err(ConfigErrors(vec![config::ConfigError {
                    file: self.config_path.display().to_string(),
                    pos: None,
                    message: format!("config loading stopped: {e}"),
                }]))
            });
        match loaded {
            Ok(new) => {
                let old = self.gateway.config();
                let old = &old.config;
                if new.listen != old.listen
                    || new.admin_listen != old.admin_listen
                    || new.threads != old.threads
                {
                    tracing::warn!(
                        "listen, admin_listen and threads take effect only on restart; the running values stay"
                    );
                }
                if new.replay != old.replay {
                    tracing::warn!(
                        "replay settings take effect only on restart; the running replay store stays"
                    );
                }
                if new.spool.is_some() && old.spool.is_none() {
                    // Its routes would answer 503 until a restart: keep the running config.
                    self.metrics
                        .config_reloads
                        .with_label_values(&["error"])
                        .inc();
                    tracing::error!(
                        "config reload failed; the running config stays: a route asks for the spool, which starts only when hookguard starts (restart to spool)"
                    );
                    return;
                }
                if new.spool.is_some() && new.spool != old.spool {
                    tracing::warn!(
                        "spool settings take effect only on restart; the running spool stays"
                    );
                }
                let routes = new.routes.len();
                for route in new.routes.iter() {
                    tracing::info!("{}", route.summary());
                }
                self.gateway.replace_config(new);
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(routes, "config reloaded");
            }
            Err(errors) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                for e in &errors.0 {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    errors = errors.0.len(),
                    "config reload failed; the running config stays"
                );
            }
        }
    }
}

/// Polls the public listener until it accepts a connection.
async fn wait_until_accepting(listen: SocketAddr) {
    let probe = crate::net::reachable(listen);
    loop {
        let ok = tokio::task::spawn_blocking(move || {
            TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok()
        })
        .await
        .unwrap_or(false);
        if ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Returns as soon as no request is in flight, or when the grace period ends.
fn wait_drained(gateway: &Gateway, grace: Duration) {
    let deadline = Instant::now() + grace;
    // Let Pingora close its listeners and idle keep-alive connections first.
    std::thread::sleep(Duration::from_millis(100));
    while Instant::now() < deadline {
        // Requests settled, and every answer written (a connection closes once its request
        // is answered): exiting earlier could cut an answer short.
        if gateway.in_flight() == 0 && gateway.connections() == 0 {
            tracing::info!("no request in flight");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(
        in_flight = gateway.in_flight(),
        connections = gateway.connections(),
        "grace period over with requests in flight"
    );
}
