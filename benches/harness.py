#!/usr/bin/env python3
"""sparkcr-edge against registry:2 (proxy mode) and nginx (sendfile), on loopback, in one run.

    python3 benches/harness.py            # full run (2 repeats), writes docs/benchmarks.md
    python3 benches/harness.py --smoke    # tiny sizes, ~1 s per measurement, no targets enforced
    python3 benches/harness.py --big      # also a 1 GiB cold miss (unpaced and paced), 1 GiB fan-out

Python 3.11 standard library only. Needs: docker-registry, nginx, wrk, curl, h2load
(nghttp2-client), openssl, cargo; benches/pace_proxy.py next to this file.
Every server is started by PID on 127.0.0.1 with a random free port and a config in a
temporary directory, and is stopped (SIGTERM, then SIGKILL) and cleaned up on every exit
path. Every loop here is bounded in count and time. See benches/README.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import fcntl
import hashlib
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
HOST = "127.0.0.1"  # every byte of traffic stays on loopback
REPO = "bench/data"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
REGISTRY_BIN = "/usr/bin/docker-registry"
PACE_PROXY = Path(__file__).resolve().parent / "pace_proxy.py"
PACE_READ = 1024 * KiB  # the pacing proxy's read size
TOOLS = ("wrk", "nginx", "curl", "h2load", "openssl", REGISTRY_BIN)
# benches/push_bench.py imports this file as `harness`: when it runs as a script, be that module.
sys.modules.setdefault("harness", sys.modules[__name__])

PACKAGES = "docker-registry nginx wrk curl nghttp2-client openssl"

# What one run measures; --smoke swaps in tiny sizes and one-second measurements.
FULL = dict(
    blob=64 * MiB, small=300, cold=256 * MiB, big=1 * GiB, wrk_secs=6, conns=16,
    burst=32, churn_budget=256 * MiB, churn_factor=2.5, ready_bytes=2 * GiB,
    ready_small=500, ready_starts=3, repeats=2,
    paced_rate=1e9, fanout=256 * MiB, fanout_clients=8, fanout_limit="50M", fanout_late=2.0, fanout_chunk=4 * MiB,
    push=256 * MiB, shared=256 * MiB,
    strict=False,
)
SMOKE = dict(
    blob=4 * MiB, small=300, cold=8 * MiB, big=16 * MiB, wrk_secs=1, conns=16,
    burst=32, churn_budget=16 * MiB, churn_factor=2.5, ready_bytes=48 * MiB,
    ready_small=20, ready_starts=2, repeats=1,
    # (curl's --limit-rate averages over seconds: under ~16 MiB it hardly throttles at all)
    paced_rate=1e9, fanout=16 * MiB, fanout_clients=8, fanout_limit="4M", fanout_late=0.5, fanout_chunk=1 * MiB,
    push=8 * MiB, shared=8 * MiB,
    strict=True,  # a fan-out client without the exact bytes fails the run (in a full run: a figure)
)


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def run(cmd: list[str], timeout: float, check: bool = True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise BenchError(f"{cmd[0]} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return p


# ---------------------------------------------------------------- processes

class Server:
    """A server process we started, known by PID; its stdout+stderr go to one log file."""

    def __init__(self, name: str, cmd: list[str], logfile: Path, port: int, cwd: Path | None = None,
                 env: dict | None = None):
        self.name, self.cmd, self.logfile, self.port = name, cmd, logfile, port
        self.tls_port: int | None = None  # its HTTPS listener, if it has one
        self.logfh = open(logfile, "ab")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.logfh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd,
                                     env={**os.environ, **env} if env else None)
        ALL_SERVERS.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self) -> list[int]:
        """The process and its direct children (nginx workers)."""
        out = [self.pid]
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    st = Path(f"/proc/{d}/stat").read_text()
                except OSError:
                    continue
                if int(st[st.rindex(")") + 2:].split()[1]) == self.pid:
                    out.append(int(d))
        return out

    def url(self, path: str, tls: bool = False) -> str:
        if tls:
            if self.tls_port is None:
                raise BenchError(f"{self.name} has no HTTPS listener")
            return f"https://{HOST}:{self.tls_port}{path}"
        return f"http://{HOST}:{self.port}{path}"

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def wait_port(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(f"{self.name} exited ({self.proc.returncode}):\n{self.log_text()[-3000:]}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.02)
        raise BenchError(f"{self.name} did not listen on {HOST}:{self.port} in {timeout}s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.alive():
            try:
                os.kill(self.pid, sig)
                self.proc.wait(timeout=timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self.logfh.close()


ALL_SERVERS: list[Server] = []
EDGE_ENV: dict[str, str] = {}  # --edge-env: extra environment for the edge processes only


def stop_all() -> None:
    for s in reversed(ALL_SERVERS):
        try:
            s.stop()
        except Exception as e:  # keep stopping the others
            log(f"stopping {s.name} (pid {s.pid}): {e}")
    ALL_SERVERS.clear()


def _on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ---------------------------------------------------------------- /proc

def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of the processes: utime, stime (fields 14, 15 of stat)."""
    user = system = 0
    for pid in pids:
        try:
            st = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = st[st.rindex(")") + 2:].split()
        user += int(f[11])
        system += int(f[12])
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_split(pids))


def reset_peak_rss(pids: list[int]) -> bool:
    ok = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def peak_rss(pids: list[int]) -> int:
    """Sum of VmHWM over the processes, in bytes."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def system_busy_seconds() -> float:
    """user + nice + system time of the whole machine (irq, softirq and steal left out)."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (f[0] + f[1] + f[2]) / CLK_TCK


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------- data and registry API

def make_blob(path: Path, size: int) -> str:
    """Random bytes from os.urandom; returns the sha256 digest string."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            b = os.urandom(min(left, 4 * MiB))
            h.update(b)
            f.write(b)
            left -= len(b)
    return "sha256:" + h.hexdigest()


def _conn(port: int, timeout: float = 300, tls: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
    if tls:
        return http.client.HTTPSConnection(HOST, port, timeout=timeout, blocksize=1 * MiB, context=tls)
    return http.client.HTTPConnection(HOST, port, timeout=timeout, blocksize=1 * MiB)


def make_cert(d: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """A self-signed P-256 certificate for 127.0.0.1; returns (cert, key, a client context trusting
    only it, TLS 1.3 only, hostname checked)."""
    d.mkdir(exist_ok=True)
    cert, key = d / "cert.pem", d / "key.pem"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={HOST}",
         "-addext", f"subjectAltName=IP:{HOST}"], timeout=60)
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return cert, key, ctx


def _path_of(location: str) -> str:
    u = urllib.parse.urlsplit(location)
    if u.hostname not in (None, HOST):
        raise BenchError(f"upload location is not on loopback: {location}")
    return u.path + ("?" + u.query if u.query else "")


def push_blob(conn: http.client.HTTPConnection, body, size: int, digest: str) -> None:
    """Monolithic upload: POST /v2/<repo>/blobs/uploads/, then PUT <location>&digest=."""
    conn.request("POST", f"/v2/{REPO}/blobs/uploads/", headers={"Content-Length": "0"})
    r = conn.getresponse()
    r.read()
    if r.status != 202:
        raise BenchError(f"start upload: HTTP {r.status}")
    loc = _path_of(r.getheader("Location"))
    sep = "&" if "?" in loc else "?"
    conn.request("PUT", f"{loc}{sep}digest={digest}", body=body,
                 headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
    r = conn.getresponse()
    text = r.read()
    if r.status != 201:
        raise BenchError(f"finish upload {digest}: HTTP {r.status} {text[:300]!r}")


def push_blob_file(port: int, path: Path, digest: str) -> None:
    conn = _conn(port)
    try:
        with open(path, "rb") as f:
            push_blob(conn, f, path.stat().st_size, digest)
    finally:
        conn.close()


def push_manifest(port: int, tag: str, body: bytes) -> str:
    conn = _conn(port, 60)
    try:
        conn.request("PUT", f"/v2/{REPO}/manifests/{tag}", body=body,
                     headers={"Content-Type": OCI_MANIFEST})
        r = conn.getresponse()
        text = r.read()
        if r.status != 201:
            raise BenchError(f"push manifest: HTTP {r.status} {text[:300]!r}")
    finally:
        conn.close()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def fetch(port: int, path: str, want_size: int | None = None, want_digest: str | None = None,
          conn: http.client.HTTPConnection | None = None, accept: str | None = None,
          tls: ssl.SSLContext | None = None) -> int:
    """GET, reading the body fully; checks status 200, size and digest if given."""
    own = conn is None
    conn = conn or _conn(port, tls=tls)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        r = conn.getresponse()
        h = hashlib.sha256()
        n = 0
        while True:
            b = r.read(1 * MiB)
            if not b:
                break
            n += len(b)
            if want_digest:
                h.update(b)
        if r.status != 200:
            raise BenchError(f"GET {path} on :{port}: HTTP {r.status}")
        if want_size is not None and n != want_size:
            raise BenchError(f"GET {path} on :{port}: {n} bytes, want {want_size}")
        if want_digest and "sha256:" + h.hexdigest() != want_digest:
            raise BenchError(f"GET {path} on :{port}: wrong digest")
        return n
    finally:
        if own:
            conn.close()


# ---------------------------------------------------------------- servers

def start_registry(tmp: Path, name: str, proxy_port: int | None = None) -> Server:
    d = tmp / name
    d.mkdir()
    port = free_port()
    proxy = f"proxy:\n  remoteurl: http://{HOST}:{proxy_port}\n" if proxy_port else ""
    cfg = (
        "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {d}/storage\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {HOST}:{port}\n{proxy}"
    )
    (d / "config.yml").write_text(cfg)
    s = Server(name, [REGISTRY_BIN, "serve", str(d / "config.yml")], d / "log.txt", port)
    s.wait_port()
    return s


def start_nginx(tmp: Path, www: Path, name: str = "nginx", tls: tuple[Path, Path] | None = None) -> Server:
    """nginx serving www with sendfile; with tls=(cert, key) one HTTPS listener (TLS 1.3, h2 and
    http/1.1 by ALPN) instead of the plain one."""
    d = tmp / name
    d.mkdir()
    port = free_port()
    listen = f"    listen {HOST}:{port};\n"
    if tls:
        listen = (f"    listen {HOST}:{port} ssl http2;\n    ssl_protocols TLSv1.3;\n"
                  f"    ssl_certificate {tls[0]};\n    ssl_certificate_key {tls[1]};\n")
    user = "user root;\n" if os.geteuid() == 0 else ""
    temps = "".join(f"  {k}_temp_path {d}/{k}_temp;\n" for k in
                    ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    cfg = (
        f"{user}worker_processes auto;\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\n"
        f"error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n"
        "http {\n"
        f"  access_log {d}/access.log;\n{temps}"
        "  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n  keepalive_timeout 65;\n"
        "  default_type application/octet-stream;\n"
        f"  server {{\n{listen}    root {www};\n"
        f"    location /manifest {{ default_type {OCI_MANIFEST}; }}\n  }}\n"
        "}\n"
    )
    (d / "nginx.conf").write_text(cfg)
    s = Server(name, ["nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
               d / "stderr.txt", port)
    s.tls_port = port if tls else None
    s.wait_port()
    return s


POLICY_BLOCKS = 20


def policy_text() -> str:
    """A [[policy]] of POLICY_BLOCKS blocks where only the last fits the bench repository:
    every pull walks all of them (the gate's worst case for an allowed pull)."""
    out = ""
    for i in range(POLICY_BLOCKS - 1):
        out += (f"[[policy]]\nname = \"deny-{i}\"\nupstream = \"upstream.bench.test\"\n"
                f"match = [\"other-{i}/**\", \"team-{i}/*\"]\naction = \"deny\"\n")
    return out + "[[policy]]\nname = \"bench\"\nupstream = \"*\"\nmatch = [\"bench/*\"]\naction = \"allow\"\n"


def sign_manifest(tmp: Path, up_port: int, manifest_digest: str) -> Path:
    """Signs the bench manifest as `cosign sign --key` does, with openssl: a new P-256 key, a
    simple-signing payload vouching for `manifest_digest`, its ASN.1 signature in the layer
    annotation, the signature manifest under the `sha256-<hex>.sig` tag of the upstream.
    Returns the public key file (PEM)."""
    d = tmp / "signing"
    d.mkdir(exist_ok=True)
    key, pub, payload_file = d / "key.pem", d / "team.pub", d / "payload.json"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "ec", "-in", str(key), "-pubout", "-out", str(pub)], check=True, capture_output=True)
    payload = json.dumps({"critical": {"identity": {"docker-reference": f"{HOST}/{REPO}"},
                                       "image": {"docker-manifest-digest": manifest_digest},
                                       "type": "cosign container image signature"}, "optional": None}).encode()
    payload_file.write_bytes(payload)
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key), str(payload_file)],
                               check=True, capture_output=True).stdout
    config = b"{}"
    digests = {}
    for name, body in (("payload", payload), ("config", config)):
        digests[name] = "sha256:" + hashlib.sha256(body).hexdigest()
        conn = _conn(up_port)
        try:
            push_blob(conn, body, len(body), digests[name])
        finally:
            conn.close()
    sig_manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digests["config"],
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": digests["payload"],
                    "size": len(payload),
                    "annotations": {"dev.cosignproject.cosign/signature": base64.b64encode(signature).decode()}}],
    }).encode()
    push_manifest(up_port, manifest_digest.replace(":", "-") + ".sig", sig_manifest)
    return pub


