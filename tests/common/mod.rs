//! End-to-end test harness: the real `hookguard` binary, a real upstream HTTP server (hyper),
//! and a raw HTTP/1.1 client, all on 127.0.0.1 ephemeral ports.
//!
//! Longer than 500 lines: the whole e2e harness (upstream, proxy process, in-process server,
//! typed config, raw client, signers) in the one module every test file includes.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::Sha256;

pub mod redis_server;

// ------------------------------------------------------------------------------------------
// Providers built in-process, from JSON options (the registry takes any serde format)
// ------------------------------------------------------------------------------------------

use hookguard::providers::{dispatch, Provider, ProviderFactory, Visit};

struct FromJson(serde_json::Value);

impl Visit for FromJson {
    type Output = Result<Arc<dyn Provider>, String>;
    fn visit<P: ProviderFactory>(self, _: &'static str) -> Self::Output {
        let options: P::Options = serde_json::from_value(self.0).map_err(|e| e.to_string())?;
        let provider = P::from_options(options).map_err(|errors| {
            errors
                .iter()
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Ok(Arc::new(provider))
    }
}

/// The provider `name` (or alias) with route options `options`; panics if it does not build.
pub fn build_provider(name: &str, options: &serde_json::Value) -> Arc<dyn Provider> {
    match dispatch(name, FromJson(options.clone())) {
        Some(Ok(p)) => p,
        Some(Err(e)) => panic!("{name}: options {options} do not build: {e}"),
        None => panic!("{name} is not a provider"),
    }
}

struct Canonical;

impl Visit for Canonical {
    type Output = &'static str;
    fn visit<P: ProviderFactory>(self, name: &'static str) -> &'static str {
        name
    }
}

/// The canonical name of provider `name` (or alias).
pub fn canonical_provider(name: &str) -> &'static str {
    dispatch(name, Canonical).unwrap_or_else(|| panic!("{name} is not a provider"))
}

// ------------------------------------------------------------------------------------------
// Ports
// ------------------------------------------------------------------------------------------

pub use redis_server::free_port;

// ------------------------------------------------------------------------------------------
// Upstream
// ------------------------------------------------------------------------------------------

/// A request the upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("upstream body is JSON")
    }
}

/// What the upstream does with a request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16, &'static str),
    /// Answer after a delay.
    Slow(Duration, u16),
    /// Close the connection without answering.
    Reset,
    /// A status with one extra response header (`Retry-After`, an abort header).
    WithHeader(u16, &'static str, &'static str),
}

/// A real HTTP/1.1 upstream on an ephemeral port. Replies come from a script (one per
/// request, in order) and then from the default.
pub struct Upstream {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    connections: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl Upstream {
    pub fn start() -> Self {
        Self::with_default(Reply::Status(200, "{\"ok\":true}"))
    }

    pub fn with_default(default: Reply) -> Self {
        Self::on("127.0.0.1:0", default)
    }

    /// An upstream on a given port (one that was down comes up at the address the proxy
    /// already knows).
    pub fn on_port(port: u16, default: Reply) -> Self {
        Self::on(&format!("127.0.0.1:{port}"), default)
    }

