//! `hookguard spool list|show|retry|purge|stats`: the operator's view of the spool, through
//! the running server's admin listener, or on the spool's file when no server runs.
//!
//! The running server holds the file (redb allows one process at a time), so the admin
//! listener is asked first; only when nothing listens there is the file opened directly
//! (with `spool.backend: redis`, the replay guard's Redis is asked directly instead).

use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::config::{Config, ReplayStore, SpoolSettings, SpoolStoreKind};
use crate::spool::{store::Limits, Filter, Record, RedisSpool, SpoolBackend, SpoolStore};

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    List,
    Show(u64),
    Retry,
    Purge,
    Stats,
}

/// One `hookguard spool` command.
#[derive(Debug, Clone)]
pub struct SpoolCommand {
    pub action: Action,
    pub filter: Filter,
    /// `older_than` as the operator wrote it (the admin listener parses it again).
    pub older_than: Option<String>,
    /// `retry`/`purge` with no filter: every message.
    pub all: bool,
    pub json: bool,
}

/// Runs `command`; the text to print, or an error.
pub fn run(config: &Config, command: &SpoolCommand) -> Result<String, String> {
    let settings = config
        .spool
        .as_ref()
        .ok_or("the config has no spool (no `spool:` section, no route with `spool: true`)")?;
    if matches!(command.action, Action::Retry | Action::Purge)
        && command.filter == Filter::default()
        && !command.all
    {
        return Err("say which messages: --state, --route, --older-than, --seq, or --all".into());
    }
    let answer = match remote(config, settings, command) {
        Ok(answer) => answer,
        Err(Remote::NotRunning) => local(config, settings, command)?,
        Err(Remote::Failed(e)) => return Err(e),
    };
    Ok(if command.json {
        answer.to_string()
    } else {
        text(&command.action, &answer)
    })
}

enum Remote {
    /// Nothing listens on the admin address: the server is stopped.
    NotRunning,
    Failed(String),
}

/// Asks the running server's admin listener.
fn remote(config: &Config, settings: &SpoolSettings, c: &SpoolCommand) -> Result<Value, Remote> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(s) = &c.filter.state {
        query.append_pair("state", s);
    }
    if let Some(r) = &c.filter.route {
        query.append_pair("route", r);
    }
    if let Some(o) = &c.older_than {
        query.append_pair("older_than", o);
    }
    if let Some(l) = c.filter.limit {
        query.append_pair("limit", &l.to_string());
    }
    for seq in c.filter.seqs.iter().flatten() {
        query.append_pair("seq", &seq.to_string());
    }
    if c.all {
        query.append_pair("all", "1");
    }
    let query = query.finish();
    let (method, path) = match c.action {
        Action::List => ("GET", "/spool/messages".to_owned()),
        Action::Show(seq) => ("GET", format!("/spool/messages/{seq}")),
        Action::Retry => ("POST", "/spool/retry".to_owned()),
        Action::Purge => ("POST", "/spool/purge".to_owned()),
        Action::Stats => ("GET", "/spool/stats".to_owned()),
    };
    let target = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let token = settings.admin_token.as_ref();
    let timeout = Duration::from_secs(30);
    let (status, body) =
        crate::admin::request(config.admin_listen, method, &target, token, timeout).map_err(
            |e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => Remote::NotRunning,
                _ => Remote::Failed(format!("the admin listener {}: {e}", config.admin_listen)),
            },
        )?;
    let value: Value = serde_json::from_slice(&body).map_err(|_| {
        Remote::Failed(format!(
            "the admin listener {} answered {status}, not JSON (is it hookguard's?)",
            config.admin_listen
        ))
    })?;
    if status == 200 {
        return Ok(value);
    }
    let error = value["error"].as_str().unwrap_or("unknown error");
    Err(Remote::Failed(match (status, error) {
        (404, "no_spool") => "the running hookguard has no spool (its config differs?)".into(),
        (404, "no_such_message") => "no such message".into(),
        (403, _) => "the admin listener refused: set spool.admin_token in the config (or run this on the server's host)".into(),
        _ => format!("the admin listener answered {status}: {error}"),
    }))
}

