#!/usr/bin/env python3
"""Helpers of deploy/check.sh: cross-file consistency of the deployment files, and a run of the
container image's file layout without Docker.

Subcommands (each prints `PASS <what>` / `FAIL <what>: <why>` lines; check.sh counts them):

  consistency             static cross-checks between the Dockerfile, the shipped configs, the
                          Kubernetes manifests, compose.yaml and the systemd unit
  build-command           prints the `cargo build` command of deploy/Dockerfile, one word a line
  docker-context --out D  mirrors the Docker build context (COPY . . through
                          Dockerfile.dockerignore) into D, for the build to run in
  runtime --bin PATH      must run as root inside `unshare --mount --net --fork`: builds a
                          distroless-like read-only root for each deployment target and runs
                          `hookguard check` in it, then runs the image's entrypoint under strace
                          and sends signed webhooks through it (the "smoke" test)
  exec-in-root ...        internal: chroot, drop to a user, exec (used under strace)

Needs PyYAML (installed with checkov into check.sh's venv), except `build-command`.
"""

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

try:
    import yaml  # every subcommand but build-command (which check.sh runs before its venv exists)
except ImportError:
    yaml = None

DEPLOY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(DEPLOY)

RESULTS = {"pass": 0, "fail": 0}


def report(ok, what, why=""):
    if ok:
        RESULTS["pass"] += 1
        print("PASS %s" % what, flush=True)
    else:
        RESULTS["fail"] += 1
        print("FAIL %s: %s" % (what, why), flush=True)
    return ok


def expect(what, cond, why=""):
    return report(bool(cond), what, why)


def path(*parts):
    return os.path.join(DEPLOY, *parts)


def read(p):
    with open(p, encoding="utf-8") as f:
        return f.read()


# ------------------------------------------------------------------------------------------
# Parsing the files
# ------------------------------------------------------------------------------------------


def parse_duration(text):
    """humantime-style durations as the configs use them: 30s, 5m, 1h, 1500ms, 1m30s."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+)\s*(ms|s|m|h)", str(text)):
        if m.start() != pos:
            raise ValueError("unparsable duration %r" % text)
        total += int(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(str(text)) or pos == 0:
        raise ValueError("unparsable duration %r" % text)
    return total


def config_refs(text):
    """The ${NAME} and ${file:/path} references of a hookguard config (not $${...}). Like
    hookguard, it looks at the parsed YAML's string values only, not at comments."""
    env, files = [], []

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str):
            for m in re.finditer(r"(?<!\$)\$\{([^}]*)\}", v):
                ref = m.group(1)
                if ref.startswith("file:"):
                    files.append(ref[len("file:"):])
                else:
                    env.append(ref)

    walk(yaml.safe_load(text))
    return env, files


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def host_of(addr):
    return str(addr).rsplit(":", 1)[0]


class Dockerfile:
    """Just enough of a Dockerfile parser for our own file: instructions per stage."""

    def __init__(self, text):
        self.stages = []  # [(from_line, [(INSTR, args)])]
        logical, buf = [], ""
        for line in text.splitlines():
            stripped = line.strip()
            if not buf and (not stripped or stripped.startswith("#")):
                continue
            if buf and stripped.startswith("#"):
                continue
            if stripped.endswith("\\"):
                buf += stripped[:-1] + " "
                continue
            logical.append(buf + stripped)
            buf = ""
        for line in logical:
            instr, _, args = line.partition(" ")
            instr = instr.upper()
            if instr == "FROM":
                self.stages.append((args.strip(), []))
            elif self.stages:
                self.stages[-1][1].append((instr, args.strip()))
            # ARGs before the first FROM are ignored here.

    def runtime(self):
        return self.stages[-1]

    def all(self, instr, stage=None):
        stages = [stage] if stage is not None else self.stages
        return [a for s in stages for (i, a) in s[1] if i == instr]

    @staticmethod
    def exec_form(args):
        return json.loads(args) if args.startswith("[") else shlex.split(args)

    def env(self, stage):
        out = {}
        for args in self.all("ENV", stage):
            for word in shlex.split(args):
                k, _, v = word.partition("=")
                out[k] = v
        return out

    def copies(self, stage):
        """[(from_stage or None, src, dest)]"""
        out = []
        for args in self.all("COPY", stage):
            words = shlex.split(args)
            frm = None
            while words and words[0].startswith("--"):
                if words[0].startswith("--from="):
                    frm = words[0][len("--from="):]
                words = words[1:]
            *srcs, dest = words
            for s in srcs:
                out.append((frm, s, dest))
        return out


def dockerfile():
    return Dockerfile(read(path("Dockerfile")))


def build_command(df):
    """The `cargo build ...` words of the build stage's RUN (up to `&&`)."""
    for args in df.all("RUN"):
        if "cargo build" in args:
            words = shlex.split(args)
            i = words.index("cargo")
            cmd = []
            for w in words[i:]:
                if w in ("&&", ";", "||"):
                    break
                cmd.append(w)
            return cmd
    raise SystemExit("no `cargo build` in deploy/Dockerfile")


