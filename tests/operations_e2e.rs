//! Operating hookguard: reload, sign, check, secrets from files, allow_ips, logs and metrics.
//!
//! Longer than 500 lines: one test per operational promise (signals, reload, check, probe,
//! logs), sharing the process harness.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn hookguard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hookguard"))
        .args(args)
        .output()
        .expect("run hookguard")
}

fn reload_metric(proxy: &Proxy, result: &str) -> f64 {
    proxy.metric(&format!(
        "hookguard_config_reloads_total{{result=\"{result}\"}}"
    ))
}

/// Waits until the reload counter for `result` reaches `n`.
fn wait_reloads(proxy: &Proxy, result: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while reload_metric(proxy, result) < n {
        assert!(
            Instant::now() < deadline,
            "no reload ({result}) seen:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_config(proxy: &Proxy, body: &str) {
    let config = format!(
        "listen: \"127.0.0.1:{}\"\nadmin_listen: \"127.0.0.1:{}\"\nthreads: 2\n{body}",
        proxy.port, proxy.admin_port
    );
    std::fs::write(proxy.config_path(), config).unwrap();
}

#[test]
fn sighup_with_a_changed_secret_switches_keys_for_new_requests() {
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "", ""));
    let new_key = "key-rotated-after-reload";
    assert_eq!(
        post(proxy.port, "/mg", &[JSON], &mg_json(&token())).status,
        200
    );

    write_config(
        &proxy,
        &mailgun_config(&up, "", "").replace(MG_KEY, new_key),
    );
    proxy.signal("HUP");
    wait_reloads(&proxy, "ok", 1.0);

    let old = post(proxy.port, "/mg", &[JSON], &mg_json(&token()));
    assert_eq!((old.status, old.error().as_str()), (401, "bad_signature"));
    let new = post(
        proxy.port,
        "/mg",
        &[JSON],
        &mg_json_at(new_key, now(), &token(), "delivered"),
    );
    assert_eq!(new.status, 200);
    assert_eq!(up.count(), 2);
    // Wait for the reload's lines (logs are flushed in batches) before checking them.
    let log = proxy.log_when(|l| l.contains("config reloaded"));
    assert!(!log.contains(new_key), "reload logs no secret");
}

#[test]
fn sighup_with_a_broken_file_keeps_the_old_config() {
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "", ""));
    std::fs::write(
        proxy.config_path(),
        format!("listen: \"127.0.0.1:{}\"\nroutes:\n  - name: mg\n    path: /mg\n    provider: nope\n    secrets: [\"{MG_KEY}\"]\n", proxy.port),
    )
    .unwrap();
    proxy.signal("HUP");
    wait_reloads(&proxy, "error", 1.0);
    assert_eq!(reload_metric(&proxy, "ok"), 0.0);
    assert_eq!(
        post(proxy.port, "/mg", &[JSON], &mg_json(&token())).status,
        200,
        "old config serves"
    );
    let log = proxy.log_when(|l| l.contains("config reload failed"));
    assert!(
        log.contains("config.yaml:5:15: unknown provider `nope`"),
        "errors logged with positions:\n{log}"
    );
    assert!(!log.contains(MG_KEY));
}

