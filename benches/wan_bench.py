#!/usr/bin/env python3
"""First pulls over an emulated WAN: direct vs through a cold edge, side by side in one run.

    python3 benches/wan_bench.py --binary target/release/sparkcr-edge            # profiles a, b, c
    python3 benches/wan_bench.py --binary ... --profile a --out /tmp/wan.md
    python3 benches/wan_bench.py --binary ... --smoke                            # tiny, ~1 min

The upstream is Debian's `docker-registry` (registry:2) over HTTPS (h2 and http/1.1), behind
`benches/wan_relay.py` (delay, a per-flow window, one shared link, an optional per-flow
cap). "Direct" is curl talking to the upstream through the relay, each request on its own
connection, as Docker and containerd fetch layers; "edge" is the same curl talking to a
freshly started edge on loopback (the LAN), whose upstream is the relay. Every blob is
used once per profile, so each edge request is a cold miss.

Cases, per profile:
- one big blob;
- 4 layers at once (4 clients, 4 blobs);
- 4 concurrent ranges on one cold blob, open-ended (`bytes=N-`, the way containerd 2.1+
  splits a layer) and bounded: the time to headers of each (containerd 2.3 drops a response
  without headers after 30 s) and to its last byte;
- one cold 1 MiB blob, and the round trips each side paid the upstream for it (the
  relay counts connections opened and client turns; the edge's upstream connection is
  warm, as after a manifest);
- a whole 4-layer image with skopeo (to `dir:`), one client;
- the same with `ctr content fetch` (Debian's containerd 1.6: a few layers at once, each
  on its own connection), when run as root;
- a fleet: 10 skopeo clients pulling one 4-layer image at once, direct vs through a cold
  edge vs through registry:2's proxy (`proxy.remoteurl`), each over its own fresh relay on
  the same profile; the WAN bytes of each (what the relay carried server -> client); and
  the same fleet again on the warm edge (all hits: what the box itself costs).

Profiles (the WAN first-pull issue's): (a) RTT 150 ms, window 4 MiB, 1 Gbit/s link,
256 MiB blob, 4 x 64 MiB layers; (b) RTT 250 ms, per-flow cap 3 MB/s, 200 Mbit/s link,
64 MiB blob, 4 x 16 MiB layers; (c) RTT 20 ms, window 4 MiB, no link cap (regional).

`--case` runs only the cases named (small, big, layers, ranges, image, ctr, fleet).

Imports benches/harness.py for its server, blob and config helpers (one way only). Python
3.11 standard library; needs docker-registry, curl, openssl, skopeo. Traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

MiB = h.MiB
HOST = h.HOST
RELAY = Path(__file__).resolve().parent / "wan_relay.py"

PROFILES = {
    "a": dict(rtt=0.150, window=4 * MiB, link=125e6, flow=0, blob=256 * MiB, layer=64 * MiB,
              label="RTT 150 ms, window 4 MiB, link 1 Gbit/s"),
    "b": dict(rtt=0.250, window=4 * MiB, link=25e6, flow=3e6, blob=64 * MiB, layer=16 * MiB,
              label="RTT 250 ms, per-flow 3 MB/s, link 200 Mbit/s"),
    "c": dict(rtt=0.020, window=4 * MiB, link=0, flow=0, blob=256 * MiB, layer=64 * MiB,
              label="RTT 20 ms, window 4 MiB, no link cap"),
}
SMOKE_SIZES = dict(blob=8 * MiB, layer=2 * MiB)


def make_pki(d: Path) -> tuple[Path, Path, Path, ssl.SSLContext]:
    """A CA and a leaf for 127.0.0.1 signed by it (rustls refuses a self-signed leaf that is
    its own CA); returns (ca, leaf cert, leaf key, a client context trusting the CA)."""
    d.mkdir()
    ca, ca_key, cert, key, csr = (d / n for n in ("ca.pem", "ca-key.pem", "cert.pem", "key.pem", "leaf.csr"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    h.run(["openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
           "-subj", "/CN=wan-bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
           "-addext", "keyUsage=critical,keyCertSign"], timeout=60)
    h.run(["openssl", "req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={HOST}"], timeout=60)
    ext = d / "leaf.ext"
    ext.write_text(f"subjectAltName=IP:{HOST}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    h.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
           "-out", str(cert), "-days", "2", "-extfile", str(ext)], timeout=60)
    ctx = ssl.create_default_context(cafile=str(ca))
    return ca, cert, key, ctx


def start_tls_registry(tmp: Path, cert: Path, key: Path) -> h.Server:
    d = tmp / "registry"
    d.mkdir()
    port = h.free_port()
    cfg = (
        "version: 0.1\nlog:\n  level: warn\n  formatter: text\n"
        f"storage:\n  filesystem:\n    rootdirectory: {d}/storage\n"
        f"http:\n  addr: {HOST}:{port}\n  tls:\n    certificate: {cert}\n    key: {key}\n"
    )
    (d / "config.yml").write_text(cfg)
    s = h.Server("registry", [h.REGISTRY_BIN, "serve", str(d / "config.yml")], d / "log.txt", port)
    s.wait_port()
    return s


def start_relay(tmp: Path, name: str, target: int, p: dict) -> h.Server:
    port = h.free_port()
    cmd = [sys.executable, str(RELAY), "--listen-port", str(port), "--target-port", str(target),
           "--rtt", str(p["rtt"]), "--window", str(p["window"]), "--link-rate", str(p["link"]),
           "--flow-rate", str(p["flow"])]
    s = h.Server(name, cmd, tmp / f"{name}.log", port)
    s.wait_port()
    return s


def start_edge(binary: Path, tmp: Path, name: str, relay_port: int, cert: Path) -> h.Server:
    d = tmp / name
    d.mkdir()
    port = h.free_port()
    cfg = (
        "builtin_upstreams = false\n"
        f"[server]\nlisten = [\"{HOST}:{port}\"]\nhostname = \"localhost\"\nshutdown_grace = \"5s\"\n"
        f"[storage]\npath = \"{d}/data\"\nmax_size = \"8GiB\"\n"
        "[log]\nlevel = \"info\"\nformat = \"text\"\n"
        f"[[upstream]]\nname = \"upstream.bench.test\"\nurl = \"https://{HOST}:{relay_port}\"\n"
        f"ca_file = \"{cert}\"\ndefault = true\n"
    )
    (d / "config.toml").write_text(cfg)
    s = h.Server(name, [str(binary), "serve", "--config", str(d / "config.toml")], d / "log.txt", port)
    deadline = time.monotonic() + 60
    while "ready to serve" not in s.log_text():
        if not s.alive() or time.monotonic() > deadline:
            raise h.BenchError(f"{name} did not start:\n{s.log_text()[-3000:]}")
        time.sleep(0.02)
    return s


def curl(url: str, cert: Path | None, rng: str | None = None, timeout: float = 600) -> dict:
    """One GET on its own connection; times to headers and to the last byte, size, status."""
    cmd = ["curl", "-sS", "-o", "/dev/null", "--max-time", str(timeout), "-w",
           "%{http_code} %{time_starttransfer} %{time_total} %{size_download}"]
    if cert:
        cmd += ["--cacert", str(cert)]
    if rng:
        cmd += ["-H", f"Range: bytes={rng}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=timeout + 10)
    parts = out.stdout.split()
    if out.returncode != 0 or len(parts) != 4:
        raise h.BenchError(f"curl {url} ({rng}): rc {out.returncode} {out.stdout} {out.stderr[-500:]}")
    return dict(status=int(parts[0]), headers=float(parts[1]), total=float(parts[2]), size=int(parts[3]))


def together(calls) -> tuple[float, list[dict]]:
    """Runs the calls at once; returns the wall time and each result."""
    results: list = [None] * len(calls)
    errors: list = []

    def run(i, f):
        try:
            results[i] = f()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.monotonic() - t0, results


def check(res: dict, size: int, status: int, what: str) -> None:
    if res["status"] != status or res["size"] != size:
        raise h.BenchError(f"{what}: HTTP {res['status']}, {res['size']} bytes; want {status}, {size}")


def range_specs(size: int) -> list[tuple[str, int]]:
    """4 open-ended ranges splitting the blob, and 4 bounded ones of 1/8 each."""
    q = size // 4
    open_ended = [(f"{i * q}-", size - i * q) for i in range(4)]
    eighth = size // 8
    bounded = [(f"{i * 2 * eighth}-{i * 2 * eighth + eighth - 1}", eighth) for i in range(4)]
    return open_ended + bounded


def push_image(reg: h.Server, tls: ssl.SSLContext, tmp: Path, layer: int, tag: str) -> int:
    """Pushes a 4-layer OCI image (random layers) as `tag`; returns its bytes (layers+config)."""
    blob_path = tmp / "layer.bin"
    layers = []
    for _ in range(4):
        digest = h.make_blob(blob_path, layer)
        conn = h._conn(reg.port, tls=tls)
        try:
            with open(blob_path, "rb") as f:
                h.push_blob(conn, f, layer, digest)
        finally:
            conn.close()
        layers.append(digest)
    blob_path.unlink()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": layers}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    conn = h._conn(reg.port, tls=tls)
    try:
        h.push_blob(conn, io.BytesIO(config), len(config), config_digest)
    finally:
        conn.close()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": h.OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": layer}
                   for d in layers],
    }).encode()
    conn = h._conn(reg.port, tls=tls)
    try:
        conn.request("PUT", f"/v2/{h.REPO}/manifests/{tag}", body=manifest,
                     headers={"Content-Type": h.OCI_MANIFEST})
        r = conn.getresponse()
        text = r.read()
        if r.status != 201:
            raise h.BenchError(f"push manifest {tag}: HTTP {r.status} {text[:300]!r}")
    finally:
        conn.close()
    return 4 * layer + len(config)


def skopeo(port: int, tag: str, out: Path, certs: Path | None, timeout: float = 900) -> float:
    """`skopeo copy` of the image to `dir:out` (over HTTPS trusting `certs`, else plain
    HTTP); returns its wall time."""
    tls = [f"--src-cert-dir={certs}"] if certs else ["--src-tls-verify=false"]
    cmd = ["skopeo", "--insecure-policy", "copy", "--retry-times=0", *tls,
           f"docker://{HOST}:{port}/{h.REPO}:{tag}", f"dir:{out}"]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise h.BenchError(f"skopeo from :{port} ({tag}): {res.stderr[-1500:]}")
    shutil.rmtree(out, ignore_errors=True)
    return wall


class Containerd:
    """A private containerd (own root, state and socket under `d`; CRI off) for
    `ctr content fetch`; `None` from `start` when this is not root or there is none."""

    def __init__(self, server: h.Server, sock: Path, hosts: Path):
        self.server, self.sock, self.hosts = server, sock, hosts

    @staticmethod
    def start(d: Path) -> "Containerd | None":
        if os.geteuid() != 0 or not shutil.which("containerd") or not shutil.which("ctr"):
            return None
        d.mkdir()
        sock = d / "containerd.sock"
        (d / "config.toml").write_text(
            f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{sock}"\n')
        server = h.Server("containerd", ["containerd", "--config", str(d / "config.toml")], d / "log.txt", 0)
        deadline = time.monotonic() + 30
        while not sock.exists():
            if not server.alive() or time.monotonic() > deadline:
                raise h.BenchError(f"containerd did not start:\n{server.log_text()[-2000:]}")
            time.sleep(0.05)
        hosts = d / "hosts"
        hosts.mkdir()
        return Containerd(server, sock, hosts)

    def fetch(self, port: int, tag: str, ca: Path | None, ns: str, timeout: float = 900) -> float:
        """`ctr content fetch` of the image from 127.0.0.1:port (HTTPS trusting `ca`, else
        plain HTTP): the manifest and every layer, a few at once, each on its own
        connection, as containerd pulls; returns its wall time."""
        host = f"{HOST}:{port}"
        scheme = "https" if ca else "http"
        hd = self.hosts / host
        hd.mkdir(exist_ok=True)
        ca_line = f'  ca = "{ca}"\n' if ca else ""
        (hd / "hosts.toml").write_text(
            f'server = "{scheme}://{host}"\n[host."{scheme}://{host}"]\n'
            f'  capabilities = ["pull", "resolve"]\n{ca_line}')
        cmd = ["ctr", "-a", str(self.sock), "-n", ns, "content", "fetch", "--hosts-dir", str(self.hosts),
               f"{host}/{h.REPO}:{tag}"]
        t0 = time.monotonic()
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        wall = time.monotonic() - t0
        if res.returncode != 0:
            raise h.BenchError(f"ctr content fetch from {host} ({tag}): {(res.stderr or res.stdout)[-1500:]}")
        return wall


def relay_down_bytes(relay: h.Server) -> int:
    """What the relay carried server -> client over the connections that have ended."""
    return sum(int(m) for m in re.findall(r"^conn \d+ down=(\d+)", relay.log_text(), re.M))


def start_proxy_registry(tmp: Path, name: str, relay_port: int, ca: Path) -> h.Server:
    """registry:2 as a pull-through cache of the upstream behind the relay (HTTPS, trusting
    the bench CA through SSL_CERT_FILE)."""
    d = tmp / name
    d.mkdir()
    port = h.free_port()
    cfg = (
        "version: 0.1\nlog:\n  level: warn\n  formatter: text\n"
        f"storage:\n  filesystem:\n    rootdirectory: {d}/storage\n"
        f"http:\n  addr: {HOST}:{port}\n"
        f"proxy:\n  remoteurl: https://{HOST}:{relay_port}\n"
    )
    (d / "config.yml").write_text(cfg)
    s = h.Server(name, [h.REGISTRY_BIN, "serve", str(d / "config.yml")], d / "log.txt", port,
                 env={"SSL_CERT_FILE": str(ca)})
    s.wait_port()
    return s


FLEET = 10


def fleet_run(binary: Path, tmp: Path, reg: h.Server, ca: Path, certs: Path, tls: ssl.SSLContext,
              name: str, p: dict) -> dict:
    """10 skopeo clients pulling one cold image at once: direct, through a cold edge,
    through registry:2's proxy; wall time and WAN bytes of each, each over a fresh relay."""
    size = push_image(reg, tls, tmp, p["layer"], f"fleet-{name}")
    out: dict = {"size": size}
    for variant in ("direct", "edge", "registry2"):
        relay = start_relay(tmp, f"relay-{name}-fleet-{variant}", reg.port, p)
        front = None
        if variant == "edge":
            front = start_edge(binary, tmp, f"edge-{name}-fleet", relay.port, ca)
        elif variant == "registry2":
            front = start_proxy_registry(tmp, f"r2-{name}-fleet", relay.port, ca)
        try:
            port, c = (relay.port, certs) if front is None else (front.port, None)
            wall, _ = together([lambda i=i: skopeo(port, f"fleet-{name}", tmp / f"fleet-{variant}-{i}", c)
                                for i in range(FLEET)])
            if variant == "edge":
                # The same fleet again on the now warm edge: what this box itself costs (10
                # skopeo copies and the edge sharing its cores), the floor under the cold run.
                out["edge_warm"], _ = together([
                    lambda i=i: skopeo(port, f"fleet-{name}", tmp / f"fleet-warm-{i}", c) for i in range(FLEET)])
        except h.BenchError:
            if front is not None:
                h.log(f"{front.name} log:\n{front.log_text()[-3000:]}")
            raise
        finally:
            if front is not None:
                h.retire(front)
        time.sleep(1.0)  # the relay logs a connection when it ends
        out[variant] = dict(wall=wall, wan=relay_down_bytes(relay))
        h.retire(relay)
    return out