def dockerignore_patterns():
    out = []
    for line in read(path("Dockerfile.dockerignore")).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            neg = line.startswith("!")
            out.append((neg, line.lstrip("!").strip("/")))
    return out


def in_context(rel, patterns):
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for neg, pat in patterns:
        if any(fnmatch.fnmatchcase(p, pat) for p in prefixes):
            included = neg
    return included


def cmd_docker_context(a):
    """Mirrors the build context deploy/Dockerfile sees (`COPY . .` filtered by
    Dockerfile.dockerignore) into a.out, keeping mtimes so that cargo reuses its build."""
    patterns = dockerignore_patterns()
    wanted = set()
    for top in sorted(os.listdir(REPO)):
        # Prune what is excluded and cannot be re-included (target/, .git, ...).
        if not in_context(top, patterns) and not any(neg and p.startswith(top + "/") for neg, p in patterns):
            continue
        full = os.path.join(REPO, top)
        if os.path.isfile(full):
            wanted.add(top)
            continue
        for d, dirs, files in os.walk(full):
            for f in files:
                rel = os.path.relpath(os.path.join(d, f), REPO)
                if in_context(rel, patterns):
                    wanted.add(rel)
    os.makedirs(a.out, exist_ok=True)
    for d, dirs, files in os.walk(a.out, topdown=False):
        for f in files:
            rel = os.path.relpath(os.path.join(d, f), a.out)
            if rel not in wanted:
                os.remove(os.path.join(d, f))
        if d != a.out and not os.listdir(d):
            os.rmdir(d)
    for rel in sorted(wanted):
        src, dest = os.path.join(REPO, rel), os.path.join(a.out, rel)
        st = os.stat(src)
        try:
            dt = os.stat(dest)
            if dt.st_size == st.st_size and int(dt.st_mtime) == int(st.st_mtime):
                continue
        except FileNotFoundError:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(src, dest)
    print("%d files in the build context: %s" % (len(wanted), " ".join(sorted({w.split("/")[0] for w in wanted}))))
    return 0