#[test]
fn a_request_in_flight_finishes_on_the_config_it_started_with() {
    let old_up = Upstream::start();
    old_up.script([Reply::Slow(Duration::from_millis(1500), 200)]);
    let new_up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&old_up, "", ""));
    let port = proxy.port;
    let mut conn = Conn::open(port).unwrap();
    let body = mg_json(&token());
    let in_flight = std::thread::spawn(move || {
        let first = conn.post("/mg", &[JSON], &body).unwrap();
        // The same keep-alive connection, after the reload: the new config applies.
        let second = conn.post("/mg", &[JSON], &mg_json(&token())).unwrap();
        (first.status, second.status)
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while old_up.count() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    write_config(&proxy, &mailgun_config(&new_up, "", ""));
    proxy.signal("HUP");
    wait_reloads(&proxy, "ok", 1.0);
    assert_eq!(
        in_flight.join().unwrap(),
        (200, 200),
        "no request or connection dropped"
    );
    assert_eq!(
        old_up.count(),
        1,
        "the request in flight went to the upstream it started with"
    );
    assert_eq!(
        new_up.count(),
        1,
        "the next request on the same connection uses the new config"
    );
}

#[test]
fn the_printed_sign_command_is_forwarded() {
    if Command::new("curl").arg("--version").output().is_err() {
        panic!("curl is needed for this test (the printed command uses it)");
    }
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "", ""));
    let event = proxy.dir.path().join("event.json");
    std::fs::write(
        &event,
        br#"{"event-data": {"event": "opened", "recipient": "bob@example.com"}}"#,
    )
    .unwrap();
    let form = proxy.dir.path().join("event.form");
    std::fs::write(
        &form,
        b"event=clicked&recipient=bob%40example.com&tag=a&tag=b",
    )
    .unwrap();
    for body in [&event, &form] {
        let out = hookguard(&[
            "sign",
            "--config",
            proxy.config_path().to_str().unwrap(),
            "--route",
            "mg",
            "--body",
            body.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cmd = String::from_utf8(out.stdout).unwrap();
        assert!(cmd.starts_with("curl "), "{cmd}");
        assert!(
            !cmd.contains(MG_KEY),
            "the command carries a signature, not the key"
        );
        let run = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
        let response = String::from_utf8_lossy(&run.stdout);
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        // Run again: the same token is now a replay, answered as a duplicate.
        let again = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
        let again = String::from_utf8_lossy(&again.stdout);
        assert!(again.starts_with("HTTP/1.1 200"), "{again}");
        assert!(again.ends_with("{\"status\":\"duplicate\"}"), "{again}");
    }
    let got = up.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].json()["event-data"]["event"], "opened");
    assert_eq!(got[1].json()["tag"], serde_json::json!(["a", "b"]));

    let out = hookguard(&[
        "sign",
        "--config",
        proxy.config_path().to_str().unwrap(),
        "--route",
        "nope",
        "--body",
        event.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no route named `nope` (routes: mg)"));
}

#[test]
fn secrets_from_environment_and_files() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("mailgun-key");
    std::fs::write(&secret_file, "key-from-a-mounted-file\n").unwrap();
    let body = format!(
        "upstream: \"{}\"\nroutes:\n  - name: mg\n    path: /mg\n    provider: mailgun\n    secrets: [\"${{MG_ENV_KEY}}\", \"${{file:{}}}\"]\n",
        up.url(),
        secret_file.display()
    );
    let proxy = Proxy::start_with(&body, &[], &[("MG_ENV_KEY", "key-from-the-environment")]);
    for key in ["key-from-the-environment", "key-from-a-mounted-file"] {
        let resp = post(
            proxy.port,
            "/mg",
            &[JSON],
            &mg_json_at(key, now(), &token(), "delivered"),
        );
        assert_eq!(resp.status, 200, "{key}");
    }
    let resp = post(
        proxy.port,
        "/mg",
        &[JSON],
        &mg_json_at("key-from-a-mounted-file\n", now(), &token(), "x"),
    );
    assert_eq!(
        resp.status, 401,
        "the file's trailing newline is not part of the key"
    );
    // All three requests logged (lines are flushed in batches) before looking for secrets.
    let log = proxy.log_when(|l| l.matches("hookguard::request").count() >= 3);
    let everything = format!("{log}{}", proxy.metrics());
    for secret in ["key-from-the-environment", "key-from-a-mounted-file"] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

#[test]
fn startup_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "upstream: http://127.0.0.1:1\nroutes:\n  - name: mg\n    path: /mg\n    provider: mailgun\n    secrets: [\"${UNSET_FOR_TEST}\"]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hookguard"))
        .args(["--config", path.to_str().unwrap()])
        .env_remove("UNSET_FOR_TEST")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config.yaml:6:15: environment variable `UNSET_FOR_TEST` is not set"),
        "{stderr}"
    );

    // A port already in use is a clear error too, not a panic in a service thread.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    std::fs::write(
        &path,
        format!("listen: \"127.0.0.1:{port}\"\nupstream: http://127.0.0.1:1\nroutes:\n  - {{name: mg, path: /mg, provider: mailgun, secrets: [k]}}\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hookguard"))
        .args(["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(&format!("cannot listen on 127.0.0.1:{port} (listen)")));
}

#[test]
fn check_prints_routes_or_positioned_errors_and_never_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "upstream: http://127.0.0.1:3000\nroutes:\n  - name: mg\n    path: /mg\n    provider: mailgun\n    secrets: [\"super-secret-value\"]\n    tolerance: 2m\n",
    )
    .unwrap();
    let out = hookguard(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("route mg: POST /mg -> http://127.0.0.1:3000"),
        "{stdout}"
    );
    assert!(stdout.contains("1 secret(s), tolerance 2m"), "{stdout}");
    assert!(!stdout.contains("super-secret-value"));

    std::fs::write(
        &path,
        "upstream: http://127.0.0.1:3000\nroutes:\n  - name: mg\n    path: /mg\n    provider: mailgun\n    secrets: {bad: super-secret-value}\n    colour: red\n",
    )
    .unwrap();
    let out = hookguard(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "every error at once: {stdout}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("config.yaml:6:14: `routes[0].secrets`")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("config.yaml:7:5: unknown key `colour`")),
        "{stdout}"
    );
    assert!(!stdout.contains("super-secret-value"));
}

