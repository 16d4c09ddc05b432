//! A minimal Pingora `ProxyHttp` passthrough: every request goes to one upstream unchanged, over
//! Pingora's pooled keep-alive connections. No verification, no body buffering, no logging.
//!
//! The benchmark (`bench/run.sh`) runs it beside nginx `proxy_pass` and hookguard, to show what
//! plain Pingora's proxy costs on this machine compared with hookguard's own `HttpServerApp`.
//!
//!     cargo run --release --features passthrough-example --example pingora_passthrough -- \
//!         [--listen 127.0.0.1:6190] [--upstream 127.0.0.1:3000] [--threads 1] [--work-stealing]

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Passthrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

struct Args {
    listen: String,
    upstream: SocketAddr,
    threads: usize,
    work_stealing: bool,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        listen: "127.0.0.1:6190".into(),
        upstream: "127.0.0.1:3000".parse().expect("static address"),
        threads: 1,
        work_stealing: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => a.listen = value()?,
            "--upstream" => {
                a.upstream = value()?.parse().map_err(|e| format!("--upstream: {e}"))?
            }
            "--threads" => a.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--work-stealing" => a.work_stealing = true,
            "-h" | "--help" => {
                return Err(
                    "usage: pingora_passthrough [--listen ADDR] [--upstream ADDR] \
                            [--threads N] [--work-stealing]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    // Default server settings but for the thread count, work stealing off (as hookguard runs:
    // one single-threaded runtime per thread), and a short graceful shutdown (the default
    // waits 5 minutes on SIGTERM).
    let conf = ServerConf {
        threads: args.threads,
        work_stealing: args.work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Passthrough {
            upstream: args.upstream,
        },
    );
    proxy.add_tcp(&args.listen);
    proxy.threads = Some(args.threads);
    server.add_service(proxy);
    eprintln!(
        "pingora_passthrough: {} -> {}, {} thread(s)",
        args.listen, args.upstream, args.threads
    );
    server.run_forever();
}