def edge_config(tmp: Path, name: str, up_port: int, max_size: int, chunk_size: int = 4 * MiB,
                tls: tuple[Path, Path] | None = None, audit: bool = False, policy: bool = False,
                signed_by: Path | None = None) -> Path:
    """An edge config in tmp/name; with tls=(cert, key) also an HTTPS listener; with audit, the
    audit trail's file in tmp/name/audit.jsonl; with policy, `policy_text()`; with signed_by, one
    [[policy]] block that admits the bench repository only when signed by that key."""
    d = tmp / name
    d.mkdir(exist_ok=True)
    port = free_port()
    https = ""
    if tls:
        tls_port = free_port()
        https = f"tls_listen = [\"{HOST}:{tls_port}\"]\ntls_cert = \"{tls[0]}\"\ntls_key = \"{tls[1]}\"\n"
        (d / "tls_port").write_text(str(tls_port))
    cfg = (
        "builtin_upstreams = false\n"
        f"[server]\nlisten = [\"{HOST}:{port}\"]\n{https}hostname = \"localhost\"\nshutdown_grace = \"5s\"\n"
        f"[storage]\npath = \"{d}/data\"\nmax_size = \"{max_size}B\"\nchunk_size = \"{chunk_size}B\"\n"
        "[cache]\ntag_ttl = \"1h\"\n"
        "[log]\nlevel = \"info\"\nformat = \"text\"\n"
        + (f"[audit]\npath = \"{d}/audit.jsonl\"\n" if audit else "")
        + f"[[upstream]]\nname = \"upstream.bench.test\"\nurl = \"http://{HOST}:{up_port}\"\ndefault = true\n"
        + (policy_text() if policy else "")
        + (f"[[policy]]\nname = \"signed\"\nupstream = \"*\"\nmatch = [\"bench/*\"]\naction = \"allow\"\n"
           f"require_signature = [\"{signed_by}\"]\n" if signed_by else "")
    )
    (d / "config.toml").write_text(cfg)
    (d / "port").write_text(str(port))
    return d


def start_edge(binary: Path, d: Path, tag: str = "") -> tuple[Server, float, float]:
    """Starts the edge; returns it, seconds to the `ready to serve` log line and to /readyz 200."""
    port = int((d / "port").read_text())
    logfile = d / f"log{tag}.txt"
    logfile.write_text("")
    s = Server("sparkcr-edge", [str(binary), "serve", "--config", str(d / "config.toml")], logfile, port,
               env=EDGE_ENV)
    if (d / "tls_port").exists():
        s.tls_port = int((d / "tls_port").read_text())
    t0 = s.started
    t_log = t_ready = None
    deadline = t0 + 120
    while time.monotonic() < deadline and (t_log is None or t_ready is None):
        if not s.alive():
            raise BenchError(f"sparkcr-edge exited ({s.proc.returncode}):\n{s.log_text()[-3000:]}")
        if t_log is None and "ready to serve" in s.log_text():
            t_log = time.monotonic() - t0
        if t_ready is None:
            try:
                c = http.client.HTTPConnection(HOST, port, timeout=2)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    t_ready = time.monotonic() - t0
                c.close()
            except OSError:
                pass
        time.sleep(0.003)
    if t_log is None or t_ready is None:
        raise BenchError(f"sparkcr-edge not ready in 120 s:\n{s.log_text()[-3000:]}")
    return s, t_log, t_ready


def pacer_burst(rate: float) -> int:
    """The pacing proxy's bucket: 4 ms at the rate, at least two reads (it sleeps in whole ms)."""
    return max(2 * PACE_READ, int(rate * 0.004))


def start_pacer(tmp: Path, name: str, target_port: int, rate: float) -> Server:
    """benches/pace_proxy.py on a free port, pacing target -> clients to `rate` bytes/s in total."""
    d = tmp / name
    d.mkdir()
    port = free_port()
    s = Server(name, [sys.executable, str(PACE_PROXY), "--listen-port", str(port), "--target-port",
                      str(target_port), "--rate", repr(float(rate)), "--burst", str(pacer_burst(rate)),
                      "--read-size", str(PACE_READ)], d / "log.txt", port)
    s.wait_port()
    return s


def edge_metric(s: Server, name: str) -> float:
    c = _conn(s.port, 10)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    if not found:
        raise BenchError(f"metric {name} not in /metrics")
    return total


# ---------------------------------------------------------------- measurements

WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d %d %d\\n", summary.requests, summary.bytes,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def measured(server: Server, cmd: list[str], timeout: float, upstream: Server | None = None) -> tuple[str, dict]:
    """Runs a load generator; returns its stdout and the CPU the server (and the rest) used meanwhile."""
    pids = server.pids()
    up_pids = upstream.pids() if upstream else []
    busy0, kids0, up0, t0 = system_busy_seconds(), children_cpu(), cpu_seconds(up_pids), time.monotonic()
    (u0, s0) = cpu_split(pids)
    out = run(cmd, timeout=timeout)
    (u1, s1) = cpu_split(pids)
    up1, kids1, busy1, t1 = cpu_seconds(up_pids), children_cpu(), system_busy_seconds(), time.monotonic()
    cpu = (u1 + s1) - (u0 + s0)
    background = max(0.0, (busy1 - busy0) - cpu - (kids1 - kids0) - (up1 - up0))
    return out.stdout, dict(cpu=cpu, user=u1 - u0, upstream_cpu=up1 - up0, background_cores=background / (t1 - t0),
                            client_cpu=kids1 - kids0)


def load_figures(reqs: int, nbytes: int, secs: float, c: dict) -> dict:
    """Throughput and CPU per byte / per request from a load generator's counts and measured()."""
    cpu = c["cpu"]
    return dict(requests=reqs, bytes=nbytes, secs=secs, rps=reqs / secs, mbps=nbytes / secs / 1e6,
                cpu=cpu, cpu_per_gb=cpu / (nbytes / 1e9), cpu_us_per_req=cpu / reqs * 1e6,
                user_share=c["user"] / cpu if cpu else 0.0, upstream_cpu=c["upstream_cpu"],
                background_cores=c["background_cores"], client_cpu=c["client_cpu"])