#[test]
fn allow_ips_uses_the_socket_address_unless_behind_a_trusted_proxy() {
    let up = Upstream::start();
    // 127.0.0.1 is not in the allowed range, and no proxy is trusted: X-Forwarded-For is ignored.
    let proxy = Proxy::start(&mailgun_config(
        &up,
        "",
        "    allow_ips: [\"203.0.113.0/24\"]\n",
    ));
    let spoofed = post(
        proxy.port,
        "/mg",
        &[JSON, ("X-Forwarded-For", "203.0.113.5")],
        &mg_json(&token()),
    );
    assert_eq!(
        (spoofed.status, spoofed.error().as_str()),
        (403, "ip_not_allowed")
    );
    assert_eq!(up.count(), 0);

    // Behind a trusted proxy (127.0.0.1), the address it recorded counts.
    let proxy = Proxy::start(&mailgun_config(
        &up,
        "trusted_proxies: [\"127.0.0.1\"]",
        "    allow_ips: [\"203.0.113.0/24\"]\n",
    ));
    let ok = post(
        proxy.port,
        "/mg",
        &[JSON, ("X-Forwarded-For", "198.51.100.1, 203.0.113.5")],
        &mg_json(&token()),
    );
    assert_eq!(ok.status, 200);
    let outside = post(
        proxy.port,
        "/mg",
        &[JSON, ("X-Forwarded-For", "203.0.113.5, 198.51.100.1")],
        &mg_json(&token()),
    );
    assert_eq!(
        outside.status, 403,
        "only the rightmost untrusted hop counts"
    );
    let none = post(proxy.port, "/mg", &[JSON], &mg_json(&token()));
    assert_eq!(none.status, 403, "the trusted proxy itself is not allowed");
    assert_eq!(up.count(), 1);
    assert_eq!(
        up.received()[0].header("x-forwarded-for"),
        Some("198.51.100.1, 203.0.113.5, 127.0.0.1")
    );
}

#[test]
fn probe_reports_health_and_readiness_and_config_comes_from_the_environment() {
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "", ""));
    // A copy that outlives the proxy's own directory.
    let keep = tempfile::tempdir().unwrap();
    let config = keep.path().join("config.yaml");
    std::fs::copy(proxy.config_path(), &config).unwrap();
    let probe = |path: &str| {
        Command::new(env!("CARGO_BIN_EXE_hookguard"))
            .args(["probe", "--path", path])
            // The config path from the environment, as in the container image.
            .env("HOOKGUARD_CONFIG", &config)
            .output()
            .unwrap()
    };
    let ok = probe("/readyz");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(probe("/healthz").status.code(), Some(0));
    let missing = probe("/nope");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nope: 404"));
    drop(proxy);
    let down = probe("/healthz");
    assert_eq!(down.status.code(), Some(1), "nothing listens any more");
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("hookguard probe:"),
        "a connection error, not a config error"
    );
}

/// The contract's command line beyond `check` and `sign --body`: `--version`, `--help`,
/// `config.yaml` in the working directory by default, and `sign` reading the body from stdin.
#[test]
fn version_help_default_config_and_sign_from_stdin() {
    let version = hookguard(&["--version"]);
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("hookguard {}", env!("CARGO_PKG_VERSION"))
    );
    let help = hookguard(&["--help"]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for word in ["check", "sign", "--config"] {
        assert!(help.contains(word), "--help names {word}:\n{help}");
    }

    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "", ""));
    // No --config (and no HOOKGUARD_CONFIG): config.yaml in the working directory.
    let out = Command::new(env!("CARGO_BIN_EXE_hookguard"))
        .arg("check")
        .current_dir(proxy.dir.path())
        .env_remove("HOOKGUARD_CONFIG")
        .output()
        .expect("run hookguard");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("route mg: POST /mg"));

    // `sign` without --body signs what arrives on stdin.
    let mut sign = Command::new(env!("CARGO_BIN_EXE_hookguard"))
        .args(["sign", "--config"])
        .arg(proxy.config_path())
        .args(["--route", "mg"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run hookguard sign");
    {
        use std::io::Write;
        let mut stdin = sign.stdin.take().expect("stdin");
        stdin
            .write_all(br#"{"event-data": {"event": "from-stdin"}}"#)
            .unwrap();
    }
    let out = sign.wait_with_output().expect("sign output");
    assert!(out.status.success());
    let cmd = String::from_utf8(out.stdout).unwrap();
    let run = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
    assert!(
        String::from_utf8_lossy(&run.stdout).starts_with("HTTP/1.1 200"),
        "{cmd}"
    );
    assert_eq!(up.received()[0].json()["event-data"]["event"], "from-stdin");
}

/// `RUST_LOG`, or `--log-level` over it, sets the verbosity: at `warn` no per-request line.
#[test]
fn log_verbosity_follows_rust_log_and_log_level() {
    let up = Upstream::start();
    let config = mailgun_config(&up, "", "");
    /// What is tried, the arguments, the environment, whether request lines are logged.
    type Run<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], bool);
    let runs: [Run; 3] = [
        ("RUST_LOG=info", &[], &[], true),
        ("RUST_LOG=warn", &[], &[("RUST_LOG", "warn")], false),
        ("--log-level warn", &["--log-level", "warn"], &[], false),
    ];
    for (what, args, env, request_lines) in runs {
        let mut proxy = Proxy::start_with(&config, args, env);
        assert_eq!(
            post(proxy.port, "/mg", &[JSON], &mg_json(&token())).status,
            200
        );
        // Every buffered line is written out by the time the process exits.
        proxy.signal("TERM");
        assert_eq!(proxy.wait_exit(Duration::from_secs(5)), Some(0), "{what}");
        let log = proxy.log();
        assert_eq!(
            log.contains("hookguard::request"),
            request_lines,
            "{what}:\n{log}"
        );
    }
}
