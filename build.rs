//! Tells the tests whether `redis-server` is on PATH. Without it, the tests that need a Redis
//! of their own are marked ignored, with the reason, instead of passing without running
//! (`cargo test` lists them as ignored; `apt-get install redis-server` and they run).

use std::env;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(hookguard_redis)");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-changed=build.rs");
    let path = env::var_os("PATH").unwrap_or_default();
    let mut found = false;
    for dir in env::split_paths(&path) {
        // A directory's modification time changes when a program is installed into it.
        if dir.is_dir() {
            println!("cargo::rerun-if-changed={}", dir.display());
        }
        found |= dir.join("redis-server").is_file();
    }
    if found {
        println!("cargo::rustc-cfg=hookguard_redis");
    }
}