    fn on(addr: &str, default: Reply) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let std_listener = TcpListener::bind(addr).expect("bind upstream");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("addr").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Mutex<VecDeque<Reply>>> = Arc::new(Mutex::new(VecDeque::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (rx, sc, conns) = (received.clone(), script.clone(), connections.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (rx, sc, default) = (rx.clone(), sc.clone(), default.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (rx, sc, default) = (rx.clone(), sc.clone(), default.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            rx.lock().unwrap().push(Received {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(n, v)| {
                                        (
                                            n.to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect(),
                                body: body.to_vec(),
                            });
                            let reply = sc.lock().unwrap().pop_front().unwrap_or(default);
                            let mut extra = None;
                            let (status, body) = match reply {
                                Reply::Status(s, b) => (s, b),
                                Reply::Slow(d, s) => {
                                    tokio::time::sleep(d).await;
                                    (s, "{\"slow\":true}")
                                }
                                Reply::Reset => return Err("reset".to_owned()),
                                Reply::WithHeader(s, name, value) => {
                                    extra = Some((name, value));
                                    (s, "{}")
                                }
                            };
                            let mut response = Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .header("x-upstream", "yes");
                            if let Some((name, value)) = extra {
                                response = response.header(name, value);
                            }
                            Ok(response
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                                .unwrap())
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            port,
            received,
            script,
            connections,
            _runtime: runtime,
        }
    }

    /// Replies for the next requests, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().extend(replies);
    }

    /// Drops the replies scripted and not used (their requests never reached the upstream).
    pub fn clear_script(&self) {
        self.script.lock().unwrap().clear();
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

// ------------------------------------------------------------------------------------------
// The proxy process
// ------------------------------------------------------------------------------------------

/// A running `hookguard` binary with its own config file and captured log.
pub struct Proxy {
    pub port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Proxy {
    /// Starts hookguard with `body` appended to generated `listen`/`admin_listen` lines.
    pub fn start(body: &str) -> Self {
        Self::start_with(body, &[], &[])
    }

    /// Starts hookguard on `config` (its own listen and admin ports).
    pub fn start_config(config: &TestConfig) -> Self {
        Self::start_config_env(config, &[])
    }

    /// The same, with `env` in the process's environment.
    pub fn start_config_env(config: &TestConfig, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.yaml"), config.yaml()).expect("write config");
        let mut proxy = Proxy {
            port: config.port_of("listen"),
            admin_port: config.port_of("admin_listen"),
            dir,
            child: None,
        };
        proxy.spawn(&[], env);
        proxy
    }

    pub fn start_with(body: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let admin_port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\nadmin_listen: \"127.0.0.1:{admin_port}\"\nthreads: 2\n{body}"
        );
        std::fs::write(dir.path().join("config.yaml"), config).expect("write config");
        let mut proxy = Proxy {
            port,
            admin_port,
            dir,
            child: None,
        };
        proxy.spawn(args, env);
        proxy
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("hookguard.log")
    }

    fn spawn(&mut self, args: &[&str], env: &[(&str, &str)]) {
        // Appended to: a restarted proxy's log follows the one before.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookguard"));
        cmd.arg("--config")
            .arg(self.config_path())
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log));
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn hookguard"));
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!("hookguard exited early ({status}):\n{}", self.log());
            }
            if let Ok(r) = get(self.admin_port, "/readyz") {
                if r.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("hookguard not ready within 15 s:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The log once `ready` holds for it (log lines are written by a background thread, so
    /// they appear a moment after the response); panics after 10 s.
    pub fn log_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if ready(&log) {
                return log;
            }
            assert!(Instant::now() < deadline, "log never got there:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL (no draining, no cleanup) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same config (after [`Proxy::kill9`] or an exit).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn(&[], &[]);
    }

    /// Runs `hookguard <args>` beside this proxy (the CLI's subcommands); its exit code and
    /// output.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_hookguard"))
            .args(args)
            .output()
            .expect("run hookguard");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The admin listener's /metrics text.
    pub fn metrics(&self) -> String {
        String::from_utf8(get(self.admin_port, "/metrics").expect("metrics").body).expect("utf-8")
    }

    /// The value of one metric series, e.g. `hookguard_requests_total{route="a",...}`.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of `series` (name and labels exactly as exposed) in a metrics text; 0 if absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().expect("number"))
        .unwrap_or(0.0)
}

// ------------------------------------------------------------------------------------------
// Typed test configs, and the server in-process
// ------------------------------------------------------------------------------------------

/// A hookguard config built in Rust (written out as YAML only at the end), so that a test
/// says what it configures rather than formatting YAML by hand.
#[derive(Clone)]
pub struct TestConfig {
    top: serde_json::Map<String, serde_json::Value>,
    routes: Vec<TestRoute>,
}

/// One route of a [`TestConfig`].
#[derive(Clone)]
pub struct TestRoute(serde_json::Map<String, serde_json::Value>);

impl TestRoute {
    pub fn new(name: &str, path: &str, provider: &str) -> Self {
        let mut m = serde_json::Map::new();
        m.insert("name".into(), name.into());
        m.insert("path".into(), path.into());
        m.insert("provider".into(), provider.into());
        TestRoute(m)
    }

    /// A Mailgun route at `path` signed with `key`.
    pub fn mailgun(name: &str, path: &str, key: &str) -> Self {
        TestRoute::new(name, path, "mailgun").secrets(&[key])
    }

    pub fn secrets(self, keys: &[&str]) -> Self {
        self.set("secrets", keys)
    }

    /// Any other route key (`tolerance`, `allow_ips`, `public_url`, ...).
    pub fn set(mut self, key: &str, value: impl serde::Serialize) -> Self {
        self.0
            .insert(key.into(), serde_json::to_value(value).expect("a value"));
        self
    }
}

impl TestConfig {
    /// Listening on free loopback ports, forwarding to `upstream`, two threads.
    pub fn new(upstream: &Upstream) -> Self {
        let mut top = serde_json::Map::new();
        top.insert("listen".into(), format!("127.0.0.1:{}", free_port()).into());
        top.insert(
            "admin_listen".into(),
            format!("127.0.0.1:{}", free_port()).into(),
        );
        top.insert("upstream".into(), upstream.url().into());
        top.insert("threads".into(), 2.into());
        TestConfig {
            top,
            routes: Vec::new(),
        }
    }

    pub fn route(mut self, route: TestRoute) -> Self {
        self.routes.push(route);
        self
    }

    /// A top-level key, or a key of a section: `set("replay.max_entries", 4)`.
    pub fn set(mut self, key: &str, value: impl serde::Serialize) -> Self {
        let value = serde_json::to_value(value).expect("a value");
        match key.split_once('.') {
            None => {
                self.top.insert(key.into(), value);
            }
            Some((section, k)) => {
                let entry = self
                    .top
                    .entry(section.to_owned())
                    .or_insert_with(|| serde_json::Value::Object(Default::default()));
                entry
                    .as_object_mut()
                    .expect("a section")
                    .insert(k.into(), value);
            }
        }
        self
    }

    fn port_of(&self, key: &str) -> u16 {
        self.top[key]
            .as_str()
            .and_then(|a| a.rsplit(':').next()?.parse().ok())
            .expect("a port")
    }

    pub fn yaml(&self) -> String {
        let mut top = self.top.clone();
        let routes: Vec<serde_json::Value> = self
            .routes
            .iter()
            .map(|r| serde_json::Value::Object(r.0.clone()))
            .collect();
        top.insert("routes".into(), routes.into());
        serde_yaml::to_string(&top).expect("YAML")
    }
}

/// hookguard running inside the test process (`server::run` on a thread of its own), for
/// tests that need no process of their own. Stopped when dropped.
pub struct InProcess {
    pub port: u16,
    pub admin_port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl InProcess {
    pub fn start(config: &TestConfig) -> Self {
        let (port, admin_port) = (config.port_of("listen"), config.port_of("admin_listen"));
        let loaded = hookguard::config::load_str(
            &config.yaml(),
            "test config",
            &hookguard::config::expand::ProcessEnv,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", config.yaml()));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let options = hookguard::server::Options {
            config_path: PathBuf::from("unused.yaml"),
            signals: false,
            stop: Some(stopped),
            on_drained: None,
        };
        let thread = std::thread::spawn(move || {
            hookguard::server::run(loaded, options).map_err(|e| e.to_string())
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        while !get(admin_port, "/readyz").is_ok_and(|r| r.status == 200) {
            assert!(Instant::now() < deadline, "in-process hookguard not ready");
            assert!(
                !thread.is_finished(),
                "in-process hookguard stopped at start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        InProcess {
            port,
            admin_port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops the server as SIGTERM would and waits until `server::run` has returned.
    pub fn stop(mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread
            .take()
            .expect("running")
            .join()
            .map_err(|_| "server thread panicked".to_owned())?
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        // Told to stop; not waited for (its grace period would slow every test down).
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client
// ------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` code of a rejection body.
    pub fn error(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("rejection body is JSON: {:?}", self.text()));
        v["error"].as_str().expect("error field").to_owned()
    }
}

/// One client connection; requests on it reuse the connection (keep-alive).
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(port: u16) -> std::io::Result<Self> {
        let stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    pub fn set_read_timeout(&mut self, t: Duration) {
        self.reader
            .get_ref()
            .set_read_timeout(Some(t))
            .expect("timeout");
    }

    /// Sends a POST with a Content-Length body and reads the response.
    pub fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        self.write(&request_bytes("POST", path, headers, body))?;
        self.read_response()
    }

    pub fn read_response(&mut self) -> std::io::Result<HttpResponse> {
        self.read_response_inner(false)
    }

    /// Reads the answer to a HEAD request: headers only (its Content-Length describes a body
    /// that is not sent).
    pub fn read_head_response(&mut self) -> std::io::Result<HttpResponse> {
        self.read_response_inner(true)
    }

    fn read_response_inner(&mut self, head: bool) -> std::io::Result<HttpResponse> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let resp_header = |name: &str| {
            headers
                .iter()
                .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        if (100..200).contains(&status) || head {
            // An interim response: the caller reads the final one next.
            return Ok(HttpResponse {
                status,
                headers,
                body: Vec::new(),
            });
        }
        let mut body = Vec::new();
        if resp_header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim(), 16).map_err(std::io::Error::other)?;
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = resp_header("content-length") {
            let n: usize = n.parse().map_err(std::io::Error::other)?;
            body.resize(n, 0);
            self.reader.read_exact(&mut body)?;
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }

    /// Whether the server closed the connection (reads EOF).
    pub fn is_closed(&mut self) -> bool {
        self.set_read_timeout(Duration::from_secs(3));
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }
}

pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if !headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    }) {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Asserts the answer to a copy of a message already delivered: `200 {"status":"duplicate"}`.
pub fn assert_duplicate(resp: &HttpResponse) {
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "{\"status\":\"duplicate\"}"),
        "a copy of a delivered message"
    );
    assert_eq!(resp.header("content-type"), Some("application/json"));
}

/// One POST on a fresh connection.
pub fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    Conn::open(port)
        .and_then(|mut c| c.post(path, headers, body))
        .expect("POST")
}

pub fn get(port: u16, path: &str) -> std::io::Result<HttpResponse> {
    let mut c = Conn::open(port)?;
    c.write(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    c.read_response()
}

// ------------------------------------------------------------------------------------------
// Mailgun signing, computed here with the hmac crate (independently of hookguard's code)
// ------------------------------------------------------------------------------------------

pub const MG_KEY: &str = "key-e2e-mailgun-signing";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn mg_sig(key: &str, timestamp: &str, token: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A unique token per call.
pub fn token() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("tok{nanos:x}{n:04}{:x}", std::process::id())
}

/// A current Mailgun JSON webhook body signed with `key` at `ts`.
pub fn mg_json_at(key: &str, ts: u64, token: &str, event: &str) -> Vec<u8> {
    let sig = mg_sig(key, &ts.to_string(), token);
    format!(
        r#"{{"signature": {{"timestamp": "{ts}", "token": "{token}", "signature": "{sig}"}}, "event-data": {{"event": "{event}", "recipient": "alice@example.com"}}}}"#
    )
    .into_bytes()
}

pub fn mg_json(token: &str) -> Vec<u8> {
    mg_json_at(MG_KEY, now(), token, "delivered")
}

/// A legacy form-encoded Mailgun webhook body.
pub fn mg_form(key: &str, token: &str, extra: &str) -> Vec<u8> {
    let ts = now().to_string();
    let sig = mg_sig(key, &ts, token);
    format!("timestamp={ts}&token={token}&signature={sig}{extra}").into_bytes()
}

pub const JSON: (&str, &str) = ("Content-Type", "application/json");
pub const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// A config body with one Mailgun route at /mg forwarding to `upstream`.
pub fn mailgun_config(upstream: &Upstream, extra_top: &str, extra_route: &str) -> String {
    format!(
        "upstream: \"{}\"\n{extra_top}\nroutes:\n  - name: mg\n    path: /mg\n    provider: mailgun\n    secrets: [\"{MG_KEY}\"]\n{extra_route}",
        upstream.url()
    )
}

/// Waits until `ok` holds (polling every 20 ms), or panics with `what` after `within`.
pub fn eventually(within: Duration, what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A spooled message's answer: `202 {"status":"queued","id":…}`; returns the id.
pub fn assert_queued(resp: &HttpResponse) -> String {
    assert_eq!(resp.status, 202, "queued: {}", resp.text());
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("JSON");
    assert_eq!(v["status"], "queued");
    v["id"].as_str().expect("an id").to_owned()
}

/// Two spooled routes: `/mg` to an upstream that is down, `/ok` to `up`, which answers its
/// message's first attempt 429 (set by the caller) so that it is due again about a second
/// later (`spool.backoff_*` 1 s, 1 worker). While `/mg` messages keep arriving, `/ok`'s retry
/// is delivered: a down upstream's backlog does not hold up another upstream's messages.
pub fn assert_a_down_backlog_does_not_hold_up_another_upstream(proxy: &Proxy, up: &Upstream) {
    let send_down = || post(proxy.port, "/mg", &[JSON], &mg_json(&token()));
    for _ in 0..10 {
        assert_queued(&send_down());
    }
    proxy.log_when(|l| l.contains("delivery stops"));
    let body = mg_json_at(MG_KEY, now(), &token(), "opened");
    assert_queued(&post(proxy.port, "/ok", &[JSON], &body));
    eventually(Duration::from_secs(2), "the first attempt (429)", || {
        up.count() == 1
    });
    // The down upstream's messages keep coming for 3 s; the retry is due after ~1 s.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until && up.count() < 2 {
        assert_queued(&send_down());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        up.count(),
        2,
        "the up upstream's message was retried and delivered"
    );
}