def load_yaml_docs(p):
    with open(p, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def k8s_objects():
    objs = {}
    for name in sorted(os.listdir(path("kubernetes"))):
        if not name.endswith(".yaml") or name == "kustomization.yaml":
            continue
        for d in load_yaml_docs(path("kubernetes", name)):
            objs[(d["kind"], d["metadata"]["name"])] = (name, d)
    return objs


def systemd_unit(text):
    """{key: [values]} of the [Service] section (and the others, merged)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def env_file(p):
    out = {}
    for line in read(p).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        k, _, v = line.partition("=")
        out[k.strip()] = v
    return out


# ------------------------------------------------------------------------------------------
# Deployment targets: where each shipped config lives and what it expects around it
# ------------------------------------------------------------------------------------------


def target_docker(df):
    stage = df.runtime()
    copies = df.copies(stage)
    config_dest = next(d for (f, s, d) in copies if f is None and s.endswith(".yaml"))
    config_src = next(s for (f, s, d) in copies if f is None and s.endswith(".yaml"))
    user = df.all("USER", stage)[-1]
    uid, _, gid = user.partition(":")
    text = read(os.path.join(REPO, config_src))
    _, files = config_refs(text)
    return {
        "name": "docker image default config (%s)" % config_src,
        "config_text": text,
        "config_path": config_dest,
        "env": df.env(stage),
        "files": {f: "test-signing-key-for-%s" % os.path.basename(f) for f in files},
        "uid": int(uid),
        "gid": int(gid or uid),
        "workdir": df.all("WORKDIR", stage)[-1],
    }


def target_kubernetes():
    objs = k8s_objects()
    dep = objs[("Deployment", "legacy-app")][1]
    pod = dep["spec"]["template"]["spec"]
    hg = next(c for c in pod["containers"] if c["name"] == "hookguard")
    args = hg.get("args", [])
    config_path = args[args.index("--config") + 1]
    vols = {v["name"]: v for v in pod["volumes"]}
    text, files = None, {}
    for m in hg.get("volumeMounts", []):
        v = vols[m["name"]]
        if "configMap" in v:
            cm = objs[("ConfigMap", v["configMap"]["name"])][1]
            for key, value in cm["data"].items():
                if os.path.join(m["mountPath"], key) == config_path:
                    text = value
        if "secret" in v:
            sec = objs[("Secret", v["secret"]["secretName"])][1]
            data = dict(sec.get("stringData", {}))
            for key in sec.get("data", {}):
                data[key] = "base64-data-not-decoded-here"
            for key, value in data.items():
                files[os.path.join(m["mountPath"], key)] = value
    env = {e["name"]: e.get("value", "") for e in hg.get("env", [])}
    sc = {**pod.get("securityContext", {}), **hg.get("securityContext", {})}
    return {
        "name": "kubernetes ConfigMap config (kubernetes/configmap.yaml)",
        "config_text": text,
        "config_path": config_path,
        "env": env,
        "files": files,
        "uid": sc.get("runAsUser", 65532),
        "gid": sc.get("runAsGroup", sc.get("runAsUser", 65532)),
        "workdir": "/",
    }


def compose_file():
    with open(path("compose.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def interpolate_default(value):
    """Compose's ${VAR:-default}, with VAR unset (as in a fresh checkout)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


def target_compose():
    svc = compose_file()["services"]["hookguard"]
    env = {}
    for ef in svc.get("env_file", []):
        env.update(env_file(path(interpolate_default(ef))))
    env.update({k: str(v) for k, v in (svc.get("environment") or {}).items()})
    text = None
    config_path = "/etc/hookguard/config.yaml"
    for vol in svc.get("volumes", []):
        src, dest = vol.split(":")[:2]
        if dest == config_path:
            text = read(path(src))
    uid, _, gid = str(svc.get("user", "65532")).partition(":")
    return {
        "name": "compose config (compose/config.yaml with example.env)",
        "config_text": text,
        "config_path": config_path,
        "env": env,
        "files": {},
        "uid": int(uid),
        "gid": int(gid or uid),
        "workdir": "/etc/hookguard",
    }


def target_systemd():
    unit = systemd_unit(read(path("systemd", "hookguard.service")))
    words = shlex.split(unit["ExecStart"][0])
    config_path = words[words.index("--config") + 1]
    creds = {}
    for lc in unit.get("LoadCredential", []):
        name, _, _src = lc.partition(":")
        creds["/run/credentials/hookguard.service/" + name] = "test-credential-" + name
    env = {}
    for e in unit.get("Environment", []):
        for word in shlex.split(e):
            k, _, v = word.partition("=")
            env[k] = v
    return {
        "name": "systemd config (systemd/config.yaml)",
        "config_text": read(path("systemd", "config.yaml")),
        "config_path": config_path,
        "env": env,
        "files": creds,
        # DynamicUser= picks a UID in 61184..65519.
        "uid": 61184,
        "gid": 61184,
        "workdir": "/",
    }


# ------------------------------------------------------------------------------------------
# consistency
# ------------------------------------------------------------------------------------------


def check_docker(df):
    rt = df.runtime()
    t = target_docker(df)
    cfg = yaml.safe_load(t["config_text"])
    expect("Dockerfile: runtime base is distroless or debian-slim",
           "distroless" in rt[0] or "slim" in rt[0], rt[0])
    expect("Dockerfile: build stage uses the official Rust image",
           re.search(r"(^|/)(library/)?rust:", df.stages[0][0]) is not None, df.stages[0][0])
    expect("Dockerfile: USER is numeric and not root (Kubernetes runAsNonRoot can verify it)",
           t["uid"] != 0 and re.fullmatch(r"\d+(:\d+)?", df.all("USER", rt)[-1]))
    copies = df.copies(rt)
    expect("Dockerfile: the runtime stage copies only the binary and the default config",
           len(copies) == 2 and sum(1 for c in copies if c[0]) == 1, copies)
    for frm, src, _dest in copies:
        if frm is None:
            expect("Dockerfile: COPY source %s exists" % src, os.path.exists(os.path.join(REPO, src)))
            expect("Dockerfile: COPY source %s is let through Dockerfile.dockerignore" % src,
                   "!" + src in read(path("Dockerfile.dockerignore")).split())
    exposed = sorted(int(p.split("/")[0]) for a in df.all("EXPOSE", rt) for p in a.split())
    expect("Dockerfile: EXPOSE matches the default config's listen and admin_listen ports",
           exposed == sorted([port_of(cfg["listen"]), port_of(cfg["admin_listen"])]),
           "%s vs %s/%s" % (exposed, cfg["listen"], cfg["admin_listen"]))
    expect("docker config: both listeners bind all interfaces (reachable through published ports)",
           host_of(cfg["listen"]) == "0.0.0.0" and host_of(cfg["admin_listen"]) == "0.0.0.0")
    cmd = Dockerfile.exec_form(df.all("CMD", rt)[-1])
    expect("Dockerfile: CMD's --config is the copied default config",
           cmd[cmd.index("--config") + 1] == t["config_path"])
    expect("Dockerfile: WORKDIR holds config.yaml (so `check`/`sign` find it without --config)",
           os.path.join(t["workdir"], "config.yaml") == t["config_path"])
    env_refs, file_refs = config_refs(t["config_text"])
    expect("Dockerfile: ENV provides every ${NAME} the default config uses",
           all(n in t["env"] for n in env_refs), env_refs)
    expect("docker config: secrets come from mounted files under /run/secrets",
           file_refs and all(f.startswith("/run/secrets/") for f in file_refs), file_refs)
    words = build_command(df)
    expect("Dockerfile: the build is `cargo build --release --locked`",
           "--release" in words and "--locked" in words, words)
    entry = Dockerfile.exec_form(df.all("ENTRYPOINT", rt)[-1])
    binary = next(d for (f, s, d) in copies if f)
    expect("Dockerfile: ENTRYPOINT runs the copied binary", entry == [binary], entry)


def k8s_pod(objs):
    return objs[("Deployment", "legacy-app")][1]["spec"]["template"]


def check_kubernetes():
    objs = k8s_objects()
    t = target_kubernetes()
    expect("kubernetes: the hookguard config is mounted where --config points", t["config_text"])
    cfg = yaml.safe_load(t["config_text"])
    tmpl = k8s_pod(objs)
    pod = tmpl["spec"]
    hg = next(c for c in pod["containers"] if c["name"] == "hookguard")
    app = next(c for c in pod["containers"] if c["name"] != "hookguard")
    ports = {p["name"]: p["containerPort"] for p in hg["ports"]}
    expect("kubernetes: container port `http` is the config's listen port",
           ports.get("http") == port_of(cfg["listen"]), "%s vs %s" % (ports, cfg["listen"]))
    expect("kubernetes: container port `admin` is the config's admin_listen port",
           ports.get("admin") == port_of(cfg["admin_listen"]), "%s vs %s" % (ports, cfg["admin_listen"]))
    expect("kubernetes: listeners bind all interfaces (kubelet probes and the Service use the pod IP)",
           host_of(cfg["listen"]) == "0.0.0.0" and host_of(cfg["admin_listen"]) == "0.0.0.0")
    lp, rp = hg["livenessProbe"]["httpGet"], hg["readinessProbe"]["httpGet"]
    expect("kubernetes: liveness probe is GET /healthz on the admin port",
           lp["path"] == "/healthz" and lp["port"] in ("admin", ports.get("admin")))
    expect("kubernetes: readiness probe is GET /readyz on the admin port",
           rp["path"] == "/readyz" and rp["port"] in ("admin", ports.get("admin")))
    ann = tmpl["metadata"].get("annotations", {})
    expect("kubernetes: Prometheus scrape annotations point at the admin port /metrics",
           ann.get("prometheus.io/scrape") == "true"
           and int(ann.get("prometheus.io/port", 0)) == ports.get("admin")
           and ann.get("prometheus.io/path", "/metrics") == "/metrics")
    svc = objs[("Service", "legacy-app-webhooks")][1]
    labels = tmpl["metadata"]["labels"]
    expect("kubernetes: the Service selects the pod",
           all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()))
    expect("kubernetes: the Service targets hookguard's public port, and only it",
           [p["targetPort"] for p in svc["spec"]["ports"]] in (["http"], [ports.get("http")]))
    np = objs[("NetworkPolicy", "legacy-app-ingress")][1]
    expect("kubernetes: the NetworkPolicy selects the pod",
           all(labels.get(k) == v for k, v in np["spec"]["podSelector"]["matchLabels"].items()))
    app_env = {e["name"]: e.get("value") for e in app.get("env", [])}
    up = cfg["upstream"]
    expect("kubernetes: upstream is the app on localhost, and the app listens there",
           up == "http://127.0.0.1:%s" % app_env.get("PORT") and app_env.get("HOST") == "127.0.0.1",
           "%s vs %s" % (up, app_env))
    env_refs, file_refs = config_refs(t["config_text"])
    expect("kubernetes: the config uses no environment variables the container lacks",
           all(n in t["env"] for n in env_refs), env_refs)
    expect("kubernetes: every ${file:...} of the config is a key of the mounted Secret",
           file_refs and all(f in t["files"] for f in file_refs), "%s vs %s" % (file_refs, list(t["files"])))
    app_mounts = [m["mountPath"] for m in app.get("volumeMounts", [])]
    expect("kubernetes: the app container does not mount the signing keys",
           not any(os.path.dirname(f) in app_mounts for f in file_refs))
    grace = parse_duration(cfg.get("timeouts", {}).get("shutdown_grace", "30s"))
    pre = hg.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    expect("kubernetes: terminationGracePeriodSeconds (%s) >= preStop (%s) + shutdown_grace (%g) + 5"
           % (tgps, pre, grace), tgps >= pre + grace + 5)
    app_pre = app.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    expect("kubernetes: the app's preStop pause (%s) outlasts hookguard's (%s)" % (app_pre, pre),
           app_pre > pre and app_pre <= tgps)
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        psc = pod.get("securityContext", {})
        expect("kubernetes: container %s is locked down (read-only root, non-root, no escalation, "
               "caps dropped, RuntimeDefault seccomp, limits)" % c["name"],
               sc.get("readOnlyRootFilesystem") is True
               and (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")) is True
               and sc.get("allowPrivilegeEscalation") is False
               and sc.get("capabilities", {}).get("drop") == ["ALL"]
               and (sc.get("seccompProfile") or psc.get("seccompProfile", {})).get("type") == "RuntimeDefault"
               and {"cpu", "memory"} <= set(c.get("resources", {}).get("limits", {}))
               and {"cpu", "memory"} <= set(c.get("resources", {}).get("requests", {})), sc)
    demo = objs[("ConfigMap", "legacy-app-demo")][1]["data"]["app.py"]
    expect("kubernetes: legacy-app-demo.yaml carries example-app/app.py verbatim",
           demo == read(path("example-app", "app.py")),
           "regenerate the ConfigMap from deploy/example-app/app.py")
    with open(path("kubernetes", "kustomization.yaml"), encoding="utf-8") as f:
        kust = yaml.safe_load(f)
    files = sorted(n for n in os.listdir(path("kubernetes")) if n.endswith(".yaml") and n != "kustomization.yaml")
    expect("kubernetes: kustomization.yaml lists every manifest", sorted(kust["resources"]) == files,
           "%s vs %s" % (kust["resources"], files))


def check_compose(df):
    comp = compose_file()
    svc, app = comp["services"]["hookguard"], comp["services"]["app"]
    t = target_compose()
    expect("compose: the hookguard config is mounted over the image's default config path",
           t["config_text"] and t["config_path"] == target_docker(df)["config_path"])
    cfg = yaml.safe_load(t["config_text"])
    for ef in svc.get("env_file", []):
        p = interpolate_default(ef)
        expect("compose: env file %s exists" % p, os.path.exists(path(p)))
    env_refs, file_refs = config_refs(t["config_text"])
    expect("compose: example.env defines every ${NAME} the compose config uses",
           env_refs and all(n in t["env"] for n in env_refs) and not file_refs, env_refs)
    for s in (svc, app):
        for vol in s.get("volumes", []):
            src = vol.split(":")[0]
            expect("compose: volume source %s exists" % src, os.path.exists(path(src)))
    expect("compose: the app shares hookguard's network namespace",
           app.get("network_mode") == "service:hookguard")
    app_env = {k: str(v) for k, v in app.get("environment", {}).items()}
    expect("compose: upstream is the app on localhost, and the app listens there",
           cfg["upstream"] == "http://127.0.0.1:%s" % app_env.get("PORT") and app_env.get("HOST") == "127.0.0.1")
    published = {int(str(p).rsplit(":", 1)[1]) for p in svc.get("ports", [])}
    expect("compose: published container ports are the config's listen and admin_listen ports",
           published == {port_of(cfg["listen"]), port_of(cfg["admin_listen"])}, published)
    admin_pub = [str(p) for p in svc.get("ports", []) if str(p).endswith(":%d" % port_of(cfg["admin_listen"]))]
    expect("compose: the admin port is published on the host's loopback only",
           admin_pub and all(p.startswith("127.0.0.1:") for p in admin_pub), admin_pub)
    grace = parse_duration(cfg.get("timeouts", {}).get("shutdown_grace", "30s"))
    expect("compose: stop_grace_period > shutdown_grace",
           parse_duration(svc.get("stop_grace_period", "10s")) > grace)
    expect("compose: both services run read-only, non-root, without capabilities",
           all(s.get("read_only") is True and s.get("cap_drop") == ["ALL"]
               and not str(s.get("user", "0")).startswith("0")
               and "no-new-privileges:true" in s.get("security_opt", []) for s in (svc, app)))
    expect("compose: example.env holds placeholders only",
           all("replace" in v.lower() for v in env_file(path("example.env")).values()))


def check_systemd():
    unit = systemd_unit(read(path("systemd", "hookguard.service")))
    t = target_systemd()
    cfg = yaml.safe_load(t["config_text"])
    expect("systemd: ExecStart reads /etc/hookguard/config.yaml", t["config_path"] == "/etc/hookguard/config.yaml")
    expect("systemd: ExecReload ends with kill -HUP $MAINPID",
           unit.get("ExecReload", [""])[-1] == "/bin/kill -HUP $MAINPID", unit.get("ExecReload"))
    env_refs, file_refs = config_refs(t["config_text"])
    expect("systemd: every ${file:...} of the config is a LoadCredential= of the unit",
           file_refs and all(f in t["files"] for f in file_refs) and not env_refs,
           "%s vs %s" % (file_refs, list(t["files"])))
    grace = parse_duration(cfg.get("timeouts", {}).get("shutdown_grace", "30s"))
    stop = parse_duration(unit.get("TimeoutStopSec", ["90"])[-1] + ("" if not unit.get("TimeoutStopSec", ["90"])[-1].isdigit() else "s"))
    expect("systemd: TimeoutStopSec (%g) > shutdown_grace (%g)" % (stop, grace), stop > grace)
    for key, want in [("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                      ("ProtectHome", "yes"), ("CapabilityBoundingSet", ""), ("DynamicUser", "yes")]:
        expect("systemd: %s=%s" % (key, want), unit.get(key, [None])[-1] == want, unit.get(key))
    for key in ("RestrictAddressFamilies", "SystemCallFilter"):
        expect("systemd: %s= is set" % key, key in unit)


# ------------------------------------------------------------------------------------------
# runtime: distroless-like roots, `hookguard check` per target, and the image smoke test
# ------------------------------------------------------------------------------------------

# What gcr.io/distroless/cc-debian12 provides (glibc, libgcc, libstdc++, libgomp, OpenSSL 3).
DISTROLESS_CC_LIBS = re.compile(
    r"^(linux-vdso\.so\.1|ld-linux[-\w.]*\.so\.\d|lib(c|m|dl|rt|pthread|util|resolv)\.so\.\d+"
    r"|libgcc_s\.so\.1|libstdc\+\+\.so\.6|libgomp\.so\.1|libssl\.so\.3|libcrypto\.so\.3)$")


def shared_libs(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        line = line.strip()
        m = re.match(r"^(\S+)\s+=>\s+(\S+)\s+\(", line) or re.match(r"^((/\S+))\s+\(", line)
        if m:
            libs.append((os.path.basename(m.group(1)), m.group(2)))
        elif line.startswith("linux-vdso"):
            libs.append(("linux-vdso.so.1", None))
    return libs


def sh(*args):
    subprocess.run(list(args), check=True)


def make_root(base, binary, target, readonly=True):
    """A distroless-like root: the binary, its shared libraries, passwd/group, the config at
    its path, the secret files (root:gid 0440) and an empty /tmp-less tree. Read-only."""
    root = tempfile.mkdtemp(dir=base)
    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", root)
    for d in ("usr/local/bin", "etc", "proc", "dev"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy(binary, os.path.join(root, "usr/local/bin/hookguard"))
    os.chmod(os.path.join(root, "usr/local/bin/hookguard"), 0o755)
    for _name, src in shared_libs(binary):
        if src:
            dest = os.path.join(root, src.lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy(src, dest)
    with open(os.path.join(root, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
    with open(os.path.join(root, "etc/group"), "w") as f:
        f.write("root:x:0:\nnonroot:x:65532:\n")
    cfg = os.path.join(root, target["config_path"].lstrip("/"))
    os.makedirs(os.path.dirname(cfg), exist_ok=True)
    with open(cfg, "w") as f:
        f.write(target["config_text"])
    os.chmod(cfg, 0o644)
    for p, value in target["files"].items():
        dest = os.path.join(root, p.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w") as f:
            f.write(value + "\n")  # as `echo KEY > file` writes it; hookguard trims the newline
        os.chown(dest, 0, target["gid"])
        os.chmod(dest, 0o440)
    if target.get("workdir"):
        os.makedirs(os.path.join(root, target["workdir"].lstrip("/")), exist_ok=True)
    sh("mount", "-t", "proc", "proc", os.path.join(root, "proc"))
    sh("mount", "--rbind", "/dev", os.path.join(root, "dev"))
    if readonly:
        sh("mount", "-o", "remount,ro", root)
    return root


def exec_in_root_argv(root, target, argv, pidfile=None):
    cmd = [sys.executable, os.path.abspath(__file__), "exec-in-root", "--root", root,
           "--workdir", target.get("workdir") or "/", "--user", "%d:%d" % (target["uid"], target["gid"])]
    if pidfile:
        cmd += ["--pidfile", pidfile]
    for k, v in target["env"].items():
        cmd += ["--env", "%s=%s" % (k, v)]
    return cmd + ["--"] + argv


def cmd_exec_in_root(a):
    if a.pidfile:
        with open(a.pidfile, "w") as f:
            f.write(str(os.getpid()))
    uid, _, gid = a.user.partition(":")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    env.update(dict(e.split("=", 1) for e in a.env))
    os.chroot(a.root)
    os.chdir(a.workdir)
    os.setgroups([])
    os.setgid(int(gid))
    os.setuid(int(uid))
    os.execve(a.argv[0], a.argv, env)


def http_get(url, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, str(e)


def wait_for(pred, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return pred()


def curl_status(cmd):
    """Runs a `hookguard sign` curl command (it uses -i); returns (status, body)."""
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=20).stdout
    m = re.match(r"HTTP/\S+ (\d+)", out)
    body = out.split("\r\n\r\n", 1)[-1] if "\r\n\r\n" in out else out
    return (int(m.group(1)) if m else None), body.strip()


def syscall_groups():
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True).stdout
    groups, cur = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            cur = line.strip()
            groups[cur] = set()
        elif cur and line.strip() and not line.strip().startswith("#"):
            groups[cur].add(line.strip())

    def expand(name, seen=()):
        if not name.startswith("@"):
            return {name}
        out = set()
        for m in groups.get(name, ()):
            if m not in seen:
                out |= expand(m, seen + (name,))
        return out

    return expand


def unit_allowed_syscalls():
    """The set the unit's SystemCallFilter= lines allow (allow-list, then ~deny-lists)."""
    unit = systemd_unit(read(path("systemd", "hookguard.service")))
    expand = syscall_groups()
    allowed = None
    for line in unit.get("SystemCallFilter", []):
        deny = line.startswith("~")
        names = set()
        for w in line.lstrip("~").split():
            names |= expand(w)
        if deny:
            allowed = (allowed or set()) - names
        else:
            allowed = (allowed or set()) | names
    return allowed or set()


def unit_address_families():
    unit = systemd_unit(read(path("systemd", "hookguard.service")))
    return set(" ".join(unit.get("RestrictAddressFamilies", [])).split())


def analyze_strace(log):
    """(syscalls, socket families, writes) of the traced program after it exec'd hookguard."""
    lines = read(log).splitlines()
    start = next((i for i, l in enumerate(lines) if 'execve("/usr/local/bin/hookguard"' in l), None)
    if start is None:
        return None
    calls, fams, writes = set(), set(), []
    for line in lines[start:]:
        m = re.match(r"^\d+\s+([a-z0-9_]+)\((.*)", line)
        if not m:
            continue
        name, rest = m.groups()
        calls.add(name)
        if name == "socket":
            fams.add(rest.split(",")[0])
        if name in ("open", "openat", "openat2", "creat") and re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND", rest):
            writes.append(line)
        if name in ("mkdir", "mkdirat", "unlink", "unlinkat", "rename", "renameat", "renameat2",
                    "symlink", "symlinkat", "link", "linkat", "truncate", "chmod", "fchmodat"):
            writes.append(line)
    return calls, fams, writes


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cmd_runtime(a):
    binary = os.path.abspath(a.bin)
    base = tempfile.mkdtemp(prefix="hookguard-deploy-check.")
    sh("mount", "-t", "tmpfs", "tmpfs", base)  # everything below vanishes with the namespace
    sh("ip", "link", "set", "lo", "up")
    df = dockerfile()

    libs = shared_libs(binary)
    odd = [n for n, _ in libs if not DISTROLESS_CC_LIBS.match(n)]
    expect("image: the binary needs only libraries distroless/cc provides (%s)"
           % ", ".join(n for n, _ in libs), not odd, odd)

    # `hookguard check` of every shipped config, in its own layout.
    for target in (target_docker(df), target_kubernetes(), target_compose(), target_systemd()):
        root = make_root(base, binary, target)
        r = subprocess.run(exec_in_root_argv(root, target, ["/usr/local/bin/hookguard", "check",
                                                             "--config", target["config_path"]]),
                           capture_output=True, text=True, timeout=30)
        secrets_shown = [v for v in target["files"].values() if v in r.stdout + r.stderr]
        secrets_shown += [v for k, v in target["env"].items() if "KEY" in k and v in r.stdout + r.stderr]
        expect("hookguard check: %s" % target["name"], r.returncode == 0 and " ok: " in r.stdout,
               (r.stdout + r.stderr).strip())
        print("     " + r.stdout.strip().replace("\n", "\n     "), flush=True)
        expect("hookguard check prints no secret: %s" % target["name"], not secrets_shown)

    smoke(base, binary, df, a)
    print("runtime: %d passed, %d failed" % (RESULTS["pass"], RESULTS["fail"]))
    return 1 if RESULTS["fail"] else 0


def smoke(base, binary, df, a):
    """The image's entrypoint + CMD in a read-only distroless-like root, as uid 65532, in a
    network namespace of its own (so 8080/9090 are free, as in a container), beside the demo
    app on 127.0.0.1:3000, traced with strace."""
    target = target_docker(df)
    cfg = yaml.safe_load(target["config_text"])
    admin = "http://127.0.0.1:%d" % port_of(cfg["admin_listen"])
    root = make_root(base, binary, target)
    rt = df.runtime()
    argv = Dockerfile.exec_form(df.all("ENTRYPOINT", rt)[-1]) + Dockerfile.exec_form(df.all("CMD", rt)[-1])

    app_log = os.path.join(base, "app.log")
    up_port = int(target["env"]["HOOKGUARD_UPSTREAM"].rsplit(":", 1)[1])
    app = subprocess.Popen([sys.executable, path("example-app", "app.py")],
                           env={**os.environ, "HOST": "127.0.0.1", "PORT": str(up_port)},
                           stdout=open(app_log, "w"), stderr=subprocess.DEVNULL)
    hg_log, trace, pidfile = (os.path.join(base, n) for n in ("hookguard.log", "strace.log", "pid"))
    hg = subprocess.Popen(["strace", "-f", "-qq", "-o", trace] + exec_in_root_argv(root, target, argv, pidfile),
                          stdout=open(hg_log, "w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: http_get("http://127.0.0.1:%d/healthz" % up_port)[0] == 200, 10)
        ok = wait_for(lambda: http_get(admin + "/readyz")[0] == 200, 20)
        if not expect("smoke: GET /readyz answers 200 once the listeners are up", ok, read(hg_log)[-2000:]):
            return
        expect("smoke: GET /healthz answers 200", http_get(admin + "/healthz")[0] == 200)

        # The image's HEALTHCHECK command, run inside the image layout.
        hc = df.all("HEALTHCHECK", rt)
        hc_argv = Dockerfile.exec_form(hc[-1].split("CMD", 1)[1].strip()) if hc and "CMD" in hc[-1] else None
        if expect("smoke: the Dockerfile has a HEALTHCHECK CMD", hc_argv is not None, repr(hc)):
            r = subprocess.run(exec_in_root_argv(root, target, hc_argv), capture_output=True, text=True, timeout=30)
            expect("smoke: the HEALTHCHECK command exits 0 while hookguard runs", r.returncode == 0,
                   (r.stdout + r.stderr).strip())

        body = json.dumps({"event-data": {"event": "delivered", "id": "deploy-check-%d" % os.getpid(),
                                          "recipient": "alice@example.com"}})
        r = subprocess.run(exec_in_root_argv(root, target, ["/usr/local/bin/hookguard", "sign", "--route", "mailgun"]),
                           input=body, capture_output=True, text=True, timeout=30)
        signed = r.stdout
        expect("smoke: `hookguard sign` prints a curl command (image layout, WORKDIR config)",
               r.returncode == 0 and signed.startswith("curl "), r.stderr)

        # The same request with its signature altered (reversed): a forgery.
        sig = re.findall(r"[0-9a-f]{64}", signed)
        forged = signed.replace(sig[-1], sig[-1][::-1]) if sig else signed + " -H 'X-Forged: 1'"
        status, resp = curl_status(forged)
        expect("smoke: a forged signature is rejected with 401 bad_signature",
               status == 401 and "bad_signature" in resp, "%s %s" % (status, resp))

        status, resp = curl_status(signed)
        expect("smoke: the signed webhook is forwarded (200 from the app)", status == 200, "%s %s" % (status, resp))
        time.sleep(0.2)
        records = [json.loads(l) for l in read(app_log).splitlines() if l.startswith("{") and '"method"' in l]
        got = records[0] if records else {}
        hdr = {k.lower(): v for k, v in got.get("webhook_headers", {}).items()}
        expect("smoke: the app received exactly one request: the authentic one", len(records) == 1, records)
        expect("smoke: the app got the verified body and X-Webhook-Route/-Provider headers",
               hdr.get("x-webhook-route") == "mailgun" and hdr.get("x-webhook-provider") == "mailgun"
               and got.get("body", {}).get("event-data", {}).get("recipient") == "alice@example.com"
               and got.get("path") == "/webhooks/mailgun", got)

        # A copy of a delivered message: 200 {"status":"duplicate"} (contract: providers read 409 as
        # a failed delivery and retry for days), and the app still has exactly one request.
        status, resp = curl_status(signed)
        expect("smoke: the same webhook again is a duplicate: 200 {\"status\":\"duplicate\"}, not forwarded",
               status == 200 and '"duplicate"' in resp, "%s %s" % (status, resp))
        time.sleep(0.2)
        records = [l for l in read(app_log).splitlines() if l.startswith("{") and '"method"' in l]
        expect("smoke: the duplicate did not reach the app", len(records) == 1, records)
        _, metrics = http_get(admin + "/metrics")
        expect("smoke: /metrics counts the forwarded webhook",
               re.search(r'hookguard_requests_total\{[^}]*outcome="forwarded"[^}]*\} 1\b', metrics), metrics[:500])
        expect("smoke: /metrics counts the duplicate as outcome replayed",
               re.search(r'hookguard_requests_total\{[^}]*outcome="replayed"[^}]*\} 1\b', metrics), metrics[:500])

        pid = int(read(pidfile))
        os.kill(pid, signal.SIGTERM)
        try:
            rc = hg.wait(timeout=parse_duration(cfg["timeouts"]["shutdown_grace"]) + 5)
        except subprocess.TimeoutExpired:
            rc = "still running"
        expect("smoke: SIGTERM stops hookguard with exit status 0", rc == 0, "exit %s; log: %s" % (rc, read(hg_log)[-1500:]))
        log = read(hg_log)
        expect("smoke: the log shows no secret", target["files"] and all(v not in log for v in target["files"].values()))
    finally:
        for p in (hg, app):
            if p.poll() is None:
                p.kill()
                p.wait()

    res = analyze_strace(trace)
    if not expect("strace: the trace shows hookguard's execve", res):
        return
    calls, fams, writes = res
    expect("strace: hookguard wrote no file (fits readOnlyRootFilesystem, read_only, ProtectSystem=strict)",
           not writes, writes[:5])
    families = unit_address_families()
    expect("strace: socket families %s are within the unit's RestrictAddressFamilies" % sorted(fams),
           fams <= families, sorted(fams - families))
    allowed = unit_allowed_syscalls()
    outside = sorted(calls - allowed)
    expect("strace: all %d distinct syscalls are allowed by the unit's SystemCallFilter" % len(calls),
           not outside, outside)


# ------------------------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("consistency")
    sub.add_parser("build-command")
    c = sub.add_parser("docker-context")
    c.add_argument("--out", required=True)
    r = sub.add_parser("runtime")
    r.add_argument("--bin", required=True)
    e = sub.add_parser("exec-in-root")
    e.add_argument("--root", required=True)
    e.add_argument("--workdir", default="/")
    e.add_argument("--user", required=True)
    e.add_argument("--pidfile")
    e.add_argument("--env", action="append", default=[])
    e.add_argument("argv", nargs="+")
    a = p.parse_args()

    if a.cmd == "exec-in-root":
        cmd_exec_in_root(a)
    if a.cmd == "build-command":
        print("\n".join(build_command(dockerfile())))
        return 0
    if a.cmd == "docker-context":
        return cmd_docker_context(a)
    if a.cmd == "runtime":
        return cmd_runtime(a)
    df = dockerfile()
    for f in (lambda: check_docker(df), check_kubernetes, lambda: check_compose(df), check_systemd):
        try:
            f()
        except Exception as ex:  # a file that no longer has the expected shape
            report(False, "consistency (%s)" % getattr(f, "__name__", "check"), repr(ex))
    print("consistency: %d passed, %d failed" % (RESULTS["pass"], RESULTS["fail"]))
    return 1 if RESULTS["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
