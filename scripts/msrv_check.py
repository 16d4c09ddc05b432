#!/usr/bin/env python3
"""The minimum Rust version, checked without another toolchain.

hookguard declares `rust-version` in Cargo.toml. Two things could make that a lie:
- a dependency, as pinned by Cargo.lock, that needs a newer compiler: every package the
  build uses (default features, dev-dependencies included) is compared with it here;
- our own code using a standard-library API stabilized later: clippy's `incompatible_msrv`
  lint reports that, and CI runs clippy with `-D warnings`.

Usage: scripts/msrv_check.py   (exit 1 and a list when a dependency needs more)
"""
import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def version(text):
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    ours = manifest["package"]["rust-version"]
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout
    )
    too_new = sorted(
        (p["rust_version"], p["name"], p["version"])
        for p in meta["packages"]
        if p.get("rust_version") and version(p["rust_version"]) > version(ours)
    )
    if too_new:
        print(f"rust-version is {ours}, but Cargo.lock pins packages that need more:")
        for rv, name, v in too_new:
            print(f"  {name} {v}: rust-version {rv}")
        sys.exit(1)
    newest = max(
        (version(p["rust_version"]), p["name"]) for p in meta["packages"] if p.get("rust_version")
    )
    print(
        f"rust-version {ours}: every locked dependency fits "
        f"(the most demanding: {newest[1]}, {'.'.join(map(str, newest[0][:2]))})"
    )


if __name__ == "__main__":
    main()
