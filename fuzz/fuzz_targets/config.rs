//! `config::load_str` on arbitrary text, with a fake environment. Loading never panics; an
//! error always has a message; the value of a secret (`${MG_KEY}`, `${file:/run/secrets/mg}`)
//! never appears in an error or in a provider's summary unless the text itself contains it.
//!
//! `load_str` resolves host names (`listen`, `upstream`), so this target refuses to run with a
//! network route: run it under `unshare -n` (see fuzz/README.md), which keeps fuzzed host
//! names from ever becoming DNS queries.
#![no_main]

use std::sync::Once;

use hookguard::config::expand::Environment;
use hookguard::config::load_str;
use libfuzzer_sys::fuzz_target;

const MARKER: &str = "fz7Q4secret";

struct FakeEnv;

impl Environment for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "MG_KEY" => Some(format!("key-{MARKER}")),
            "UPSTREAM" => Some("http://127.0.0.1:3000".into()),
            "LISTEN" => Some("127.0.0.1:8080".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }
    fn read_file(&self, path: &str) -> std::io::Result<String> {
        match path {
            "/run/secrets/mg" => Ok(format!("file-{MARKER}\n")),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "No such file",
            )),
        }
    }
}

fn no_network() {
    static CHECK: Once = Once::new();
    CHECK.call_once(|| {
        let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        assert!(
            routes.lines().skip(1).all(|l| l.trim().is_empty()),
            "run the config target under `unshare -n` (fuzzed host names would become DNS queries)"
        );
    });
}

fuzz_target!(|data: &[u8]| {
    no_network();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let guard = !text.contains("7Q4");
    match load_str(text, "fuzz.yaml", &FakeEnv) {
        Ok(config) => {
            for route in config.routes.iter() {
                let summary = route.provider.summary();
                assert!(
                    !guard || !summary.contains(MARKER),
                    "a provider summary shows a secret: {summary}"
                );
                let _ = route.summary();
            }
        }
        Err(errors) => {
            let shown = errors.to_string();
            assert!(!errors.0.is_empty(), "an error is never empty");
            assert!(
                !guard || !shown.contains(MARKER),
                "an error shows an expanded secret:\n{shown}"
            );
        }
    }
});