def wrk(server: Server, path: str, p: dict, tmp: Path, accept: str | None = None,
        upstream: Server | None = None, tls: bool = False) -> dict:
    """wrk for p['wrk_secs'] with p['conns'] keep-alive connections (HTTP/1.1, over TLS if tls);
    server CPU from /proc."""
    lua = tmp / "report.lua"
    if not lua.exists():
        lua.write_text(WRK_LUA)
    cmd = ["wrk", "-t2", f"-c{p['conns']}", f"-d{p['wrk_secs']}s", "--timeout", "30s", "-s", str(lua)]
    if accept:
        cmd += ["-H", f"Accept: {accept}"]
    cmd.append(server.url(path, tls))
    out, c = measured(server, cmd, p["wrk_secs"] + 90, upstream)
    m = re.search(r"^BENCH (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", out, re.M)
    if not m:
        raise BenchError(f"wrk output not understood:\n{out}")
    reqs, nbytes, dur_us, e_conn, e_read, e_write, e_status, e_timeout = map(int, m.groups())
    errors = e_conn + e_read + e_write + e_status + e_timeout
    if reqs == 0 or e_status or errors > max(p["conns"], reqs // 1000):
        raise BenchError(f"wrk {server.name} {path}: {reqs} requests, errors connect={e_conn} read={e_read} "
                         f"write={e_write} status={e_status} timeout={e_timeout}")
    return load_figures(reqs, nbytes, dur_us / 1e6, c)


H2LOAD_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def h2load(server: Server, path: str, p: dict, upstream: Server | None = None) -> dict:
    """h2load over HTTPS (h2 by ALPN) for p['wrk_secs'], p['conns'] connections of one stream each."""
    cmd = ["h2load", "-t2", f"-c{p['conns']}", "-m1", f"-D{p['wrk_secs']}", server.url(path, tls=True)]
    out, c = measured(server, cmd, p["wrk_secs"] + 90, upstream)
    fin = re.search(r"^finished in ([\d.]+)(s|ms|us),", out, re.M)
    req = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", out, re.M)
    codes = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out, re.M)
    traffic = re.search(r"^traffic: \S+ \((\d+)\) total", out, re.M)
    proto = re.search(r"^Application protocol: (\S+)", out, re.M)
    if not (fin and req and codes and traffic and proto):
        raise BenchError(f"h2load output not understood:\n{out}")
    if proto.group(1) != "h2":
        raise BenchError(f"h2load {server.name}: negotiated {proto.group(1)}, not h2")
    done, ok, failed, errored = (int(req.group(i)) for i in (3, 4, 5, 6))
    if ok == 0 or errored or int(codes.group(3)) or int(codes.group(4)) or failed > p["conns"]:
        raise BenchError(f"h2load {server.name} {path}: {req.group(0)}; {codes.group(0)}")
    secs = float(fin.group(1)) * H2LOAD_UNITS[fin.group(2)]
    cipher = re.search(r"^Cipher: (\S+)", out, re.M)
    return dict(load_figures(done, int(traffic.group(1)), secs, c), cipher=cipher.group(1) if cipher else "?")


def curl_get(server_port: int, path: str, timeout: float) -> list[str]:
    return ["curl", "-s", "-o", "/dev/null", "--max-time", str(int(timeout)),
            "-w", "%{http_code} %{size_download} %{time_starttransfer} %{time_total}",
            f"http://{HOST}:{server_port}{path}"]


def parse_curl(out: str, size: int, what: str) -> tuple[float, float]:
    parts = out.split()
    if len(parts) != 4 or parts[0] != "200" or int(parts[1]) != size:
        raise BenchError(f"{what}: curl said {out!r}, want 200 and {size} bytes")
    return float(parts[2]), float(parts[3])


def wait_quiet(limit: float = 60.0, busy_cores: float = 0.15, window: float = 0.3) -> float:
    """Waits (at most `limit` s) until the machine has been nearly idle for `window` s; returns
    how long it waited. registry:2 in proxy mode stores a blob with a second upstream GET in
    the background after its client got the bytes; without this, that work (CPU and, in 7,
    the paced link) lands on whichever pull is measured next."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        b0 = system_busy_seconds()
        time.sleep(window)
        if (system_busy_seconds() - b0) / window < busy_cores:
            break
    return time.monotonic() - t0


def cold_get(port: int, digest: str, size: int, what: str, quiet: bool = True,
             warm: Path | None = None, probe: list | None = None) -> tuple[float, float]:
    """One curl of the blob (after waiting for the machine to go quiet, unless `quiet` is off).
    With `warm` (a directory), a page-cache probe of the blob's size runs in it right before the
    curl, and its (wall s, system CPU s) is appended to `probe`: see `page_cache_probe`."""
    waited = wait_quiet() if quiet else 0.0
    if waited > 1:
        log(f"{what}: waited {waited:.1f} s for the machine to go quiet")
    if warm is not None:
        figures = page_cache_probe(warm, size)
        if probe is not None:
            probe.append(figures)
    p = run(curl_get(port, f"/v2/{REPO}/blobs/{digest}", 600), timeout=660)
    return parse_curl(p.stdout, size, what)


def page_cache_probe(d: Path, size: int) -> tuple[float, float]:
    """Writes `size` bytes to a new file in `d` (buffered, no fsync, from one reused 1 MiB
    buffer) and deletes it: (wall s, system CPU s). What a cold miss costs the cache in page-cache
    writes on this machine at this moment, independent of any server. On a VM whose free memory
    the host takes back (virtio-balloon free page reporting), writing into fresh page-cache pages
    intermittently costs several times more system CPU; the edge's cold misses show the same.
    Writing into pages freed less than about a second before is always fast (up to 60x less CPU,
    see docs/data-path.md), so this probe is also the warm-up run right before each timed transfer
    through a server that writes what passes through it (the edge, registry:2's proxy, a registry:2
    receiving a push): that transfer's page-cache writes then land in just-freed pages, as they
    would on bare metal, for every server alike."""
    buf = os.urandom(MiB)
    path = d / "page-cache-probe"
    t0, s0 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
    with open(path, "wb", buffering=0) as f:
        for _ in range(size // MiB):
            f.write(buf)
    t1, s1 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
    path.unlink()
    return t1 - t0, s1 - s0


def cold_misses(r: dict, key: str, digest: str, size: int, direct: int, edge: int, r2: int,
                edge_pids=None, probe_dir: Path | None = None) -> None:
    """One cold pull through the edge and one through registry:2 proxy, between two straight from
    the `direct` port; r[f"{key}_ttfb.*"] and r[f"{key}_wall.*"] (direct: mean of its two).
    Starts with sync(2): the upstream registry:2 shares this machine's disk, so without it the
    write-back of the harness's own earlier writes (test data pushed into the upstream, other
    servers' caches) throttles whichever server writes next, a cost no real WAN upstream puts
    on the cache's disk."""
    os.sync()
    d1 = cold_get(direct, digest, size, "direct")
    probe = []
    c0 = cpu_seconds(edge_pids()) if edge_pids else None
    e = cold_get(edge, digest, size, "edge cold", warm=probe_dir, probe=probe)
    if c0 is not None:
        r[f"{key}_cpu.edge"] = cpu_seconds(edge_pids()) - c0
    if probe:
        r[f"{key}_pcwrite.direct"], r[f"{key}_pcsys.direct"] = probe[0]
    os.sync()
    q = cold_get(r2, digest, size, "registry:2 cold", warm=probe_dir)
    d2 = cold_get(direct, digest, size, "direct")
    r[f"{key}_ttfb.direct"], r[f"{key}_wall.direct"] = (d1[0] + d2[0]) / 2, (d1[1] + d2[1]) / 2
    r[f"{key}_ttfb.edge"], r[f"{key}_wall.edge"] = e
    r[f"{key}_ttfb.r2"], r[f"{key}_wall.r2"] = q


def pacer_check(tmp: Path, ngx: Server, name: str, size: int, rate: float) -> float:
    """MB/s of one curl of www/<name> (size bytes) from nginx through a fresh pacing proxy; fails if
    the proxy let the bytes through faster than its rate and burst allow."""
    px = start_pacer(tmp, "pacer-check", ngx.port, rate)
    try:
        _, total = parse_curl(run(curl_get(px.port, f"/{name}", 600), timeout=660).stdout, size, "pacer check")
    finally:
        px.stop()
    if size - pacer_burst(rate) > rate * total * 1.01:
        raise BenchError(f"the pacing proxy did not pace: {size} bytes in {total:.3f} s at a rate of {rate:.0f} B/s")
    return size / total / 1e6


ACCESS_RE = re.compile(r'"(GET|HEAD) (\S+) HTTP/[\d.]+" (\d{3}) (\d+|-)')


