//! Assembles the Pingora server (public listener, admin listener) and runs it until a signal.
//!
//! Signals are ours, not Pingora's defaults: Pingora treats SIGINT as a fast shutdown that
//! drops requests in flight, and its graceful shutdown sleeps the whole grace period even when
//! nothing is in flight. Here SIGTERM and SIGINT both stop accepting, let requests in flight
//! finish, and exit 0 as soon as none is left (at the latest after `timeouts.shutdown_grace`).
//! SIGHUP reloads the config file.

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
use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::proxy::{Gateway, GatewayApp};

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
}

/// Runs hookguard until it is told to stop. Returns once shutdown is complete.
pub fn run(config_path: PathBuf, config: Config) -> Result<(), StartError> {
    // Pingora panics in a service thread when it cannot bind; find out here, with a message.
    check_bindable(config.listen, "listen")?;
    check_bindable(config.admin_listen, "admin_listen")?;

    let metrics = Metrics::new();
    let gateway =
        Gateway::new(config.clone(), Arc::clone(&metrics)).map_err(StartError::ReplayStore)?;
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
            gateway: Arc::clone(&gateway),
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
            config_path,
            gateway,
            health,
            metrics,
        }),
    });
    tracing::info!("hookguard stopped");
    Ok(())
}

fn check_bindable(addr: SocketAddr, what: &'static str) -> Result<(), StartError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| StartError::Bind { addr, what, source })
}

/// Handles SIGHUP (reload) and SIGTERM/SIGINT (graceful stop); also marks the server ready
/// once its public listener accepts connections.
struct Signals {
    config_path: PathBuf,
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

        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        let which = loop {
            tokio::select! {
                _ = hup.recv() => self.reload(),
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
            }
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
        std::thread::spawn(move || exit_when_drained(&gateway, grace));
        ShutdownSignal::GracefulTerminate
    }
}

impl Signals {
    fn reload(&self) {
        match config::load_file(&self.config_path) {
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
    let probe = match listen {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    };
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

/// Exits 0 as soon as no request is in flight, or when the grace period ends.
fn exit_when_drained(gateway: &Gateway, grace: Duration) {
    let deadline = Instant::now() + grace;
    // Let Pingora close its listeners and idle keep-alive connections first.
    std::thread::sleep(Duration::from_millis(100));
    while Instant::now() < deadline {
        if gateway.in_flight() == 0 {
            tracing::info!("no request in flight; exiting");
            crate::logging::flush();
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(
        in_flight = gateway.in_flight(),
        "grace period over; exiting"
    );
    crate::logging::flush();
    std::process::exit(0);
}
