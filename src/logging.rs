//! Logging: tracing to stdout, as text or JSON lines, with Pingora's `log` records included.
//!
//! A request never waits on the terminal or a log pipe, and never wakes another thread:
//! formatted lines are appended to a shared buffer, which a flusher thread writes out every
//! 50 ms (one write per batch). A channel-based writer (tracing-appender) wakes its thread
//! for every line, and those context switches cost more than the formatting itself
//! (measured: about a quarter of hookguard's CPU per request at 15 k requests/s). Should the
//! buffer reach 1 MiB between two flushes, the thread that filled it writes it out itself.
//!
//! The one line per request is written by [`request`] rather than through tracing's
//! formatter: the same line (target `hookguard::request`, the same fields, text or JSON, and
//! `RUST_LOG` still decides whether it is written), formatted straight into the buffer, at a
//! fraction of the cost of tracing-subscriber's generic field visitors (measured in
//! bench/README.md).

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How log lines are written (the command line chooses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

const FLUSH_EVERY: Duration = Duration::from_millis(50);
const HIGH_WATER: usize = 1 << 20;

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static FLUSHER: OnceLock<()> = OnceLock::new();
/// The format chosen by [`init`] (request lines are formatted here, not by tracing).
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Installs the global subscriber. `level` (or `RUST_LOG`) is an `EnvFilter` directive.
pub fn init(level: Option<&str>, format: LogFormat) {
    let directive = level
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    // Pingora is chatty at info about its own internals; keep it at warn unless asked.
    let filter = EnvFilter::try_new(&directive)
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("pingora_core=warn".parse().expect("static directive"))
        .add_directive("pingora=warn".parse().expect("static directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Batched)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if installed.is_ok() {
        let _ = FORMAT.set(format);
        let _ = tracing_log::LogTracer::init();
        FLUSHER.get_or_init(|| {
            let spawned = std::thread::Builder::new()
                .name("hookguard-log".into())
                .spawn(|| loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flush();
                });
            if spawned.is_err() {
                eprintln!("hookguard: no log flusher thread; lines are written as they come");
            }
        });
    }
}

/// The fields of a request's log line.
pub struct RequestLine<'a> {
    pub route: &'a str,
    pub provider: &'a str,
    pub outcome: &'a str,
    pub status: u16,
    pub duration: Duration,
    /// The message's id, once verified.
    pub replay_key: &'a str,
    pub client: Option<std::net::IpAddr>,
}

/// Writes the request's line, when the log filter lets `hookguard::request` lines through.
pub fn request(line: &RequestLine<'_>) {
    let Some(format) = FORMAT.get() else {
        return; // no logging set up (tests, benchmarks in-process)
    };
    if !tracing::enabled!(target: "hookguard::request", tracing::Level::INFO) {
        return;
    }
    let mut out = Vec::with_capacity(256);
    let time = humantime::format_rfc3339_micros(std::time::SystemTime::now());
    // Whole microseconds as milliseconds: `1.23`, never `1.2296099999999999`.
    let duration_ms = line.duration.as_micros() as f64 / 1000.0;
    let client = line.client.map(|ip| ip.to_string()).unwrap_or_default();
    // Writing into a Vec cannot fail.
    let _ = match format {
        LogFormat::Text => writeln!(
            out,
            "{time}  INFO hookguard::request: request route={} provider={} outcome={} status={} duration_ms={duration_ms} replay_key={} client={client}",
            line.route, line.provider, line.outcome, line.status, line.replay_key,
        ),
        LogFormat::Json => {
            let text = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
            writeln!(
                out,
                r#"{{"timestamp":"{time}","level":"INFO","message":"request","route":{},"provider":{},"outcome":{},"status":{},"duration_ms":{duration_ms},"replay_key":{},"client":{},"target":"hookguard::request"}}"#,
                text(line.route),
                text(line.provider),
                text(line.outcome),
                line.status,
                text(line.replay_key),
                text(&client),
            )
        }
    };
    let _ = Batched.write(&out);
}

/// Writes out every buffered line (the flusher does so every 50 ms; call it before
/// `process::exit`, which runs no destructors).
pub fn flush() {
    let batch = {
        let mut buf = BUFFER.lock().unwrap_or_else(|p| p.into_inner());
        if buf.is_empty() {
            return;
        }
        std::mem::take(&mut *buf)
    };
    let mut out = std::io::stdout().lock();
    // Nowhere to report a failing stdout: the lines are lost, the proxy goes on.
    let _ = out.write_all(&batch);
    let _ = out.flush();
}

/// The `MakeWriter` handing each log event to the shared buffer.
#[derive(Clone, Copy)]
struct Batched;

impl<'a> MakeWriter<'a> for Batched {
    type Writer = Batched;
    fn make_writer(&'a self) -> Self::Writer {
        Batched
    }
}

impl Write for Batched {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut buf = BUFFER.lock().unwrap_or_else(|p| p.into_inner());
            buf.extend_from_slice(bytes);
            buf.len() >= HIGH_WATER || FLUSHER.get().is_none()
        };
        if full {
            flush();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