CASES = ("small", "big", "layers", "ranges", "image", "ctr", "fleet")
SMALL = 1 * MiB


def relay_mark(relay: h.Server) -> int:
    return len(relay.log_text())


def round_trips(relay: h.Server, mark: int) -> tuple[int, int]:
    """Connections opened and client turns (see wan_relay.py) logged since `mark`."""
    time.sleep(0.3)  # the relay logs a turn as it relays it
    text = relay.log_text()[mark:]
    return len(re.findall(r"^open \d+", text, re.M)), len(re.findall(r"^turn \d+", text, re.M))


def profile_run(binary: Path, tmp: Path, reg: h.Server, cert: Path, certs: Path, tls: ssl.SSLContext,
                name: str, p: dict, cases: tuple[str, ...] = CASES, ctrd: Containerd | None = None) -> dict:
    blob_path = tmp / "blob.bin"

    def new_blob(size: int) -> str:
        digest = h.make_blob(blob_path, size)
        conn = h._conn(reg.port, tls=tls)
        try:
            with open(blob_path, "rb") as f:
                h.push_blob(conn, f, size, digest)
        finally:
            conn.close()
        return digest
    # Two of each: one for the direct client, one for the edge (each cold where it is read).
    small = [new_blob(SMALL) for _ in range(2)] if "small" in cases else []
    big = [new_blob(p["blob"]) for _ in range(2)] if "big" in cases else []
    layers = [[new_blob(p["layer"]) for _ in range(4)] for _ in range(2)] if "layers" in cases else []
    ranged = [new_blob(p["blob"]) for _ in range(4)] if "ranges" in cases else []
    blob_path.unlink(missing_ok=True)
    image = ({side: push_image(reg, tls, tmp, p["layer"], f"image-{name}-{side}") for side in ("direct", "edge")}
             if "image" in cases else {})
    ctr_image = ({side: push_image(reg, tls, tmp, p["layer"], f"ctr-{name}-{side}") for side in ("direct", "edge")}
                 if "ctr" in cases and ctrd else {})
    relay = start_relay(tmp, f"relay-{name}", reg.port, p)
    edge = start_edge(binary, tmp, f"edge-{name}", relay.port, cert)
    direct_url = f"https://{HOST}:{relay.port}/v2/{h.REPO}/blobs/"
    edge_url = f"http://{HOST}:{edge.port}/v2/{h.REPO}/blobs/"
    r: dict = {"profile": name, "label": p["label"]}
    try:
        # A pull asks for the manifest first: both sides start with a warm upstream
        # connection (the direct client's is its own; the edge's is the one it keeps).
        curl(f"https://{HOST}:{relay.port}/v2/", cert)
        curl(f"http://{HOST}:{edge.port}/v2/{h.REPO}/manifests/warm-up", None)
        if small:
            mark = relay_mark(relay)
            d = curl(direct_url + small[0], cert)
            check(d, SMALL, 200, "direct small blob")
            d_trips = round_trips(relay, mark)
            mark = relay_mark(relay)
            e = curl(edge_url + small[1], None)
            check(e, SMALL, 200, "edge small blob")
            r["small"] = dict(size=SMALL, direct=d["total"], edge=e["total"], direct_trips=d_trips,
                              edge_trips=round_trips(relay, mark))
        if big:
            d = curl(direct_url + big[0], cert)
            check(d, p["blob"], 200, "direct big blob")
            e = curl(edge_url + big[1], None)
            check(e, p["blob"], 200, "edge big blob")
            r["big"] = dict(size=p["blob"], direct=d["total"], edge=e["total"],
                            direct_headers=d["headers"], edge_headers=e["headers"],
                            link_limit=p["blob"] / p["link"] if p["link"] else None)
        if layers:
            wall_d, _ = together([lambda dg=dg: curl(direct_url + dg, cert) for dg in layers[0]])
            wall_e, res = together([lambda dg=dg: curl(edge_url + dg, None) for dg in layers[1]])
            for x in res:
                check(x, p["layer"], 200, "edge layer")
            r["layers"] = dict(size=p["layer"], direct=wall_d, edge=wall_e)
        specs = range_specs(p["blob"])
        for kind, sl, blobs in (("open", slice(0, 4), ranged[0:2]), ("bounded", slice(4, 8), ranged[2:4])):
            if not blobs:
                continue
            wall_d, res_d = together([lambda s=s: curl(direct_url + blobs[0], cert, s[0]) for s in specs[sl]])
            wall_e, res_e = together([lambda s=s: curl(edge_url + blobs[1], None, s[0], 120) for s in specs[sl]])
            for x, s in zip(res_e, specs[sl]):
                check(x, s[1], 206, f"edge range {s[0]}")
            r[f"ranges_{kind}"] = dict(
                direct=wall_d, edge=wall_e,
                direct_headers=max(x["headers"] for x in res_d),
                edge_headers=max(x["headers"] for x in res_e),
            )
        if image:
            r["image"] = dict(
                size=image["edge"],
                direct=skopeo(relay.port, f"image-{name}-direct", tmp / "image-direct", certs),
                edge=skopeo(edge.port, f"image-{name}-edge", tmp / "image-edge", None),
            )
        if ctr_image:
            r["ctr"] = dict(
                size=ctr_image["edge"],
                direct=ctrd.fetch(relay.port, f"ctr-{name}-direct", cert, f"direct-{name}"),
                edge=ctrd.fetch(edge.port, f"ctr-{name}-edge", None, f"edge-{name}"),
            )
    except h.BenchError:
        h.log(f"edge log:\n{edge.log_text()[-3000:]}\nrelay log:\n{relay.log_text()[-1000:]}")
        raise
    finally:
        h.retire(edge, relay)
    if "fleet" in cases:
        r["fleet"] = fleet_run(binary, tmp, reg, cert, certs, tls, name, p)
    return r


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def p_mib(n: int) -> int:
    return n >> 20


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def report(results: list[dict], info: str) -> str:
    out = [
        "# First pull over an emulated WAN",
        "",
        "Generated by `python3 benches/wan_bench.py --binary target/release/sparkcr-edge "
        "--out docs/benchmarks-wan.md` (see `benches/README.md`); do not edit by hand.",
        "",
        info,
        "",
        "| profile | case | direct | through a cold edge | edge / direct | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        out.append(f"| {r['profile']}: {r['label']} | | | | | |")
        sm = r.get("small")
        if sm:
            def trips(t: tuple[int, int]) -> str:
                return f"{t[0] + t[1]} ({t[0]} new connection{'s' if t[0] != 1 else ''}, {t[1]} turns)"
            out.append(f"| {r['profile']} | one {sm['size'] >> 20} MiB blob | {fmt(sm['direct'])} | "
                       f"{fmt(sm['edge'])} | {ratio(sm['edge'], sm['direct'])} | upstream round trips: direct "
                       f"{trips(sm['direct_trips'])}, edge {trips(sm['edge_trips'])} |")
        b = r.get("big")
        if b:
            link = f"link limit {b['link_limit']:.2f} s" if b["link_limit"] else ""
            out.append(f"| {r['profile']} | one {b['size'] >> 20} MiB blob | {fmt(b['direct'])} | "
                       f"{fmt(b['edge'])} | {ratio(b['edge'], b['direct'])} | headers {fmt(b['direct_headers'])} / "
                       f"{fmt(b['edge_headers'])}; {link} |")
        lay = r.get("layers")
        if lay:
            out.append(f"| {r['profile']} | 4 x {lay['size'] >> 20} MiB layers at once | {fmt(lay['direct'])} | "
                       f"{fmt(lay['edge'])} | {ratio(lay['edge'], lay['direct'])} | |")
        for kind in ("open", "bounded"):
            x = r.get(f"ranges_{kind}")
            if not x:
                continue
            out.append(f"| {r['profile']} | 4 {kind} ranges, one cold blob | {fmt(x['direct'])} | {fmt(x['edge'])} | "
                       f"{ratio(x['edge'], x['direct'])} | slowest headers {fmt(x['direct_headers'])} / "
                       f"{fmt(x['edge_headers'])} |")
        im = r.get("image")
        if im:
            out.append(f"| {r['profile']} | skopeo, 4 x {p_mib(im['size'] // 4)} MiB image | {fmt(im['direct'])} | "
                       f"{fmt(im['edge'])} | {ratio(im['edge'], im['direct'])} | one client |")
        ct = r.get("ctr")
        if ct:
            out.append(f"| {r['profile']} | ctr content fetch, 4 x {p_mib(ct['size'] // 4)} MiB image | "
                       f"{fmt(ct['direct'])} | {fmt(ct['edge'])} | {ratio(ct['edge'], ct['direct'])} | "
                       "containerd 1.6, one client |")
        fl = r.get("fleet")
        if not fl:
            continue
        wan = " · ".join(f"{k} {fl[k]['wan'] / fl['size']:.1f}x" for k in ("direct", "edge", "registry2"))
        out.append(f"| {r['profile']} | fleet: {FLEET} x skopeo, one image | {fmt(fl['direct']['wall'])} | "
                   f"{fmt(fl['edge']['wall'])} | {ratio(fl['edge']['wall'], fl['direct']['wall'])} | "
                   f"warm edge {fmt(fl.get('edge_warm'))} (this box's floor); "
                   f"registry:2 proxy {fmt(fl['registry2']['wall'])} (edge / registry:2 "
                   f"{ratio(fl['edge']['wall'], fl['registry2']['wall'])}); WAN bytes / image: {wan} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", type=Path, required=True)
    ap.add_argument("--profile", action="append", choices=sorted(PROFILES), help="default: all")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes")
    ap.add_argument("--case", action="append", choices=CASES, help="default: all")
    ap.add_argument("--out", type=Path, help="write the report here (default: print only)")
    args = ap.parse_args()
    for tool in ("curl", "openssl", "skopeo", h.REGISTRY_BIN):
        if not shutil.which(tool) and not Path(tool).exists():
            print(f"needs {tool}", file=sys.stderr)
            return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="wan-bench-") as t:
        tmp = Path(t)
        ca, cert, key, tls = make_pki(tmp / "tls")
        certs = tmp / "skopeo-certs"  # skopeo's --src-cert-dir: every *.crt is a CA
        certs.mkdir()
        shutil.copy(ca, certs / "ca.crt")
        reg = start_tls_registry(tmp, cert, key)
        cases = tuple(args.case or CASES)
        try:
            ctrd = Containerd.start(tmp / "containerd") if "ctr" in cases else None
            if "ctr" in cases and ctrd is None:
                h.log("no ctr case: it needs root and containerd")
            for name in args.profile or sorted(PROFILES):
                p = dict(PROFILES[name])
                if args.smoke:
                    p.update(SMOKE_SIZES)
                h.log(f"profile {name}: {p['label']}")
                results.append(profile_run(args.binary, tmp, reg, ca, certs, tls, name, p, cases, ctrd))
                h.log(report(results[-1:], ""))
        finally:
            h.stop_all()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    info = (f"Run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores; "
            f"binary {args.binary} at commit {commit}; upstream registry:2 over HTTPS behind benches/wan_relay.py; "
            "curl, one connection per request, and skopeo; times are wall seconds of one run.")
    text = report(results, info)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
