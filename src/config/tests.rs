//! The config loader's tests.
//!
//! Longer than 500 lines: one test per rule and error message, sharing one set of helpers.

use std::collections::HashMap;

use super::expand::Environment;
use super::*;

struct Env(HashMap<&'static str, &'static str>);

impl Environment for Env {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).map(|s| s.to_string())
    }
    fn read_file(&self, path: &str) -> std::io::Result<String> {
        self.0
            .get(path)
            .map(|s| s.to_string())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "No such file"))
    }
}

fn env() -> Env {
    Env(HashMap::from([
        ("MG_KEY", "key-from-env-SECRETVALUE"),
        ("/run/secrets/mg", "key-from-file-SECRETVALUE\n"),
    ]))
}

fn load(text: &str) -> Result<Config, ConfigErrors> {
    load_str(text, "test.yaml", &env())
}

fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("config should not load"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const GOOD: &str = r#"
listen: "127.0.0.1:8080"
admin_listen: "127.0.0.1:9090"
upstream: "http://127.0.0.1:3000"
max_body_bytes: 2048
threads: 2
timeouts:
  upstream_read: 2s
replay:
  max_entries: 10
routes:
  - name: mailgun
    path: /webhooks/mailgun
    provider: mailgun
    secrets: ["${MG_KEY}", "${file:/run/secrets/mg}"]
    tolerance: 10m
    upstream_path: /hooks/mailgun
  - name: legacy
    path: /legacy
    provider: mailgun
    secrets: literal-secret
    upstream: "http://localhost:4000"
    forward_body: original
"#;

#[test]
fn loads_a_valid_config() {
    let c = load(GOOD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.max_body_bytes, 2048);
    assert_eq!(c.threads, 2);
    assert_eq!(c.timeouts.upstream_read, Duration::from_secs(2));
    assert_eq!(
        c.timeouts.upstream_connect,
        Timeouts::default().upstream_connect
    );
    assert_eq!(c.replay.max_entries, 10);
    let mg = c.routes.lookup("/webhooks/mailgun").expect("route");
    assert_eq!(mg.provider_name, "mailgun");
    assert_eq!(mg.upstream.addr.to_string(), "127.0.0.1:3000");
    assert_eq!(mg.upstream_path.as_deref(), Some("/hooks/mailgun"));
    assert_eq!(mg.forward_body, ForwardBody::Json);
    assert!(
        mg.summary().contains("2 secret(s), tolerance 10m"),
        "{}",
        mg.summary()
    );
    let legacy = c.routes.lookup("/legacy").expect("route");
    assert_eq!(legacy.upstream.addr.port(), 4000);
    assert_eq!(legacy.forward_body, ForwardBody::Original);
    assert!(c.routes.lookup("/nope").is_none());
}

#[test]
fn defaults() {
    let c = load("upstream: http://127.0.0.1:1\nroutes:\n  - {name: a, path: /a, provider: mailgun, secrets: [k]}\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    assert_eq!(c.replay.max_entries, DEFAULT_MAX_ENTRIES);
    assert_eq!(c.timeouts, Timeouts::default());
}

#[test]
fn reports_every_error_with_its_position() {
    let text = "\
listen: \"nowhere\"
upstream: ftp://x
colour: blue
routes:
  - name: a
    path: no-slash
    provider: mailgun
    secrets: [\"${UNSET_VAR}\"]
    tolerence: 5m
  - name: a
    path: /b
    provider: stripe-ish
  - name: c
    path: /c
    provider: mailgun
    secrets: [k]
    tolerance: soon
";
    let errs = errors(text);
    let expect = [
        "test.yaml:1:9: `listen`: `nowhere` is not a HOST:PORT address",
        "test.yaml:2:11: `upstream`: `ftp://x` must start with http://",
        "test.yaml:3:1: unknown key `colour` in the config",
        "test.yaml:6:11: `routes[0].path`: a path starts with `/` and has no query",
        "test.yaml:8:15: environment variable `UNSET_VAR` is not set",
        "test.yaml:9:5: unknown key `tolerence` in a `mailgun` route",
        "test.yaml:12:15: unknown provider `stripe-ish`",
        "test.yaml:17:16: `routes[2].tolerance`:",
    ];
    for e in expect {
        assert!(
            errs.iter().any(|got| got.starts_with(e)),
            "missing {e:?} in\n{}",
            errs.join("\n")
        );
    }
    assert_eq!(errs.len(), expect.len(), "{}", errs.join("\n"));
}

#[test]
fn duplicate_names_and_paths() {
    let text = "upstream: http://127.0.0.1:1\nroutes:\n\
  - {name: a, path: /a, provider: mailgun, secrets: [k]}\n\
  - {name: a, path: /a, provider: mailgun, secrets: [k]}\n";
    let errs = errors(text);
    assert!(
        errs.iter()
            .any(|e| e.contains("route name `a` is already used by routes[0]")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("path `/a` is already routed by routes[0]")),
        "{errs:?}"
    );
}

#[test]
fn missing_route_fields_and_upstream() {
    let errs = errors("routes:\n  - name: a\n    provider: mailgun\n    secrets: [k]\n");
    assert!(
        errs.iter().any(|e| e.contains("missing field `path`")),
        "{errs:?}"
    );
    let errs = errors("routes:\n  - {name: a, path: /a, provider: mailgun, secrets: [k]}\n");
    assert!(
        errs.iter().any(|e| e.contains("has no `upstream`")),
        "{errs:?}"
    );
    let errs = errors("upstream: http://127.0.0.1:1\n");
    assert!(errs.iter().any(|e| e.contains("no `routes`")), "{errs:?}");
}

#[test]
fn syntax_errors_have_positions() {
    let errs = errors("routes:\n  - name: [unclosed\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("test.yaml:"), "{errs:?}");
    assert!(
        errs[0]
            .split(':')
            .nth(1)
            .is_some_and(|l| l.parse::<usize>().is_ok()),
        "{errs:?}"
    );
}

#[test]
fn secrets_never_appear_in_errors() {
    // A secret given where a list of strings is expected, and a secret expanded from the
    // environment into a field that rejects it.
    let text = "\
upstream: http://127.0.0.1:1
routes:
  - name: a
    path: /a
    provider: mailgun
    secrets: {oops: literal-SECRETVALUE}
  - name: b
    path: /b
    provider: mailgun
    secrets: [k]
    forward_body: \"${MG_KEY}\"
  - name: c
    path: /c
    provider: mailgun
    secrets: [\"\"]
";
    let errs = errors(text).join("\n");
    assert!(!errs.contains("SECRETVALUE"), "{errs}");
    assert!(errs.contains("routes[0].secrets"), "{errs}");
    assert!(errs.contains("routes[1].forward_body"), "{errs}");
    assert!(
        errs.contains("every secret must be a non-empty string"),
        "{errs}"
    );
}

#[test]
fn secrets_are_redacted_in_debug_and_summary() {
    let c = load(GOOD).unwrap_or_else(|e| panic!("{e}"));
    for route in c.routes.iter() {
        assert!(!route.summary().contains("SECRETVALUE"));
        assert!(!route.summary().contains("literal-secret"));
    }
}

#[test]
fn https_and_paths_in_upstreams_are_refused() {
    let errs = errors("upstream: https://127.0.0.1:1\nroutes:\n  - {name: a, path: /a, provider: mailgun, secrets: [k]}\n");
    assert!(
        errs.iter()
            .any(|e| e.contains("https upstreams are not supported")),
        "{errs:?}"
    );
    let errs = errors("upstream: http://127.0.0.1:1/app\nroutes:\n  - {name: a, path: /a, provider: mailgun, secrets: [k]}\n");
    assert!(errs.iter().any(|e| e.contains("upstream_path")), "{errs:?}");
}

#[test]
fn the_shipped_config_is_valid() {
    let text = include_str!("../../config.yaml");
    load_str(text, "config.yaml", &super::expand::ProcessEnv).unwrap_or_else(|e| panic!("{e}"));
}

const ROUTE: &str = r#"
upstream: "http://127.0.0.1:3000"
routes:
  - name: mg
    path: /mg
    provider: mailgun
    secrets: [k]
"#;

#[test]
fn replay_defaults_to_memory() {
    let c = load(ROUTE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.replay, ReplaySettings::default());
    assert_eq!(c.replay.store, ReplayStore::Memory);
    assert!(c.replay.summary().starts_with("replay memory"));
}

#[test]
fn replay_redis_settings_load_and_never_show_the_password() {
    let text = format!(
        "replay:\n  backend: redis\n  redis_url: \"${{REDIS_URL}}\"\n  redis_prefix: \"hg:\"\n  redis_timeout: 250ms\n  on_store_error: allow\n  max_entries: 50\n{ROUTE}"
    );
    let env = Env(HashMap::from([(
        "REDIS_URL",
        "redis://:SECRETVALUE@10.0.0.7:6380/3",
    )]));
    let c = load_str(&text, "test.yaml", &env).unwrap_or_else(|e| panic!("{e}"));
    let ReplayStore::Redis(r) = &c.replay.store else {
        panic!("redis backend expected");
    };
    assert_eq!(r.url.expose(), "redis://:SECRETVALUE@10.0.0.7:6380/3");
    assert_eq!(r.display, "redis://10.0.0.7:6380/3");
    assert_eq!(r.prefix, "hg:");
    assert_eq!(r.timeout, Duration::from_millis(250));
    assert_eq!(c.replay.on_store_error, OnStoreError::Allow);
    assert_eq!(c.replay.max_entries, 50);
    let summary = c.replay.summary();
    assert!(summary.contains("redis://10.0.0.7:6380/3"), "{summary}");
    assert!(!summary.contains("SECRETVALUE"));
    assert!(!format!("{:?}", c.replay).contains("SECRETVALUE"));

    let c = load(&format!(
        "replay:\n  backend: redis\n  redis_url: redis://localhost\n{ROUTE}"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let ReplayStore::Redis(r) = &c.replay.store else {
        panic!("redis backend expected");
    };
    assert_eq!(r.prefix, DEFAULT_REDIS_PREFIX);
    assert_eq!(r.timeout, DEFAULT_REDIS_TIMEOUT);
    assert_eq!(c.replay.on_store_error, OnStoreError::Reject);
}

#[test]
fn replay_errors_are_positioned_and_redacted() {
    let errs = errors(&format!("replay:\n  backend: redis\n{ROUTE}"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("test.yaml:2:12: `replay.backend: redis` needs `replay.redis_url`"),
        "{errs:?}"
    );

    let errs = errors(&format!(
        "replay:\n  redis_url: redis://h\n  on_store_error: allow\n{ROUTE}"
    ));
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].contains(
            "test.yaml:2:3: `replay.redis_url` applies only with `replay.backend: redis`"
        ),
        "{errs:?}"
    );

    let errs = errors(&format!(
        "replay:\n  backend: redis\n  redis_url: \"ftp://user:SECRETVALUE@h\"\n  redis_timeout: 0s\n  on_store_error: maybe\n{ROUTE}"
    ));
    let all = errs.join("\n");
    assert!(!all.contains("SECRETVALUE"), "{all}");
    assert!(
        all.contains("test.yaml:5:19: `replay.on_store_error`"),
        "{all}"
    );

    // A redis_url that is not even a string: the value is not echoed either.
    let errs = errors(&format!(
        "replay:\n  backend: redis\n  redis_url: [SECRETVALUE]\n{ROUTE}"
    ));
    let all = errs.join("\n");
    assert!(!all.contains("SECRETVALUE"), "{all}");
    assert!(all.contains("`replay.redis_url`"), "{all}");

    let errs = errors(&format!(
        "replay:\n  backend: redis\n  redis_url: \"ftp://user:SECRETVALUE@h\"\n  redis_timeout: 0s\n{ROUTE}"
    ));
    let all = errs.join("\n");
    assert_eq!(errs.len(), 2, "{all}");
    assert!(!all.contains("SECRETVALUE"), "{all}");
    assert!(
        all.contains("test.yaml:3:14: `replay.redis_url`: not a Redis URL"),
        "{all}"
    );
    assert!(
        all.contains("test.yaml:4:18: `replay.redis_timeout` must be more than 0"),
        "{all}"
    );
}

#[test]
fn expanded_values_never_appear_in_errors() {
    // Found by fuzz/fuzz_targets/config.rs: a misindented route merged `secrets:` into the
    // provider name, and "unknown provider" echoed the expanded key. Every error that quotes
    // a value (addresses, upstreams, provider names, duplicate names and paths) hides it when
    // it came from `${...}`, and still quotes it when it was written literally.
    let text = "\
listen: \"${MG_KEY}\"
admin_listen: \"x${file:/run/secrets/mg}\"
upstream: \"ftp://${MG_KEY}\"
routes:
  - {name: a, path: /a, provider: \"mailgun ${MG_KEY}\", secrets: [k]}
  - {name: \"${MG_KEY}\", path: \"/${MG_KEY}\", provider: mailgun, secrets: [k], upstream: \"http://127.0.0.1:1\"}
  - {name: \"${MG_KEY}\", path: \"/${MG_KEY}\", provider: mailgun, secrets: [k], upstream: \"http://127.0.0.1:1\"}
  - {name: u, path: /u, provider: mailgun, secrets: [k], upstream: \"ftp://${MG_KEY}\"}
  - {name: l, path: /l, provider: nosuch, secrets: [k]}
  - {name: c1, path: /c, provider: mailgun, secrets: [k], upstream: \"http://127.0.0.1:1\"}
  - {name: c2, path: /c, provider: mailgun, secrets: [k], upstream: \"http://127.0.0.1:1\"}
";
    let errs = errors(text).join("\n");
    assert!(!errs.contains("SECRETVALUE"), "{errs}");
    for hidden in [
        "`listen`: (value from ${...}, not shown)",
        "`admin_listen`: (value from ${...}, not shown)",
        "`upstream`: not an http://HOST:PORT upstream (value from ${...}, not shown)",
        "unknown provider (value from ${...}, not shown)",
        "route name (value from ${...}, not shown) is already used by routes[1]",
        "path (value from ${...}, not shown) is already routed by routes[1]",
        "`routes[3].upstream`: not an http://HOST:PORT upstream (value from",
    ] {
        assert!(errs.contains(hidden), "{hidden}\n{errs}");
    }
    assert!(errs.contains("unknown provider `nosuch`"), "{errs}");
    assert!(
        errs.contains("path `/c` is already routed by routes[5]"),
        "{errs}"
    );
}

#[test]
fn provider_option_errors_never_quote_expanded_values() {
    // Providers' own option errors quote the value (`public_url`, header names); the loader
    // hides it when it came from `${...}`, and keeps the provider's message otherwise.
    let text = "\
upstream: http://127.0.0.1:1
routes:
  - {name: a, path: /a, provider: twilio, secrets: [k], public_url: \"ftp://${MG_KEY}\"}
  - {name: b, path: /b, provider: hmac, secrets: [k], header: \"X ${MG_KEY}\"}
  - {name: c, path: /c, provider: twilio, secrets: [k], public_url: \"ftp://literal\"}
";
    let errs = errors(text).join("\n");
    assert!(!errs.contains("SECRETVALUE"), "{errs}");
    assert!(
        errs.contains("`routes[0].public_url`: invalid value (from ${...}, not shown)"),
        "{errs}"
    );
    assert!(
        errs.contains("`routes[1].header`: invalid value (from ${...}, not shown)"),
        "{errs}"
    );
    assert!(
        errs.contains("`ftp://literal` must be an http://"),
        "{errs}"
    );
}

#[test]
fn replay_tls_files_are_read_checked_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["redis.internal".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ca = file("ca.pem", &cert.pem());
    let client = file("client.pem", &cert.pem());
    let key_pem = key.serialize_pem();
    let client_key = file("client.key", &key_pem);
    let not_pem = file("not.pem", "SECRETVALUE, not PEM at all\n");
    let missing = dir.path().join("missing.pem").display().to_string();

    let tls_config = |url: &str, lines: &str| {
        format!("replay:\n  backend: redis\n  redis_url: \"{url}\"\n{lines}{ROUTE}")
    };
    let c = load(&tls_config(
        "rediss://:SECRETVALUE@redis.internal:6380/2",
        &format!("  redis_tls_ca_cert_file: \"{ca}\"\n  redis_tls_cert_file: \"{client}\"\n  redis_tls_key_file: \"{client_key}\"\n"),
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let ReplayStore::Redis(r) = &c.replay.store else {
        panic!("redis backend expected");
    };
    assert_eq!(r.display, "rediss://redis.internal:6380/2");
    let tls = &r.tls;
    assert!(!tls.is_empty(), "TLS material");
    assert_eq!(tls.ca_cert.as_deref(), Some(cert.pem().as_bytes()));
    let id = tls.client.as_ref().expect("client certificate");
    assert_eq!(id.key.expose(), key_pem);
    let summary = c.replay.summary();
    assert!(
        summary
            .contains("rediss://redis.internal:6380/2 with a private CA and a client certificate"),
        "{summary}"
    );
    let debug = format!("{:?}", c.replay);
    assert!(
        !debug.contains("PRIVATE KEY"),
        "the key is redacted: {debug}"
    );
    assert!(!debug.contains("SECRETVALUE"));

    // rediss:// alone trusts the system's roots.
    let c = load(&tls_config("rediss://redis.internal", "")).unwrap_or_else(|e| panic!("{e}"));
    let ReplayStore::Redis(r) = &c.replay.store else {
        panic!("redis backend expected");
    };
    assert_eq!(
        (r.display.as_str(), r.tls == RedisTls::default()),
        ("rediss://redis.internal:6379/0", true)
    );

    // Turning verification off is refused, without quoting the URL.
    let all = errors(&tls_config(
        "rediss://:SECRETVALUE@redis.internal/#insecure",
        "",
    ))
    .join("\n");
    assert!(
        all.contains("test.yaml:3:14: `replay.redis_url`: `#insecure`"),
        "{all}"
    );
    assert!(!all.contains("SECRETVALUE"), "{all}");

    // TLS files with a plain redis:// URL; a certificate without its key; unreadable and
    // non-PEM files: all reported at once, with positions, never with a file's contents.
    let errs = errors(&tls_config(
        "redis://redis.internal",
        &format!("  redis_tls_ca_cert_file: \"{ca}\"\n"),
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("test.yaml:4:3: `replay.redis_tls_ca_cert_file` applies only to a `rediss://` (TLS) `redis_url`"),
        "{errs:?}"
    );
    let errs = errors(&tls_config(
        "rediss://redis.internal",
        &format!("  redis_tls_ca_cert_file: \"{missing}\"\n  redis_tls_cert_file: \"{not_pem}\"\n"),
    ));
    let all = errs.join("\n");
    assert_eq!(errs.len(), 3, "{all}");
    assert!(
        all.contains(&format!(
            "test.yaml:4:27: `replay.redis_tls_ca_cert_file`: cannot read `{missing}`"
        )),
        "{all}"
    );
    assert!(all.contains("test.yaml:5:3: `replay.redis_tls_cert_file` and `replay.redis_tls_key_file` go together"), "{all}");
    assert!(
        all.contains(&format!(
            "test.yaml:5:24: `replay.redis_tls_cert_file`: `{not_pem}` holds no certificate in PEM"
        )),
        "{all}"
    );
    let all = errors(&tls_config(
        "rediss://redis.internal",
        &format!("  redis_tls_cert_file: \"{client}\"\n  redis_tls_key_file: \"{not_pem}\"\n"),
    ))
    .join("\n");
    assert!(
        all.contains(&format!(
            "test.yaml:5:23: `replay.redis_tls_key_file`: `{not_pem}` holds no private key in PEM"
        )),
        "{all}"
    );
    assert!(!all.contains("SECRETVALUE"), "{all}");

    // A path built from `${...}` is not shown (found by the config fuzzer: the key file's
    // path could carry a secret into the error).
    let all = errors(&tls_config(
        "rediss://redis.internal",
        "  redis_tls_cert_file: /nonexistent/c.pem\n  redis_tls_key_file: \"/nonexistent/${MG_KEY}\"\n",
    ))
    .join("\n");
    assert!(!all.contains("SECRETVALUE"), "{all}");
    assert!(
        all.contains("`replay.redis_tls_key_file`: cannot read (value from ${...}, not shown)"),
        "{all}"
    );

    // Only with the redis backend.
    let errs = errors(&format!(
        "replay:\n  redis_tls_ca_cert_file: \"{ca}\"\n{ROUTE}"
    ));
    assert!(
        errs[0].contains("test.yaml:2:3: `replay.redis_tls_ca_cert_file` applies only with `replay.backend: redis`"),
        "{errs:?}"
    );
}

#[test]
fn admin_and_public_listeners_must_not_share_a_port() {
    let with = |listen: &str| format!("{listen}{ROUTE}");
    let all = errors(&with(
        "listen: \"127.0.0.1:9000\"\nadmin_listen: \"127.0.0.1:9000\"\n",
    ))
    .join("\n");
    assert!(
        all.contains(
            "test.yaml:2:15: `admin_listen` `127.0.0.1:9000` overlaps `listen` `127.0.0.1:9000`"
        ),
        "{all}"
    );
    // A wildcard address overlaps every address on its port; the default admin port too.
    let all = errors(&with("listen: \"0.0.0.0:9090\"\n")).join("\n");
    assert!(
        all.contains(
            "test.yaml:1:9: `admin_listen` `127.0.0.1:9090` overlaps `listen` `0.0.0.0:9090`"
        ),
        "{all}"
    );
    // Same port on two different specific addresses is fine, as are different ports.
    load(&with(
        "listen: \"127.0.0.2:9000\"\nadmin_listen: \"127.0.0.1:9000\"\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    load(&with(
        "listen: \"0.0.0.0:8080\"\nadmin_listen: \"127.0.0.1:9090\"\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn the_spool_on_redis_needs_the_replay_redis_and_a_lease_longer_than_an_attempt() {
    // Loads: the lease by default is the longest attempt and a margin.
    let c = load(&format!(
        "replay:\n  backend: redis\n  redis_url: redis://localhost\nspool:\n  backend: redis\n{ROUTE}"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let s = c.spool.expect("a spool");
    assert_eq!(s.backend, SpoolStoreKind::Redis);
    let longest = longest_attempt(&Timeouts::default(), DEFAULT_REDIS_TIMEOUT);
    assert!(s.redis_lease > longest, "{:?}", s.redis_lease);
    assert!(!s.redis_allow_volatile);
    assert!(
        s.summary().contains("on the replay guard's Redis"),
        "{}",
        s.summary()
    );
    // The embedded store stays the default.
    let c = load(&format!("spool:\n  workers: 2\n{ROUTE}")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.spool.expect("a spool").backend, SpoolStoreKind::Embedded);

    // Every error together, each at its place.
    let errs = errors(&format!(
        "spool:\n  backend: redis\n  path: /tmp/x.redb\n  redis_lease: 10s\n{ROUTE}"
    ));
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        errs[0].starts_with("test.yaml:2:12: `spool.backend: redis` needs `replay.backend: redis`"),
        "{errs:?}"
    );
    assert!(
        errs[1]
            .starts_with("test.yaml:3:3: `spool.path` applies only with `spool.backend: embedded`"),
        "{errs:?}"
    );
    assert!(
        errs[2].starts_with("test.yaml:4:16: `spool.redis_lease` must be longer than an attempt"),
        "{errs:?}"
    );
    let errs = errors(&format!("spool:\n  redis_allow_volatile: true\n{ROUTE}"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("`spool.redis_allow_volatile` applies only with `spool.backend: redis`"),
        "{errs:?}"
    );
}

#[test]
fn spool_keys_outlive_their_messages_and_the_writers_queue_is_bounded() {
    // A key forgotten while its message may still be delivered would let a copy in as a
    // second message.
    let errs = errors(&format!(
        "spool:\n  max_age: 2d\n  dedup_ttl: 1d\n  max_pending_bytes: 0\n{ROUTE}"
    ));
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with(
            "test.yaml:3:14: `spool.dedup_ttl` (1day) must be at least `spool.max_age` (2days)"
        ),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("test.yaml:4:22: `spool.max_pending_bytes` must be more than 0"),
        "{errs:?}"
    );
    // Without `dedup_ttl` written, the error is at `max_age`: the line to change.
    let errs = errors(&format!("spool:\n  max_age: 30d\n{ROUTE}"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("test.yaml:2:12: `spool.dedup_ttl`"),
        "{errs:?}"
    );
    let c = load(&format!("spool:\n  max_age: 7d\n{ROUTE}")).unwrap_or_else(|e| panic!("{e}"));
    let s = c.spool.expect("a spool");
    assert_eq!(s.max_pending_bytes, 64 << 20);
    // The bound is the embedded store's: Redis bounds each write by its timeout.
    let errs = errors(&format!(
        "replay:\n  backend: redis\n  redis_url: redis://localhost\nspool:\n  backend: redis\n  max_pending_bytes: 1000\n{ROUTE}"
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("`spool.max_pending_bytes` applies only with `spool.backend: embedded`"),
        "{errs:?}"
    );
}