def upstream_bytes(up: Server, offset: int, digest: str) -> tuple[int, int]:
    """(GET requests, body bytes sent) for the blob in the upstream's access log after offset."""
    with open(up.logfile, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    gets, total = 0, 0
    for m in ACCESS_RE.finditer(text):
        if m.group(1) == "GET" and digest in m.group(2) and "/blobs/" in m.group(2):
            gets += 1
            total += int(m.group(4)) if m.group(4) != "-" else 0
    return gets, total


def settled_upstream_bytes(up: Server, offset: int, digest: str) -> tuple[int, int]:
    """upstream_bytes, once the count stops changing: the upstream logs a request when its
    response ends (bounded wait)."""
    last, gets, sent = None, 0, 0
    for _ in range(50):
        gets, sent = upstream_bytes(up, offset, digest)
        if (gets, sent) == last and gets > 0:
            break
        last = (gets, sent)
        time.sleep(0.2)
    return gets, sent


def burst(server: Server, up: Server, digest: str, size: int, clients: int, strict: bool = True) -> dict:
    """`clients` concurrent curls on one uncached blob; upstream bytes from its access log. Every
    client must get 200 and the whole blob; with strict=False (registry:2's proxy, the comparison,
    which now and then answers a concurrent cold pull with 500) failed clients are counted instead."""
    offset = up.logfile.stat().st_size
    pids = server.pids()
    reset_peak_rss(pids)
    t0 = time.monotonic()
    procs = [subprocess.Popen(curl_get(server.port, f"/v2/{REPO}/blobs/{digest}", 600),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(clients)]
    outs = []
    for pr in procs:
        try:
            outs.append(pr.communicate(timeout=660)[0])
        except subprocess.TimeoutExpired:
            pr.kill()
            pr.wait(timeout=10)
            raise
    wall = time.monotonic() - t0
    rss = peak_rss(server.pids())
    totals, failed = [], 0
    for o in outs:
        try:
            totals.append(parse_curl(o, size, f"burst client of {server.name}")[1])
        except BenchError as e:
            if strict:
                raise
            failed += 1
            log(f"{e} (counted as a failed client)")
    if not totals:
        raise BenchError(f"burst: every client of {server.name} failed")
    gets, sent = settled_upstream_bytes(up, offset, digest)
    return dict(slowest=max(totals), wall=wall, upstream_gets=gets, upstream_bytes=sent,
                upstream_ratio=sent / size, peak_rss=rss, failed=failed)


class Download(threading.Thread):
    """One curl of a URL, `delay` s from start(), optionally at `--limit-rate`, its body hashed with
    sha256 as it arrives (no copy on disk). After join(): status line, nbytes, digest, error."""

    def __init__(self, url: str, delay: float, limit: str | None, timeout: float):
        super().__init__(daemon=True)
        self.cmd = (["curl", "-sS", "-o", "-", "--max-time", str(int(timeout)), "-w",
                     "%{stderr}BENCH %{http_code} %{size_download} %{time_starttransfer} %{time_total}\n"]
                    + (["--limit-rate", limit] if limit else []) + [url])
        self.delay, self.stopping = delay, threading.Event()
        self.proc: subprocess.Popen | None = None
        self.nbytes, self.digest, self.stderr, self.error = 0, None, "", None

    def run(self) -> None:
        try:
            if self.stopping.wait(self.delay):
                return
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
            if self.stopping.is_set():
                self.proc.kill()
            try:
                fcntl.fcntl(self.proc.stdout, fcntl.F_SETPIPE_SZ, 1 * MiB)
            except OSError:
                pass
            h, buf = hashlib.sha256(), memoryview(bytearray(1 * MiB))
            while n := self.proc.stdout.readinto(buf):
                h.update(buf[:n])
                self.nbytes += n
            self.stderr = self.proc.stderr.read().decode(errors="replace")
            self.proc.wait(timeout=30)
            self.digest = "sha256:" + h.hexdigest()
        except Exception as e:  # reported by the caller
            self.error = e

    def status(self) -> tuple[str, int, float] | None:
        """(HTTP status, bytes curl counted, time_total) from curl's -w line."""
        m = re.search(r"^BENCH (\d{3}) (\d+) ([\d.]+) ([\d.]+)$", self.stderr, re.M)
        return (m.group(1), int(m.group(2)), float(m.group(4))) if m else None

    def stop(self) -> None:
        self.stopping.set()
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def fanout(server: Server, up: Server, digest: str, size: int, p: dict) -> dict:
    """p['fanout_clients'] curls on one uncached blob, the first at --limit-rate p['fanout_limit'],
    the last started p['fanout_late'] s after the others; each body checked by sha256."""
    offset = up.logfile.stat().st_size
    reset_peak_rss(server.pids())
    n, url = p["fanout_clients"], server.url(f"/v2/{REPO}/blobs/{digest}")
    clients = [Download(url, p["fanout_late"] if i == n - 1 else 0.0, p["fanout_limit"] if i == 0 else None, 600)
               for i in range(n)]
    try:
        for c in clients:
            c.start()
        deadline = time.monotonic() + 660
        for c in clients:
            c.join(max(0.0, deadline - time.monotonic()))
        if any(c.is_alive() for c in clients):
            raise BenchError(f"fan-out on {server.name}: clients still running after 660 s")
    finally:
        for c in clients:
            c.stop()
    rss = peak_rss(server.pids())
    exact, times, failures = 0, [], []
    for i, c in enumerate(clients):
        st = c.status()
        if c.error or st is None:
            raise BenchError(f"fan-out client {i}: {c.error or 'no curl status line'}: {c.stderr.strip()[-500:]}")
        if st[0] == "200" and c.nbytes == size and c.digest == digest:
            exact += 1
            times.append(st[2])
        else:
            why = "wrong digest" if c.nbytes == size else f"{c.nbytes} of {size} bytes"
            said = "; ".join(x for x in c.stderr.splitlines() if x.strip() and not x.startswith("BENCH "))
            failures.append(f"client {i}: HTTP {st[0]}, {why}" + (f" ({said[:200]})" if said else ""))
    gets, sent = settled_upstream_bytes(up, offset, digest)
    return dict(exact=exact, slowest=max(times, default=None), upstream_gets=gets, upstream_ratio=sent / size,
                peak_rss=rss, failures=failures)


def dir_usage(path: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) under path, like du -sb and du -sB1."""
    apparent = allocated = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for n in filenames + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            if not os.path.isdir(os.path.join(dirpath, n)):
                apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


# ---------------------------------------------------------------- one run

BULK_FIELDS = {"mbps": "mbps", "cpu_per_gb": "cpu_per_gb", "bg": "background_cores", "user_share": "user_share"}


def keep(r: dict, what: str, key: str, res: dict, fields: dict) -> None:
    """r[f"{what}_{name}.{key}"] = res[field] for each name: field."""
    for name, field in fields.items():
        r[f"{what}_{name}.{key}"] = res[field]


def retire(*servers: Server) -> None:
    """Stops servers we are done with and removes their caches (an edge's data/, a registry's
    storage/; logs and configs stay), to spare the disk."""
    for s in servers:
        s.stop()
        for sub in ("data", "storage"):
            shutil.rmtree(s.logfile.parent / sub, ignore_errors=True)


def paced_misses(binary: Path, p: dict, tmp: Path, r: dict, up: Server, ngx: Server,
                 blobs: dict[str, tuple[int, str]], idx: int) -> None:
    """7: a fresh edge and registry:2 proxy whose upstream is a pacing proxy in front of the
    upstream; the direct pulls go through the same proxy. Blobs: key -> (size, digest)."""
    rate = p["paced_rate"]
    log(f"run {idx}: pacing proxy alone, at {rate / 1e6:,.0f} MB/s")
    r["pace_check_mbps.nginx"] = pacer_check(tmp, ngx, "pace-check", blobs["cold"][0], rate)
    pacer = start_pacer(tmp, "pacer", up.port, rate)
    pr2 = start_registry(tmp, "registry2-paced", proxy_port=pacer.port)
    pedge, _, _ = start_edge(binary, edge_config(tmp, "edge-paced", pacer.port, 100 * GiB))
    for k, (size, digest) in blobs.items():
        log(f"run {idx}: cold miss {k} ({size >> 20} MiB), upstream paced")
        cold_misses(r, f"paced_{k}", digest, size, pacer.port, pedge.port, pr2.port, pedge.pids, tmp)
    retire(pedge, pr2, pacer)


def https_hits(binary: Path, p: dict, tmp: Path, r: dict, up: Server, www: Path, blob_path: str,
               blob_digest: str, idx: int) -> None:
    """8: the cached blob over HTTPS (TLS 1.3, one self-signed P-256 cert for both), HTTP/1.1 with
    wrk and h2 with h2load, from an edge with an HTTPS listener and from nginx with one."""
    cert, key, ctx = make_cert(tmp / "tls")
    ngx = start_nginx(tmp, www, "nginx-tls", (cert, key))
    edge, _, _ = start_edge(binary, edge_config(tmp, "edge-tls", up.port, 100 * GiB, tls=(cert, key)))
    for _ in range(2):
        fetch(edge.tls_port, blob_path, p["blob"], blob_digest, tls=ctx)
    fetch(ngx.tls_port, "/blob", p["blob"], blob_digest, tls=ctx)
    for who, s, path in (("edge", edge, blob_path), ("nginx", ngx, "/blob")):
        log(f"run {idx}: cached blob over HTTPS, HTTP/1.1 and h2, {who}")
        keep(r, "tls1", who, wrk(s, path, p, tmp, upstream=up, tls=True), BULK_FIELDS)
        res = h2load(s, path, p, upstream=up)
        keep(r, "tls2", who, res, BULK_FIELDS)
        r[f"tls_cipher_{who}"] = res["cipher"]
    retire(edge, ngx)


def fanout_budget(size: int) -> int:
    """9's store budget: well under the blob."""
    return size // 4


def over_budget_fanout(binary: Path, p: dict, tmp: Path, r: dict, up: Server, size: int, digest: str,
                       idx: int) -> None:
    """9: a fresh edge whose store budget is a quarter of the blob; fanout() on it."""
    budget = fanout_budget(size)
    log(f"run {idx}: over-budget fan-out, {p['fanout_clients']} clients, {size >> 20} MiB blob, "
        f"{budget >> 20} MiB store")
    edge, _, _ = start_edge(binary, edge_config(tmp, "edge-fanout", up.port, budget, p["fanout_chunk"]))
    f = fanout(edge, up, digest, size, p)
    retire(edge)
    if f["failures"]:
        log(f"run {idx}: over-budget fan-out: " + "; ".join(f["failures"]))
        if p["strict"]:
            raise BenchError("over-budget fan-out: not every client got the exact bytes: " + "; ".join(f["failures"]))
    r["fanout_exact.edge"], r["fanout_ratio.edge"] = f["exact"], f["upstream_ratio"]
    r["fanout_gets.edge"], r["fanout_slowest.edge"], r["rss_fanout.edge"] = f["upstream_gets"], f["slowest"], f["peak_rss"]
    r["fanout_size"], r["fanout_budget"], r["fanout_failures"] = size, budget, f["failures"]

def push_through(binary: Path, p: dict, tmp: Path, r: dict, idx: int) -> None:
    """10: one blob pushed (POST, then PUT with the body) straight to a registry:2 and through an edge
    whose upstream is that registry:2 (`private = true`, `push = true`); benches/push_bench.py does it."""
    import push_bench
    d = tmp / "push"
    d.mkdir()
    log(f"run {idx}: push of {p['push'] >> 20} MiB, direct and through the edge")
    res = push_bench.run_once(binary, d, p["push"], idx)
    r["push_wall.direct"], r["push_wall.edge"] = res["direct_s"], res["edge_s"]
    r["push_chunked_wall.direct"], r["push_chunked_wall.edge"] = res["chunked_direct_s"], res["chunked_edge_s"]
    r["rss_push.edge"] = max(res["edge_peak_rss"], res["chunked_edge_peak_rss"])


def start_ceph(tmp: Path) -> tuple[Path, dict]:
    """scripts/ceph-rgw's single-node Ceph with radosgw on 127.0.0.1, watched by this process;
    (its directory, its CEPH_RGW_* values)."""
    d = tmp / "ceph"
    d.mkdir()
    while True:
        rgw = free_port()
        if not 6800 <= rgw <= 7300:
            break
    out = run([str(ROOT / "scripts" / "ceph-rgw"), "start", str(d), str(rgw), str(free_port()), str(os.getpid())],
              timeout=180)
    vals = dict(line.split("=", 1) for line in out.stdout.splitlines() if line.startswith("CEPH_RGW_"))
    return d, vals


def shared_tier(binary: Path, p: dict, tmp: Path, r: dict, up: Server, idx: int) -> None:
    """11: two edges on one Ceph RGW bucket. Edge A pulls a blob (and writes it through to the bucket);
    then a cold pull of it through edge B (fresh store: from the shared tier), a local hit on A, and a
    pull straight from the upstream."""
    if not shutil.which("radosgw"):
        log(f"run {idx}: shared tier not measured: radosgw is not installed (apt-get install ceph-mon ceph-osd radosgw)")
        return
    log(f"run {idx}: shared tier: starting Ceph")
    ceph_dir, c = start_ceph(tmp)
    try:
        run([str(ROOT / "scripts" / "ceph-rgw"), "mkbucket", str(ceph_dir), "bench"], timeout=60)
        section = (f"[storage.shared]\nkind = \"s3\"\nendpoint = \"{c['CEPH_RGW_ENDPOINT']}\"\nbucket = \"bench\"\n"
                   f"path_style = true\naccess_key_id = \"{c['CEPH_RGW_ACCESS_KEY']}\"\n"
                   f"secret_access_key = \"{c['CEPH_RGW_SECRET_KEY']}\"\n")
        edges = []
        for name in ("edge-shared-a", "edge-shared-b"):
            d = edge_config(tmp, name, up.port, 100 * GiB)
            cfg = (d / "config.toml").read_text()
            (d / "config.toml").write_text(cfg.replace("[cache]\n", section + "[cache]\n", 1))
            edges.append(start_edge(binary, d)[0])
        a, b = edges
        blob = tmp / "shared-blob"
        digest = make_blob(blob, p["shared"])
        push_blob_file(up.port, blob, digest)
        blob.unlink()
        fetch(a.port, f"/v2/{REPO}/blobs/{digest}", p["shared"], digest)
        deadline = time.monotonic() + 120
        done = 'sparkcr_edge_shared_uploads_total{outcome="completed"}'
        while edge_metric(a, done) < 1:
            if time.monotonic() > deadline:
                raise BenchError("edge A's write-through to the shared tier did not complete in 120 s")
            time.sleep(0.1)
        # (Ceph's daemons never let the machine go quiet: settle for a sync and a pause.)
        os.sync()
        time.sleep(1)
        d1 = cold_get(up.port, digest, p["shared"], "direct", quiet=False)
        c0 = cpu_seconds(b.pids())
        via_b = cold_get(b.port, digest, p["shared"], "edge B, from the shared tier", quiet=False, warm=tmp)
        r["shared_cpu.edge"] = cpu_seconds(b.pids()) - c0
        hit_a = cold_get(a.port, digest, p["shared"], "edge A, local hit", quiet=False)
        d2 = cold_get(up.port, digest, p["shared"], "direct", quiet=False)
        if edge_metric(b, 'sparkcr_edge_shared_lookups_total{kind="blob",outcome="hit"}') < 1:
            raise BenchError("edge B did not take the blob from the shared tier")
        r["shared_wall.direct"] = (d1[1] + d2[1]) / 2
        r["shared_wall.edge"], r["shared_hit.edge"] = via_b[1], hit_a[1]
        r["shared_hit.direct"] = r["shared_wall.direct"]
        retire(a, b)
    finally:
        subprocess.run([str(ROOT / "scripts" / "ceph-rgw"), "stop", str(ceph_dir)], capture_output=True, timeout=60)


def run_once(binary: Path, p: dict, tmp: Path, big: bool, idx: int) -> dict:
    r: dict = {}
    data = tmp / "data"
    data.mkdir()
    www = tmp / "www"
    www.mkdir()

    log(f"run {idx}: test data")
    blob_digest = make_blob(www / "blob", p["blob"])
    small_digest = make_blob(www / "small", p["small"])
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [small_digest]},
        "config": {"Cmd": ["/bin/sh"]},
    }, separators=(",", ":")).encode()
    (www / "config").write_bytes(config)
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": small_digest, "size": p["small"]}],
    }, indent=2).encode()
    (www / "manifest").write_bytes(manifest)
    cold = {"cold": (data / "cold", p["cold"]), "burst": (data / "burst", p["cold"])}
    if big:
        cold["big"] = (data / "big", p["big"])  # also 9's blob
    else:
        cold["fanout"] = (data / "fanout", p["fanout"])
    cold_digest = {k: make_blob(path, size) for k, (path, size) in cold.items()}

    log(f"run {idx}: starting servers")
    up = start_registry(tmp, "upstream")
    for path, digest in [(www / "blob", blob_digest), (www / "small", small_digest),
                         (www / "config", config_digest)] + [(cold[k][0], cold_digest[k]) for k in cold]:
        push_blob_file(up.port, path, digest)
    manifest_digest = push_manifest(up.port, "v1", manifest)
    r2 = start_registry(tmp, "registry2-proxy", proxy_port=up.port)
    ngx = start_nginx(tmp, www)
    edge_dir = edge_config(tmp, "edge", up.port, 100 * GiB)
    edge, _, _ = start_edge(binary, edge_dir)
    servers = {"edge": edge, "r2": r2, "nginx": ngx}

    blob_path = f"/v2/{REPO}/blobs/{blob_digest}"
    small_path = f"/v2/{REPO}/blobs/{small_digest}"
    by_digest = f"/v2/{REPO}/manifests/{manifest_digest}"
    by_tag = f"/v2/{REPO}/manifests/v1"

    # Warm both caches (and check the bytes) before measuring hits.
    for s in (edge, r2):
        for _ in range(2):
            fetch(s.port, blob_path, p["blob"], blob_digest)
            fetch(s.port, small_path, p["small"], small_digest)
            fetch(s.port, f"/v2/{REPO}/blobs/{config_digest}", len(config), config_digest)
            fetch(s.port, by_digest, len(manifest), manifest_digest, accept=OCI_MANIFEST)
            fetch(s.port, by_tag, len(manifest), manifest_digest, accept=OCI_MANIFEST)
    fetch(ngx.port, "/blob", p["blob"], blob_digest)
    fetch(ngx.port, "/manifest", len(manifest), manifest_digest)
    time.sleep(0.5)  # let registry:2 finish committing what it proxied

    # 1 + 5: the cached 64 MiB blob, 16 connections; peak RSS during it.
    for key, s in servers.items():
        log(f"run {idx}: cached blob, {key}")
        path = "/blob" if key == "nginx" else blob_path
        pids = s.pids()
        r[f"rss_reset_ok"] = reset_peak_rss(pids) and r.get("rss_reset_ok", True)
        keep(r, "blob", key, wrk(s, path, p, tmp, upstream=up), BULK_FIELDS)
        r[f"rss_blob.{key}"] = peak_rss(s.pids())

    # 2: small blob, manifest by digest and by tag, keep-alive.
    for what, paths, accept in [
        ("small", {"edge": small_path, "r2": small_path, "nginx": "/small"}, None),
        ("mdigest", {"edge": by_digest, "r2": by_digest, "nginx": "/manifest"}, OCI_MANIFEST),
        ("mtag", {"edge": by_tag, "r2": by_tag, "nginx": "/manifest"}, OCI_MANIFEST),
    ]:
        for key, s in servers.items():
            log(f"run {idx}: {what}, {key}")
            res = wrk(s, paths[key], p, tmp, accept, upstream=up)
            r[f"{what}_upstream_cpu_us.{key}"] = res["upstream_cpu"] / res["requests"] * 1e6
            keep(r, what, key, res, {"rps": "rps", "cpu_us": "cpu_us_per_req", "bg": "background_cores"})

    def abba(prefix: str, other: Server, ref_key: str, words: str) -> None:
        """The small-blob and manifest-by-tag hits on `other` (warmed here) against the edge,
        four wrk runs in the order edge, other, other, edge (a drift of the machine over the
        four weighs on both alike); the mean of each into r[f"{prefix}_{what}_rps.*"]."""
        for _ in range(2):
            fetch(other.port, small_path, p["small"], small_digest)
            fetch(other.port, by_tag, len(manifest), manifest_digest, accept=OCI_MANIFEST)
        for what, path, accept in [("small", small_path, None), ("mtag", by_tag, OCI_MANIFEST)]:
            log(f"run {idx}: {what}, edge without and with {words} (off, on, on, off)")
            rps = {ref_key: [], "edge": []}
            for key, s in ((ref_key, edge), ("edge", other), ("edge", other), (ref_key, edge)):
                rps[key].append(wrk(s, path, p, tmp, accept, upstream=up)["rps"])
            for key, vals in rps.items():
                r[f"{prefix}_{what}_rps.{key}"] = statistics.mean(vals)

    # 2 (audit): the same hits from a second edge with the audit file on.
    audit_dir = edge_config(tmp, "edge-audit", up.port, 100 * GiB, audit=True)
    edge_audit, _, _ = start_edge(binary, audit_dir)
    abba("audit", edge_audit, "noaudit", "the audit file")
    audit_lines = sum(1 for _ in open(audit_dir / "audit.jsonl", "rb"))
    if audit_lines < 4:
        raise BenchError(f"the audit file has {audit_lines} records after the audited wrk runs")
    retire(edge_audit)

    # 2 (policy): the same hits from an edge with a 20-block [[policy]] that every request
    # walks to its last block.
    policy_dir = edge_config(tmp, "edge-policy", up.port, 100 * GiB, policy=True)
    edge_policy, _, _ = start_edge(binary, policy_dir)
    abba("policy", edge_policy, "nopolicy", f"a {POLICY_BLOCKS}-block policy")
    retire(edge_policy)

    # 2 (signature): the same hits from an edge whose policy admits the repository only when
    # signed by a key (the manifest is; its verdict is kept after the first pull).
    signed_key = sign_manifest(tmp, up.port, manifest_digest)
    signed_dir = edge_config(tmp, "edge-signed", up.port, 100 * GiB, signed_by=signed_key)
    edge_signed, _, _ = start_edge(binary, signed_dir)
    abba("signed", edge_signed, "nopolicy", "require_signature")
    retire(edge_signed)

    # 3: cold miss, through the edge, through registry:2 proxy, and straight from the upstream.
    for k in [k for k in ("cold", "big") if k in cold]:
        size, digest = cold[k][1], cold_digest[k]
        log(f"run {idx}: cold miss {k} ({size >> 20} MiB)")
        cold_misses(r, k, digest, size, up.port, edge.port, r2.port, edge.pids, tmp)
        # the edge now has it: a second pull is a hit
        time.sleep(0.3)

    # 4 + 5: cold burst.
    for key, s in (("edge", edge), ("r2", r2)):
        log(f"run {idx}: cold burst of {p['burst']}, {key}")
        b = burst(s, up, cold_digest["burst"], p["cold"], p["burst"], strict=key == "edge")
        r[f"burst_failed.{key}"] = b["failed"]
        r[f"burst_ratio.{key}"] = b["upstream_ratio"]
        r[f"burst_gets.{key}"] = b["upstream_gets"]
        r[f"burst_slowest.{key}"] = b["slowest"]
        r[f"rss_burst.{key}"] = b["peak_rss"]

    # 7: cold misses again, every pull through one pacing proxy in front of the upstream.
    (www / "pace-check").hardlink_to(cold["cold"][0])
    paced_misses(binary, p, tmp, r, up, ngx, {k: (cold[k][1], cold_digest[k]) for k in ("cold", "big") if k in cold},
                 idx)
    # 8: the cached blob over HTTPS, HTTP/1.1 and h2.
    https_hits(binary, p, tmp, r, up, www, blob_path, blob_digest, idx)
    # 9: a blob larger than the store's budget, to several clients at different speeds.
    k = "big" if big else "fanout"
    over_budget_fanout(binary, p, tmp, r, up, cold[k][1], cold_digest[k], idx)
    # 10: a push through the edge (write-through) against a push straight to registry:2.
    push_through(binary, p, tmp, r, idx)
    # 11: two edges on one shared tier (Ceph RGW).
    shared_tier(binary, p, tmp, r, up, idx)

    # 6a: churn through a small budget, on its own edge.
    log(f"run {idx}: churn")
    rng = random.Random(1234)
    budget = p["churn_budget"]
    sizes = []
    while sum(sizes) < budget * p["churn_factor"]:
        # a spread of layer sizes: from a few KiB to a fifth of the budget
        sizes.append(min(int(rng.lognormvariate(14, 2.2)) + 1, budget // 5))
    churn = []
    uconn = _conn(up.port)
    for i, size in enumerate(sizes):
        body = os.urandom(size)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        push_blob(uconn, body, size, digest)
        churn.append((digest, size))
    uconn.close()
    churn_dir = edge_config(tmp, "edge-churn", up.port, budget)
    ce, _, _ = start_edge(binary, churn_dir)
    conn = _conn(ce.port)
    for digest, size in churn:
        fetch(ce.port, f"/v2/{REPO}/blobs/{digest}", size, conn=conn)
    conn.close()
    # Commits happen after the last byte, off the client's path: wait for them.
    deadline = time.monotonic() + 30
    while edge_metric(ce, "sparkcr_edge_fills_in_flight") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    logical = edge_metric(ce, "sparkcr_edge_store_bytes")
    r["churn_blobs_kept"] = edge_metric(ce, "sparkcr_edge_store_blobs")
    r["churn_evictions"] = edge_metric(ce, "sparkcr_edge_store_evictions_total")
    ce.stop()
    if ce.proc.returncode != 0:
        raise BenchError(f"edge-churn exited {ce.proc.returncode} on SIGTERM")
    apparent, allocated = dir_usage(churn_dir / "data")
    stats = run([str(binary), "cache", "stats", "--config", str(churn_dir / "config.toml")], timeout=120)
    r["churn_stats"] = stats.stdout.strip()
    r["churn_inserted"] = sum(sizes)
    r["churn_budget"] = budget
    r["churn_count"] = len(sizes)
    r["churn_logical"] = logical
    r["churn_apparent_ratio"] = apparent / logical
    r["churn_alloc_ratio"] = allocated / logical

    # 6b: start-to-ready of the main edge with ready_bytes cached.
    have = p["blob"] + p["cold"] * 2 + (p["big"] if big else 0)
    extra = max(0, p["ready_bytes"] - have)
    piece = min(p["cold"], max(extra, 1))
    n_big = -(-extra // piece) if extra else 0
    log(f"run {idx}: filling the edge to {p['ready_bytes'] >> 20} MiB ({n_big} x {piece >> 20} MiB "
        f"+ {p['ready_small']} small blobs)")
    uconn, econn = _conn(up.port), _conn(edge.port)
    for i in range(n_big):
        path = data / "fill"
        digest = make_blob(path, piece)
        push_blob_file(up.port, path, digest)
        fetch(edge.port, f"/v2/{REPO}/blobs/{digest}", piece, conn=econn)
        path.unlink()
    for i in range(p["ready_small"]):
        body = os.urandom(p["small"])
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        push_blob(uconn, body, len(body), digest)
        fetch(edge.port, f"/v2/{REPO}/blobs/{digest}", len(body), conn=econn)
    uconn.close()
    econn.close()
    r["ready_cached_bytes"] = edge_metric(edge, "sparkcr_edge_store_bytes")
    r["ready_cached_blobs"] = edge_metric(edge, "sparkcr_edge_store_blobs")
    edge.stop()
    if edge.proc.returncode != 0:
        raise BenchError(f"edge exited {edge.proc.returncode} on SIGTERM")
    t_logs, t_readyz = [], []
    for i in range(p["ready_starts"]):
        s, t_log, t_ready = start_edge(binary, edge_dir, tag=f"-restart{i}")
        t_logs.append(t_log)
        t_readyz.append(t_ready)
        s.stop()
    r["ready_log"] = statistics.median(t_logs)
    r["ready_readyz"] = statistics.median(t_readyz)

    stop_all()
    return r


# ---------------------------------------------------------------- report

def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    if unit == "MiB":
        return f"{v / MiB:.1f} MiB"
    if unit == "s":
        return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"
    if unit == "x":
        return f"{v:.3f}×"
    if unit == "n":
        return f"{v:g}"
    if unit == "":
        return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"
    return (f"{v:,.0f}" if v >= 100 else f"{v:.3g}") + f" {unit}"


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def rate_label(rate: float) -> str:
    return f"{rate / 1e9:g} GB/s" if rate >= 1e9 else f"{rate / 1e6:g} MB/s"


def rows(p: dict, big: bool, results: list[dict]):
    """(label, metric, unit, reference column key, target label, check(edge/r2, edge/ref, edge))."""
    b, c = p["blob"] >> 20, p["cold"] >> 20
    misses = [("cold", p["cold"])] + ([("big", p["big"])] if big else [])
    out = [
        (f"1. cached {b} MiB blob, {p['conns']} conns: throughput", "blob_mbps", "MB/s", "nginx",
         "≥ 0.9× nginx", lambda q, n, e: n >= 0.9),
        (f"1. cached {b} MiB blob: server CPU per GB served", "blob_cpu_per_gb", "s/GB", "nginx",
         "≤ 1.25× nginx", lambda q, n, e: n <= 1.25),
        ("2. small blob (" + str(p["small"]) + " B): requests/s", "small_rps", "req/s", "nginx",
         "≥ 0.5× nginx", lambda q, n, e: n >= 0.5),
        ("2. small blob: server CPU per request", "small_cpu_us", "µs", "nginx", "", None),
        ("2. manifest by digest: requests/s", "mdigest_rps", "req/s", "nginx", "≥ 0.5× nginx",
         lambda q, n, e: n >= 0.5),
        ("2. manifest by digest: server CPU per request", "mdigest_cpu_us", "µs", "nginx", "", None),
        ("2. manifest by tag (within tag_ttl): requests/s", "mtag_rps", "req/s", "nginx", "≥ 0.5× nginx",
         lambda q, n, e: n >= 0.5),
        ("2. manifest by tag: server CPU per request", "mtag_cpu_us", "µs", "nginx", "", None),
        ("2. small blob with the audit file on: requests/s", "audit_small_rps", "req/s", "noaudit",
         "≥ 0.9× audit off", lambda q, n, e: n >= 0.9),
        ("2. manifest by tag with the audit file on: requests/s", "audit_mtag_rps", "req/s", "noaudit",
         "≥ 0.9× audit off", lambda q, n, e: n >= 0.9),
        (f"2. small blob through a {POLICY_BLOCKS}-block [[policy]]: requests/s", "policy_small_rps", "req/s",
         "nopolicy", "≥ 0.95× no policy", lambda q, n, e: n >= 0.95),
        (f"2. manifest by tag through a {POLICY_BLOCKS}-block [[policy]]: requests/s", "policy_mtag_rps", "req/s",
         "nopolicy", "≥ 0.95× no policy", lambda q, n, e: n >= 0.95),
        ("2. small blob through require_signature: requests/s", "signed_small_rps", "req/s",
         "nopolicy", "≥ 0.95× no policy", lambda q, n, e: n >= 0.95),
        ("2. manifest by tag through require_signature (signed, verdict kept): requests/s", "signed_mtag_rps",
         "req/s", "nopolicy", "≥ 0.95× no policy", lambda q, n, e: n >= 0.95),
    ]
    for k, size in misses:
        out += [
            (f"3. cold miss {size >> 20} MiB: wall time", f"{k}_wall", "s", "direct", "≤ 1.5× direct, < registry:2",
             lambda q, n, e: n <= 1.5 and q < 1),
            (f"3. cold miss {size >> 20} MiB: time to first byte", f"{k}_ttfb", "s", "direct", "", None),
            (f"3. cold miss {size >> 20} MiB: edge CPU", f"{k}_cpu", "s", None, "", None),
            (f"3. machine probe (and page-cache warm-up) just before the edge's pull: buffered write of "
             f"{size >> 20} MiB to a new file", f"{k}_pcwrite", "s", "direct", "", None),
            ("3. machine probe: its system CPU", f"{k}_pcsys", "s", "direct", "", None),
        ]
    out += [
        (f"4. cold burst, {p['burst']} clients on one {c} MiB blob: upstream bytes / blob size",
         "burst_ratio", "x", None, "= 1× the blob", lambda q, n, e: abs(e - 1.0) < 1e-9),
        (f"4. cold burst: slowest client's wall time", "burst_slowest", "s", None, "", None),
        ("5. peak RSS (VmHWM) during 1", "rss_blob", "MiB", "nginx", "≤ 64 MiB", lambda q, n, e: e <= 64 * MiB),
        ("5. peak RSS (VmHWM) during 4", "rss_burst", "MiB", None, "≤ 100 MiB", lambda q, n, e: e <= 100 * MiB),
    ]
    # (6 is edge-only; report() prints it between 5 and 7.)
    rate = rate_label(p["paced_rate"])
    out.append((f"7. the pacing proxy alone at {rate}: nginx → proxy → curl, {c} MiB: throughput",
                "pace_check_mbps", "MB/s", "nginx", "", None))
    for k, size in misses:
        wall = median([res.get(f"paced_{k}_wall.direct") for res in results])
        reached = f"; direct reached {size / wall / 1e6:,.0f} MB/s" if wall else ""
        out.append((f"7. cold miss {size >> 20} MiB, upstream paced at {rate}{reached}: wall time",
                    f"paced_{k}_wall", "s", "direct", "≤ 1.10× direct", lambda q, n, e: n <= 1.10))
        out.append((f"7. cold miss {size >> 20} MiB, paced: edge CPU", f"paced_{k}_cpu", "s", None, "", None))
        out.append((f"7. machine probe (and warm-up) just before the edge's pull: buffered write of "
                    f"{size >> 20} MiB to a new file", f"paced_{k}_pcwrite", "s", "direct", "", None))
    for tag, how in (("tls1", "HTTP/1.1 (wrk)"), ("tls2", "h2 (h2load)")):
        out += [
            (f"8. cached {b} MiB blob over HTTPS (TLS 1.3), {how}, {p['conns']} conns: throughput",
             f"{tag}_mbps", "MB/s", "nginx", "", None),
            (f"8. cached {b} MiB blob over HTTPS, {how.split()[0]}: server CPU per GB served",
             f"{tag}_cpu_per_gb", "s/GB", "nginx", "≤ 0.8× nginx", lambda q, n, e: n <= 0.8),
        ]
    nf, fsize = p["fanout_clients"], (p["big"] if big else p["fanout"])
    out += [
        (f"9. over-budget fan-out, {nf} clients on one {fsize >> 20} MiB blob through a {fanout_budget(fsize) >> 20} MiB "
         f"store: clients that got the exact bytes (of {nf})", "fanout_exact", "n", None, f"{nf} of {nf}",
         lambda q, n, e: e == nf),
        ("9. over-budget fan-out: upstream bytes / blob size", "fanout_ratio", "x", None, "≤ 3×",
         lambda q, n, e: e <= 3),
        ("9. over-budget fan-out: peak RSS (VmHWM)", "rss_fanout", "MiB", None, "≤ 100 MiB",
         lambda q, n, e: e <= 100 * MiB),
        (f"9. over-budget fan-out: slowest wall time of a client that got the exact bytes (one client at "
         f"--limit-rate {p['fanout_limit']}, one started {p['fanout_late']:g} s late)", "fanout_slowest", "s", None,
         "", None),
        ("10. push of one " + str(p["push"] >> 20) + " MiB blob (POST + PUT): wall time, through the edge vs straight to "
         "registry:2", "push_wall", "s", "direct", "≤ 1.15× direct", lambda q, n, e: n <= 1.15),
        ("10. push of another " + str(p["push"] >> 20) + " MiB blob as docker, podman and skopeo send it (POST, "
         "PATCH with the body, PUT): wall time, through the edge vs straight to registry:2", "push_chunked_wall", "s",
         "direct", "≤ 1.15× direct", lambda q, n, e: n <= 1.15),
        ("10. push: edge peak RSS (VmHWM), the higher of the two pushes", "rss_push", "MiB", None, "≤ 100 MiB",
         lambda q, n, e: e <= 100 * MiB),
        (f"11. cold miss {p['shared'] >> 20} MiB through edge B, already in the shared tier (Ceph RGW) from edge A: "
         "wall time", "shared_wall", "s", "direct", "", None),
        ("11. the same blob as a local hit on edge A: wall time", "shared_hit", "s", "direct", "", None),
        ("11. edge B's CPU for its pull from the shared tier", "shared_cpu", "s", None, "", None),
    ]
    return out


def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def spread(vals):
    vals = [v for v in vals if v is not None]
    if len(vals) < 2 or not statistics.median(vals):
        return None
    return (max(vals) - min(vals)) / statistics.median(vals)


# What a reference column holds when it is not nginx.
REF_NOTE = {"direct": " (direct)", "noaudit": " (edge, audit off)", "nopolicy": " (edge, no policy)"}


def report(results: list[dict], p: dict, big: bool, smoke: bool, info: dict) -> str:
    n = len(results)
    get = lambda key: [res.get(key) for res in results]
    L = []
    L.append("# Benchmarks: sparkcr-edge vs registry:2 (proxy) vs nginx (sendfile)\n")
    L.append("Generated by `python3 benches/harness.py" + (" --smoke" if smoke else "") + (" --big" if big else "")
             + "` (see `benches/README.md`); do not edit by hand. First pulls over an emulated WAN are "
             "in [`benchmarks-wan.md`](benchmarks-wan.md) (`benches/wan_bench.py`).\n")
    L.append(f"- date: {info['date']}")
    L.append(f"- commit: `{info['commit']}`")
    L.append(f"- machine: {info['cpu']}, {info['nproc']} cores (`nproc`), {info['mem']} RAM, Linux {info['kernel']}")
    L.append(f"- software: {info['versions']}")
    if EDGE_ENV:
        L.append("- edge started with extra environment: " + " ".join(f"`{k}={v}`" for k, v in EDGE_ENV.items()))
    L.append(f"- load average before / after: {info['load_before']} / {info['load_after']}")
    L.append(f"- runs: {n} (fresh servers, caches and random data each); each figure is the median of the runs"
             + (" (mean of two)" if n == 2 else "") + "; all traffic on 127.0.0.1\n")
    L.append("| figure | sparkcr-edge | registry:2 proxy | nginx / direct | edge ÷ registry:2 | edge ÷ nginx / direct "
             "| target | met | spread of edge figure over runs |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    verdicts = []

    def table_row(label, m, unit, refkey, target, check):
        e, q = median(get(f"{m}.edge")), median(get(f"{m}.r2"))
        ref = median(get(f"{m}.{refkey}")) if refkey else None
        qr, nr = ratio(e, q), ratio(e, ref)
        met = ""
        if check and e is not None:
            per_run = []
            for res in results:
                ee, qq = res.get(f"{m}.edge"), res.get(f"{m}.r2")
                rr = res.get(f"{m}.{refkey}") if refkey else None
                per_run.append(check(ratio(ee, qq) or 0, ratio(ee, rr) or 0, ee))
            ok = check(qr or 0, nr or 0, e)
            met = "yes" if ok else "**no**"
            if n > 1 and any(x != ok for x in per_run):
                met += f" ({sum(per_run)} of {n} runs met it)"
            verdicts.append((label, target, ok))
        sp = spread(get(f"{m}.edge"))
        L.append(f"| {label} | {fmt(e, unit)} | {fmt(q, unit)} | "
                 f"{fmt(ref, unit) + REF_NOTE.get(refkey, '') if refkey else '–'} | "
                 f"{fmt(qr, 'x') if qr is not None else '–'} | {fmt(nr, 'x') if nr is not None else '–'} | "
                 f"{target or '–'} | {met or '–'} | {('±' + format(sp / 2 * 100, '.0f') + ' %') if sp is not None else '–'} |")

    table = rows(p, big, results)
    section = lambda row: int(row[0].split(".")[0])
    for row in table:
        if section(row) < 6:
            table_row(*row)
    # 6: edge only.
    ap, al = median(get("churn_apparent_ratio")), median(get("churn_alloc_ratio"))
    r0 = results[0]
    L.append(f"| 6. disk / logical bytes after churn ({r0['churn_count']} blobs, "
             f"{fmt(r0['churn_inserted'], 'MiB')} through a {fmt(r0['churn_budget'], 'MiB')} budget): apparent (du -sb) "
             f"| {fmt(ap, 'x')} | – | – | – | – | – | – | "
             f"{('±' + format(spread(get('churn_apparent_ratio')) / 2 * 100, '.1f') + ' %') if n > 1 else '–'} |")
    L.append(f"| 6. disk / logical bytes after churn: allocated blocks (du -sB1) | {fmt(al, 'x')} | – | – | – | – | – | – | "
             f"{('±' + format(spread(get('churn_alloc_ratio')) / 2 * 100, '.1f') + ' %') if n > 1 else '–'} |")
    L.append(f"| 6. start to `ready to serve` log line, {fmt(median(get('ready_cached_bytes')), 'MiB')} in "
             f"{median(get('ready_cached_blobs')):.0f} blobs cached | {fmt(median(get('ready_log')), 's')} | – | – | – | – | – | – | "
             f"{('±' + format((spread(get('ready_log')) or 0) / 2 * 100, '.0f') + ' %') if n > 1 else '–'} |")
    L.append(f"| 6. start to `/readyz` 200, same store | {fmt(median(get('ready_readyz')), 's')} | – | – | – | – | – | – | "
             f"{('±' + format((spread(get('ready_readyz')) or 0) / 2 * 100, '.0f') + ' %') if n > 1 else '–'} |")
    for row in table:
        if section(row) > 6:
            table_row(*row)
    L.append("")
    L.append("Targets: " + ", ".join(f"{t} ({lab.split(':')[0]}): {'met' if ok else 'MISSED'}"
                                     for lab, t, ok in verdicts) + ".\n")
    L.append("## How each figure is measured\n")
    L.append(f"1. `wrk -t2 -c{p['conns']} -d{p['wrk_secs']}s` on the cached blob (the edge and registry:2 warmed by two "
             "full GETs first, nginx serving the same bytes from a file with `sendfile on`). MB = 10⁶ bytes, GB = 10⁹. "
             "CPU = utime+stime of the server's processes (nginx: master and workers) from `/proc/PID/stat`, "
             "before/after, divided by the bytes wrk read.")
    L.append("2. The same wrk settings, keep-alive, on a small blob, on the manifest by digest and by tag "
             "(`Accept: " + OCI_MANIFEST + "`); the edge's `tag_ttl` is 1h. nginx serves the same bytes as static files "
             "(one file for both manifest rows). registry:2 in proxy mode asks its upstream about a tag on every request. "
             "The audit rows: a second edge with `[audit] path` set (one JSON line per request, written out every "
             "250 ms), against the edge without it, four wrk runs in the order off, on, on, off (the mean of each). "
             f"The policy rows: an edge with {POLICY_BLOCKS} `[[policy]]` blocks of which only the last fits the "
             "repository (every request walks them all), against the edge without a policy, in the same order. "
             "The require_signature rows: an edge whose one block admits the repository only when signed by a key "
             "(the manifest is signed, cosign's `.sig` tag form, with openssl), in the same order.")
    L.append("3. `curl -o /dev/null -w '%{time_starttransfer} %{time_total}'` of a blob none of them has cached: through "
             "the edge, through registry:2 proxy, and straight from the upstream registry:2 (direct = mean of one pull "
             "before and one after).")
    L.append(f"4. {p['burst']} curls started at once on one uncached blob; upstream bytes = the sum of the byte counts "
             "in the upstream registry:2's access log for GETs of that blob, divided by its size; the slowest client's "
             "`time_total`.")
    L.append("5. VmHWM from `/proc/PID/status` (summed over nginx's processes), reset through `/proc/PID/clear_refs` "
             "before each of 1, 4 and 9" + ("" if all(res.get("rss_reset_ok") for res in results) else
                                         " (the reset was refused here, so these are peaks since start)") + ".")
    L.append("6. A separate edge with a small `max_size`: blobs of a spread of sizes pulled through it, more than its "
             "budget, so it evicts. Logical bytes = `sparkcr_edge_store_bytes` from `/metrics` just before SIGTERM "
             "(chunk bytes; the random blobs share no chunk); disk bytes measured on its data directory (chunk files and "
             "the sled index) after it stopped. Start-to-ready: the main edge, after every run above plus fill-up blobs, "
             f"stopped and started {p['ready_starts']} times; the median from process start to the log line and to the "
             "first `/readyz` 200.")
    rate, burst = p["paced_rate"], pacer_burst(p["paced_rate"])
    L.append(f"7. As 3, with a fresh edge and a fresh registry:2 proxy whose upstream is `benches/pace_proxy.py` in "
             f"front of the upstream registry:2, and the direct pulls through the same proxy. The proxy (Python threads moving "
             f"the bytes socket → pipe → socket with `splice(2)`, never through user space; {PACE_READ >> 10} KiB "
             "splices) paces the upstream → client bytes of all its connections together with one "
             f"token bucket: {rate / 1e6:,.0f} MB/s, {burst / 1e6:g} MB burst, sleep-based. The first row is the proxy "
             "alone: one curl of a file nginx serves, through a second such proxy (what it can pace on this machine; "
             "\"direct reached\" is the same for the registry:2 upstream).")
    L.append(f"8. The cached blob over HTTPS, TLS 1.3 only, one self-signed P-256 certificate (`openssl req -x509`) for "
             f"both: an edge with `tls_listen` (warmed by two full GETs) and an nginx with `listen … ssl http2` "
             f"(`sendfile on`, no kTLS). HTTP/1.1: `wrk` as in 1 on the `https://` URL; h2: "
             f"`h2load -t2 -c{p['conns']} -m1 -D{p['wrk_secs']}`, bytes = its `traffic` total. CPU as in 1. "
             f"Cipher negotiated (h2load, run 1): edge `{r0['tls_cipher_edge']}`, nginx `{r0['tls_cipher_nginx']}`. "
             "registry:2 is not measured here.")
    fails = [f"run {i + 1}: {x}" for i, res in enumerate(results) for x in res.get("fanout_failures", [])]
    L.append(f"9. A fresh edge with `max_size` a quarter of the blob (chunks of {p['fanout_chunk'] >> 10} KiB), so it "
             f"cannot keep the blob; {p['fanout_clients']} curls of it, one at `--limit-rate {p['fanout_limit']}`, one "
             f"started {p['fanout_late']:g} s after the others; each body hashed (sha256) as it arrives and compared with "
             "the digest. Upstream bytes as in 4; peak RSS as in 5; wall time = curl's `time_total`, of the byte-exact "
             "clients only."
             + (" Clients without the exact bytes: " + "; ".join(fails) + "." if fails else ""))
    L.append("10. `benches/push_bench.py` (its `run_once`): a fresh registry:2 and a fresh edge whose only upstream is "
             "it, with `private = true` and `push = true`, and a token with the `push` scope. One random blob, pushed as "
             "one monolithic upload (POST, then PUT with the whole body and `?digest=`) into a repository of its own, "
             "straight to registry:2 and then through the edge; wall time from the POST to the 201. The edge hashes the "
             "bytes, streams them to the upstream and stores them; the run fails unless the upstream has the blob and the "
             "edge then serves it as a HIT. Then a second random blob the way docker, podman and skopeo push (POST, one "
             "PATCH with the whole body, a bodiless PUT with `?digest=`), timed the same way. Peak RSS as in 5, during "
             "the edge's pushes.")
    L.append("11. `scripts/ceph-rgw`: a single-node Ceph (one mon, one memstore OSD, radosgw) on 127.0.0.1, one bucket. "
             "Two fresh edges with the same `[storage.shared]`. Edge A pulls a new blob (and writes it through to the "
             "bucket: the run waits for `sparkcr_edge_shared_uploads_total{outcome=\"completed\"}`); then, as in 3, "
             "a pull straight from the upstream, a cold pull through edge B (its store is empty: the bytes come from RGW, "
             "verified as they stream), a pull through edge A (a local hit) and a second direct pull. Skipped when "
             "radosgw is not installed.\n")
    L.append("`sparkcr-edge cache stats` of the churned store (run 1):\n")
    L.append("```\n" + r0["churn_stats"] + "\n```\n")
    L.append("## Noise\n")
    bgs = [v for res in results for k, v in res.items() if k.endswith(("_bg.edge", "_bg.r2", "_bg.nginx")) or
           (k.startswith("blob_bg."))]
    edge_spreads = [(lab, spread(get(f"{m}.edge"))) for lab, m, *_ in table]
    edge_spreads = [(lab, s) for lab, s in edge_spreads if s is not None]
    L.append(f"The machine is shared ({info['nproc']} cores; another engineer's builds and tests may run at the same time) "
             "and wrk runs on the same cores as the server it measures, so absolute figures are noisy; the ratios, "
             "measured back to back in one run, are the point. During the wrk and h2load measurements the CPU busy "
             "time of everything other than the measured server, the load generator and the upstream registry:2 averaged "
             + (f"{statistics.mean(bgs):.2f} cores (max {max(bgs):.2f})" if bgs else "n/a") + ".")
    if edge_spreads:
        worst = max(edge_spreads, key=lambda x: x[1])
        L.append(f" Across the {n} runs the edge's figures differed by up to {worst[1] * 100:.0f} % of their median "
                 f"(largest: {worst[0]}); the last column gives each figure's ± half-range.")
    else:
        L.append(" One run only: no spread measured.")
    if smoke:
        L.append("\n**Smoke mode**: tiny sizes and one-second measurements, for CI; these numbers mean nothing.")
    L.append("\n## Per-run raw figures\n")
    keys = sorted({k for res in results for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    L.append("| key | " + " | ".join(f"run {i + 1}" for i in range(n)) + " |")
    L.append("|---|" + "---|" * n)
    for k in keys:
        L.append(f"| {k} | " + " | ".join(
            (f"{res[k]:.4g}" if isinstance(res.get(k), float) else str(res.get(k, "–"))) for res in results) + " |")
    return "\n".join(L) + "\n", verdicts


def machine_info() -> dict:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024
    commit = run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], 30).stdout.strip()
    dirty = run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], 30).stdout.strip()
    versions = []
    for cmd in (["nginx", "-v"], [REGISTRY_BIN, "--version"], ["wrk", "-v"], ["curl", "--version"],
                ["h2load", "--version"], ["openssl", "version"], [sys.executable, "--version"]):
        out = run(cmd, 30, check=False)
        versions.append((out.stdout + out.stderr).strip().splitlines()[0][:70])
    return dict(
        date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        commit=commit + (" (with uncommitted changes)" if dirty else ""),
        cpu=cpu, nproc=run(["nproc"], 10).stdout.strip(), mem=f"{mem / GiB:.1f} GiB",
        kernel=os.uname().release, versions="; ".join(versions),
        load_before=" ".join(Path("/proc/loadavg").read_text().split()[:3]),
    )


def build() -> Path:
    log("cargo build --release")
    p = subprocess.run(["cargo", "build", "--release", "--bin", "sparkcr-edge", "--message-format=json-render-diagnostics"],
                       cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise BenchError(f"cargo build failed:\n{p.stderr[-4000:]}")
    exe = None
    for line in p.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["name"] == "sparkcr-edge":
            exe = Path(msg["executable"])
    if not exe or not exe.exists():
        raise BenchError("cargo build did not report the sparkcr-edge executable")
    return exe


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, ~1 s per measurement, no targets enforced")
    ap.add_argument("--big", action="store_true", help="also measure a 1 GiB cold miss")
    ap.add_argument("--repeat", type=int, help="full runs to make (default 2; smoke 1)")
    ap.add_argument("--out", type=Path, help="where to write the report (default docs/benchmarks.md; smoke: none)")
    ap.add_argument("--binary", type=Path, help="use this sparkcr-edge binary instead of cargo build --release")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--edge-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the edge only (e.g. MALLOC_ARENA_MAX=2); noted in the report")
    ap.add_argument("--enforce", action="store_true", help="exit 3 if a target is missed (never in smoke mode)")
    a = ap.parse_args()
    p = dict(SMOKE if a.smoke else FULL)
    for kv in a.edge_env:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            ap.error(f"--edge-env wants KEY=VALUE, got {kv!r}")
        EDGE_ENV[k] = v
    repeats = max(1, min(a.repeat or p["repeats"], 10))
    out = a.out if a.out else (None if a.smoke else ROOT / "docs" / "benchmarks.md")
    for tool in TOOLS:
        if not shutil.which(tool):
            log(f"missing {tool}: apt-get install -y {PACKAGES}")
            return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    t_start = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="sparkcr-bench."))
    try:
        binary = a.binary.resolve() if a.binary else build()
        info = machine_info()
        results = []
        for i in range(repeats):
            tmp = base / f"run{i + 1}"
            tmp.mkdir()
            results.append(run_once(binary, p, tmp, a.big, i + 1))
            if not a.keep:
                shutil.rmtree(tmp, ignore_errors=True)
        info["load_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        text, verdicts = report(results, p, a.big, a.smoke, info)
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            log(f"wrote {out}")
        print(text)
        log(f"done in {time.monotonic() - t_start:.0f} s")
        if a.enforce and not a.smoke and not all(ok for _, _, ok in verdicts):
            return 3
        return 0
    except (BenchError, subprocess.TimeoutExpired, OSError, KeyboardInterrupt) as e:
        log(f"FAILED: {type(e).__name__}: {e}")
        return 1
    finally:
        stop_all()
        if a.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
