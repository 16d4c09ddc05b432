//! A Redis for tests (used by the unit tests in `src/replay` too, through `#[path]`).
//!
//! - `HOOKGUARD_TEST_REDIS_URL` set (CI sets it): that Redis, which must answer: a test that
//!   needs it fails rather than skips when it does not.
//! - unset: a private `redis-server` on a free loopback port.
//!
//! Tests that need one are marked `#[cfg_attr(not(hookguard_redis), ignore = ...)]`: the
//! build script sets `hookguard_redis` when `redis-server` is on PATH, so without it they are
//! listed as ignored, with the reason, rather than pass without running. Run anyway
//! (`--include-ignored`) without a Redis, they fail with the same reason.
//!
//! Tests that stop or pause Redis always get a private one ([`TestRedis::private`]).
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const URL_ENV: &str = "HOOKGUARD_TEST_REDIS_URL";

pub struct TestRedis {
    pub url: String,
    pub port: Option<u16>,
    child: Option<Child>,
    /// Where a TLS server's certificates are (`None`: plain TCP).
    pub tls: Option<TlsFiles>,
    /// More `redis-server` arguments (they override the defaults: later ones win).
    extra: Vec<String>,
}

/// A private CA, a server certificate for 127.0.0.1 signed by it, and a client certificate
/// signed by it, as PEM files (made with rcgen for each test run).
pub struct TlsFiles {
    pub dir: tempfile::TempDir,
    pub ca_cert: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
}

impl TlsFiles {
    pub fn generate() -> TlsFiles {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "hookguard test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("leaf key");
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.extended_key_usages = vec![usage];
            let cert = params
                .signed_by(&key, &ca_cert, &ca_key)
                .expect("leaf certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key_pem) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_pem, client_key_pem) = leaf(
            vec!["hookguard-test-client".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write PEM");
            path
        };
        TlsFiles {
            ca_cert: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_pem),
            server_key: write("server.key", &server_key_pem),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client.key", &client_key_pem),
            dir,
        }
    }
}

impl TestRedis {
    /// CI's Redis, or a private one; `None` (after a loud message) when there is neither.
    pub fn shared(test: &str) -> Option<TestRedis> {
        if let Ok(url) = std::env::var(URL_ENV) {
            if let Err(e) = wait_for_ping(&url, Duration::from_secs(10)) {
                panic!("{URL_ENV}={url} is set but Redis does not answer: {e}");
            }
            return Some(TestRedis {
                url,
                port: None,
                child: None,
                tls: None,
                extra: Vec::new(),
            });
        }
        Self::private(test)
    }

    /// A private `redis-server` this test may stop, pause and restart.
    pub fn private(test: &str) -> Option<TestRedis> {
        Self::private_with(test, None)
    }

    /// A private `redis-server` that speaks only TLS and asks clients for a certificate
    /// signed by the test CA (`tls-auth-clients yes`, Redis's default).
    pub fn private_tls(test: &str) -> Option<TestRedis> {
        Self::private_with(test, Some(TlsFiles::generate()))
    }

    /// A private `redis-server` started with `args` after the defaults (`--dir`, for a
    /// test that turns the append-only file on).
    pub fn private_args(test: &str, args: &[&str]) -> Option<TestRedis> {
        Self::private_full(test, None, args)
    }

    fn private_with(test: &str, tls: Option<TlsFiles>) -> Option<TestRedis> {
        Self::private_full(test, tls, &[])
    }

    fn private_full(test: &str, tls: Option<TlsFiles>, args: &[&str]) -> Option<TestRedis> {
        if !on_path("redis-server") {
            if std::env::var(URL_ENV).is_ok() {
                panic!("{URL_ENV} is set (CI) but `redis-server` is not on PATH: {test} needs its own instance");
            }
            skip(test);
            return None;
        }
        let port = free_port();
        let scheme = if tls.is_some() { "rediss" } else { "redis" };
        let mut r = TestRedis {
            url: format!("{scheme}://127.0.0.1:{port}"),
            port: Some(port),
            child: None,
            tls,
            extra: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        r.start();
        Some(r)
    }

    /// (Re)starts the private server on its port.
    pub fn start(&mut self) {
        let port = self.port.expect("a private redis-server");
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &port.to_string()]),
            Some(t) => command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(&t.server_cert)
                .arg("--tls-key-file")
                .arg(&t.server_key)
                .arg("--tls-ca-cert-file")
                .arg(&t.ca_cert)
                .args(["--tls-auth-clients", "yes"]),
        };
        let child = command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        if self.tls.is_some() {
            // The test's own client would need the same certificates; a listening port is
            // enough here (the test itself proves the TLS connection works).
            let deadline = Instant::now() + Duration::from_secs(15);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "TLS redis-server on port {port} did not come up"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
        if let Err(e) = wait_for_ping(&self.url, Duration::from_secs(15)) {
            panic!("private redis-server on port {port} did not come up: {e}");
        }
    }

    /// Kills the private server (the port stays reserved for [`start`](Self::start)).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP / SIGCONT: a Redis that accepts nothing and answers nothing.
    pub fn pause(&self, paused: bool) {
        let pid = self.child.as_ref().expect("a private redis-server").id();
        let sig = if paused { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} {pid}");
    }

    /// A synchronous connection for inspecting keys.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("connect to test Redis")
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A paused server would not die of SIGKILL any slower, but be tidy.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.stop();
    }
}

/// A key prefix no other test (or test run) uses.
pub fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("hgtest:{test}:{}:{nanos:x}:", std::process::id())
}

fn skip(test: &str) {
    panic!("{test} needs Redis: no {URL_ENV} and no `redis-server` on PATH (apt-get install redis-server)");
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(bin).is_file()))
}

/// A loopback port that was free a moment ago and that no other test of this process has
/// been given. The kernel may hand a just-released port out again, and Pingora's listeners
/// set `SO_REUSEPORT`: two proxies on one port would share its connections between them.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("an ephemeral port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn wait_for_ping(url: &str, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        let pong = redis::Client::open(url)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        match pong {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(last)
}
