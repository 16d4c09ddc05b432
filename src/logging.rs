//! Logging: tracing to stdout, as text or JSON lines, with Pingora's `log` records included.
//!
//! Lines are written by a background thread (tracing-appender), so a request never waits on
//! the terminal or a slow log pipe.

use std::sync::Mutex;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

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
    // The worker flushes whenever its queue runs dry: buffered, lines leave in batches under
    // load (one write for many lines) and at once when idle.
    let (writer, guard) = tracing_appender::non_blocking(std::io::BufWriter::with_capacity(
        64 * 1024,
        std::io::stdout(),
    ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if installed.is_ok() {
        let _ = tracing_log::LogTracer::init();
        if let Ok(mut g) = GUARD.lock() {
            *g = Some(guard);
        }
    }
}

/// Writes out every buffered line (before `process::exit`, which runs no destructors).
pub fn flush() {
    if let Ok(mut g) = GUARD.lock() {
        g.take();
    }
}
