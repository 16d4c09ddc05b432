//! The `hookguard` command: parse the command line, set up logging, load the config, and hand
//! over to the library.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand, ValueEnum};
use hookguard::logging::{self, LogFormat};
use hookguard::{config, server, sign};

/// jemalloc instead of the system allocator: glibc malloc was 15% of hookguard's CPU per request
/// under load (bench/profile.sh), and jemalloc returns memory to the system more reliably.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A webhook-verification reverse proxy: only authentic webhooks reach your app.
///
/// Without a subcommand, runs the proxy on the config file (`config.yaml` by default).
#[derive(Parser)]
#[command(version, about, long_about = None)]
#[command(after_help = "Without a subcommand, hookguard runs the proxy on --config.")]
struct Cli {
    /// Config file.
    #[arg(
        long,
        short,
        global = true,
        env = "HOOKGUARD_CONFIG",
        default_value = "config.yaml"
    )]
    config: PathBuf,
    /// Log filter, e.g. `info` or `hookguard=debug` (default: $RUST_LOG, else `info`).
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    log_format: Format,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config, print one line per route, exit 0 (1 on errors).
    Check,
    /// Print a curl command that sends a body to a route, signed now as its provider would.
    Sign {
        /// Route name.
        #[arg(long)]
        route: String,
        /// Body file (default: standard input).
        #[arg(long)]
        body: Option<PathBuf>,
    },
    /// Ask the running hookguard's admin listener for its health: exit 0 on 200, else 1.
    /// For container health checks in images without a shell or an HTTP client.
    Probe {
        /// Admin path to ask.
        #[arg(long, default_value = "/healthz")]
        path: String,
    },
    /// Look at and act on the spool: through the running hookguard's admin listener, or on the
    /// spool's file when hookguard is stopped.
    Spool {
        #[command(subcommand)]
        action: SpoolAction,
        /// Print the answer as JSON.
        #[arg(long, global = true)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SpoolAction {
    /// The messages in the spool (no bodies), in arrival order.
    List {
        #[command(flatten)]
        which: Which,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One message: its history, headers and body.
    Show { seq: u64 },
    /// Queue matching messages again (dead ones included), due now.
    Retry {
        #[command(flatten)]
        which: Which,
        /// Every message.
        #[arg(long)]
        all: bool,
    },
    /// Delete matching messages (their keys stay: copies are still answered as duplicates).
    Purge {
        #[command(flatten)]
        which: Which,
        /// Every message.
        #[arg(long)]
        all: bool,
    },
    /// Counts and bytes by state, the oldest queued message's age.
    Stats,
}

/// Which messages a spool command means.
#[derive(clap::Args)]
struct Which {
    #[arg(long, value_parser = ["queued", "dead"])]
    state: Option<String>,
    #[arg(long)]
    route: Option<String>,
    /// Only messages that arrived at least this long ago (`10m`, `2h`).
    #[arg(long, value_parser = humantime::parse_duration)]
    older_than: Option<std::time::Duration>,
    /// Only these messages (repeatable).
    #[arg(long)]
    seq: Vec<u64>,
}

/// `--log-format`.
#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

impl From<Format> for LogFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Text => LogFormat::Text,
            Format::Json => LogFormat::Json,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run(&cli),
        Some(Command::Check) => check(&cli),
        Some(Command::Sign {
            ref route,
            ref body,
        }) => sign(&cli, route, body.as_ref()),
        Some(Command::Probe { ref path }) => probe(&cli, path),
        Some(Command::Spool { ref action, json }) => spool(&cli, action, json),
    }
}

fn run(cli: &Cli) -> ExitCode {
    logging::init(cli.log_level.as_deref(), cli.log_format.into());
    let config = match config::load_file(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!("{e}");
            }
            logging::flush();
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let mut options = server::Options::signals(cli.config.clone());
    // Once no request is in flight after SIGTERM/SIGINT, exit at once rather than sit out
    // the rest of Pingora's grace period.
    options.on_drained = Some(Box::new(|| {
        tracing::info!("exiting");
        logging::flush();
        std::process::exit(0);
    }));
    let result = server::run(config, options);
    if let Err(e) = &result {
        tracing::error!("{e}");
    }
    logging::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookguard: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(cli: &Cli) -> ExitCode {
    match config::load_file(&cli.config) {
        Ok(config) => {
            println!(
                "{}: ok: {} route(s); listen {}, admin {}; {}",
                cli.config.display(),
                config.routes.len(),
                config.listen,
                config.admin_listen,
                config.replay.summary()
            );
            if let Some(spool) = &config.spool {
                println!("{}", spool.summary());
            }
            for route in config.routes.iter() {
                println!("{}", route.summary());
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            println!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn sign(cli: &Cli, route: &str, body: Option<&PathBuf>) -> ExitCode {
    let config = match config::load_file(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let bytes = match body {
        Some(path) => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        }
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map(|_| buf)
                .map_err(|e| format!("cannot read standard input: {e}"))
        }
    };
    let bytes = match bytes {
        Ok(b) => b,
        Err(e) => {
            eprintln!("hookguard sign: {e}");
            return ExitCode::FAILURE;
        }
    };
    match sign::curl_command(&config, route, &bytes, SystemTime::now()) {
        Ok(cmd) => {
            println!("{cmd}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hookguard sign: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(cli: &Cli, path: &str) -> ExitCode {
    let config = match config::load_file(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    match hookguard::admin::probe(config.admin_listen, path, std::time::Duration::from_secs(3)) {
        Ok(200) => {
            println!("{path}: 200");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("{path}: {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("hookguard probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn spool(cli: &Cli, action: &SpoolAction, json: bool) -> ExitCode {
    use hookguard::operate::{self, Action, SpoolCommand};
    let config = match config::load_file(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let (action, which, all, limit) = match action {
        SpoolAction::List { which, limit } => (Action::List, Some(which), false, Some(*limit)),
        SpoolAction::Show { seq } => (Action::Show(*seq), None, false, None),
        SpoolAction::Retry { which, all } => (Action::Retry, Some(which), *all, None),
        SpoolAction::Purge { which, all } => (Action::Purge, Some(which), *all, None),
        SpoolAction::Stats => (Action::Stats, None, false, None),
    };
    let mut filter = hookguard::spool::Filter {
        limit,
        ..Default::default()
    };
    let mut older_than = None;
    if let Some(w) = which {
        filter.state = w.state.clone();
        filter.route = w.route.clone();
        filter.older_than_secs = w.older_than.map(|d| d.as_secs());
        older_than = w
            .older_than
            .map(|d| humantime::format_duration(d).to_string());
        filter.seqs = (!w.seq.is_empty()).then(|| w.seq.clone());
    }
    let command = SpoolCommand {
        action,
        filter,
        older_than,
        all,
        json,
    };
    match operate::run(&config, &command) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hookguard spool: {e}");
            ExitCode::FAILURE
        }
    }
}