/// Works on the spool directly (the server is stopped): its file, or the shared Redis.
fn local(config: &Config, settings: &SpoolSettings, c: &SpoolCommand) -> Result<Value, String> {
    let store: Box<dyn SpoolBackend> = match (settings.backend, &config.replay.store) {
        (SpoolStoreKind::Redis, ReplayStore::Redis(redis)) => {
            Box::new(RedisSpool::open(redis, settings, Box::new(|_| {}))?)
        }
        (SpoolStoreKind::Redis, ReplayStore::Memory) => {
            return Err("spool.backend: redis needs replay.backend: redis".into())
        }
        (SpoolStoreKind::Embedded, _) => {
            if !settings.path.exists() {
                return Err(format!(
                    "no spool at {} (and no hookguard answers on the admin listener)",
                    settings.path.display()
                ));
            }
            let limits = Limits::of(settings);
            Box::new(SpoolStore::open(&settings.path, limits, Box::new(|_| {}))?)
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let answer = runtime.block_on(local_answer(store.as_ref(), c));
    // The Redis client's runtime may not be dropped inside another runtime's `block_on`.
    drop(store);
    answer
}

async fn local_answer(store: &dyn SpoolBackend, c: &SpoolCommand) -> Result<Value, String> {
    let e = |e: crate::spool::SpoolError| e.to_string();
    Ok(match c.action {
        Action::List => serde_json::json!({ "messages": store.list(&c.filter).await.map_err(e)? }),
        Action::Show(seq) => {
            let (record, body) = store.get(seq).await.map_err(e)?.ok_or("no such message")?;
            serde_json::json!({
                "message": record,
                "body_base64": base64::engine::general_purpose::STANDARD.encode(&body),
            })
        }
        Action::Retry => {
            serde_json::json!({ "retried": store.retry(c.filter.clone()).await.map_err(e)? })
        }
        Action::Purge => {
            serde_json::json!({ "purged": store.purge(c.filter.clone()).await.map_err(e)? })
        }
        Action::Stats => serde_json::to_value(store.stats().await.map_err(e)?).unwrap_or_default(),
    })
}

/// The answer as a person reads it.
fn text(action: &Action, answer: &Value) -> String {
    let now = crate::spool::now_ms();
    match action {
        Action::List => {
            let records: Vec<Record> =
                serde_json::from_value(answer["messages"].clone()).unwrap_or_default();
            let mut out = format!(
                "{:>8}  {:<20}  {:<16}  {:>8}  {:>10}  {}\n",
                "SEQ", "STATE", "ROUTE", "ATTEMPTS", "AGE", "ID"
            );
            for r in &records {
                out.push_str(&format!(
                    "{:>8}  {:<20}  {:<16}  {:>8}  {:>10}  {}\n",
                    r.seq,
                    state(r),
                    r.envelope.route,
                    r.attempts,
                    age(now, r.envelope.received_ms),
                    r.envelope.id
                ));
            }
            out.push_str(&format!("{} message(s)", records.len()));
            out
        }
        Action::Show(_) => {
            let Ok(r) = serde_json::from_value::<Record>(answer["message"].clone()) else {
                return answer.to_string();
            };
            let body = answer["body_base64"]
                .as_str()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .unwrap_or_default();
            let e = &r.envelope;
            let mut out = format!(
                "seq {}\nstate {}\nroute {} ({})\nid {}\nreceived {} ago\nattempts {} (finished {}, ambiguous {}, client errors {})\n",
                r.seq, state(&r), e.route, e.provider, e.id, age(now, e.received_ms),
                r.attempts, r.finished, r.ambiguous, r.client_errors
            );
            if r.state == crate::spool::State::Queued {
                let next = if r.next_ms <= now {
                    "now".to_owned()
                } else {
                    format!("in {}", age(r.next_ms, now))
                };
                out.push_str(&format!("next attempt {next}\n"));
            }
            if let Some(last) = &r.last {
                out.push_str(&format!("last result {last}\n"));
            }
            out.push_str(&format!(
                "{} {} (upstream {})\n",
                e.method, e.target, e.upstream
            ));
            for (name, value) in &e.headers {
                out.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value)));
            }
            out.push('\n');
            match std::str::from_utf8(&body) {
                Ok(text) => out.push_str(text),
                Err(_) => out.push_str(&format!(
                    "({} bytes, not UTF-8; --json gives them in base64)",
                    body.len()
                )),
            }
            out
        }
        Action::Retry => format!("{} message(s) queued again", answer["retried"]),
        Action::Purge => format!("{} message(s) purged", answer["purged"]),
        Action::Stats => {
            let s: crate::spool::StoreStats =
                serde_json::from_value(answer.clone()).unwrap_or_default();
            format!(
                "queued {} ({} bytes), dead {} ({} bytes), oldest queued {}\nsince created: {} enqueued, {} delivered, {} ambiguous attempts",
                s.queued,
                s.queued_bytes,
                s.dead,
                s.dead_bytes,
                s.oldest_queued_ms
                    .map_or_else(|| "-".to_owned(), |ms| format!("{} ago", age(now, ms))),
                s.enqueued_total,
                s.delivered_total,
                s.ambiguous_total,
            )
        }
    }
}

fn state(r: &Record) -> String {
    match &r.state {
        crate::spool::State::Queued => "queued".into(),
        crate::spool::State::Dead { reason } => format!("dead ({reason})"),
    }
}

/// `later - earlier` in whole seconds, as `1h 2m 3s`.
fn age(later: u64, earlier: u64) -> String {
    let secs = later.saturating_sub(earlier) / 1000;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}
