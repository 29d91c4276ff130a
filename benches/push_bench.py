#!/usr/bin/env python3
"""Push one layer through the edge (push = true, write-through) against pushing it to the
upstream registry:2 directly (issue 11). Separate from harness.py, reusing its helpers; the
lead decides whether and how it joins the harness run.

    python3 benches/push_bench.py --binary target/release/sparkcr-edge            # 256 MiB, 2 repeats
    python3 benches/push_bench.py --binary target/debug/sparkcr-edge --size-mib 8 --repeat 1

Each repeat: a fresh registry:2 and a fresh edge (private upstream with push = true, a
`push` token); a random blob is pushed as one monolithic upload (POST, then PUT with the
body) directly and through the edge, each into a repository of its own; then another
random blob the way docker, podman and skopeo push (POST, one PATCH with the body, a
bodiless PUT with `?digest=`). Reports
wall times, their ratio and the edge's peak RSS (VmHWM) during its push, and checks that
the upstream has the blob and the edge stored it (its first byte through the edge is
X-Cache: HIT).
Targets from the issue: ratio <= 1.15, peak RSS <= 100 MiB.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402  (the harness's servers, ports, blob and RSS helpers)


def push_token(binary: Path) -> tuple[str, str]:
    """`sparkcr-edge token create --scopes push,pull:private`: (secret, config block)."""
    p = subprocess.run([str(binary), "token", "create", "--name", "bench", "--scopes", "push,pull:private"],
                       capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise h.BenchError(f"token create: {p.stderr}")
    secret = next(line.split(": ", 1)[1].strip() for line in p.stdout.splitlines() if line.startswith("secret: "))
    block = "[[auth.token]]" + p.stdout.split("[[auth.token]]", 1)[1]
    return secret, block


def edge_config(tmp: Path, up_port: int, block: str, size: int) -> Path:
    d = tmp / "edge"
    d.mkdir()
    port = h.free_port()
    cfg = (
        "builtin_upstreams = false\n"
        f"[server]\nlisten = [\"{h.HOST}:{port}\"]\nhostname = \"localhost\"\nshutdown_grace = \"5s\"\n"
        f"[storage]\npath = \"{d}/data\"\nmax_size = \"{4 * size + 256 * h.MiB}B\"\nchunk_size = \"4MiB\"\n"
        "[cache]\ntag_ttl = \"1h\"\n[log]\nlevel = \"info\"\nformat = \"text\"\n"
        f"[auth]\nanonymous = false\n{block}\n"
        f"[push]\nmax_upload_size = \"{2 * size}B\"\n"
        f"[[upstream]]\nname = \"upstream.bench.test\"\nurl = \"http://{h.HOST}:{up_port}\"\n"
        "default = true\nprivate = true\npush = true\n"
    )
    (d / "config.toml").write_text(cfg)
    (d / "port").write_text(str(port))
    return d


def timed_push(port: int, repo: str, path: Path, digest: str, auth: str | None, chunked: bool = False) -> float:
    """POST, then PUT with the whole file as body (monolithic); or, with `chunked`, what
    docker, podman and skopeo send: POST, one PATCH with the whole file, then a bodiless
    PUT with `?digest=`. Seconds from the POST to the 201."""
    headers = {"Authorization": auth} if auth else {}
    conn = h._conn(port)
    try:
        t0 = time.monotonic()
        conn.request("POST", f"/v2/{repo}/blobs/uploads/", headers={**headers, "Content-Length": "0"})
        r = conn.getresponse()
        r.read()
        if r.status != 202:
            raise h.BenchError(f"start upload: HTTP {r.status}")
        loc = h._path_of(r.getheader("Location"))
        body_headers = {**headers, "Content-Type": "application/octet-stream",
                        "Content-Length": str(path.stat().st_size)}
        if chunked:
            with open(path, "rb") as f:
                conn.request("PATCH", loc, body=f, headers=body_headers)
                r = conn.getresponse()
                text = r.read()
            if r.status != 202:
                raise h.BenchError(f"upload chunk: HTTP {r.status} {text[:300]!r}")
            loc = h._path_of(r.getheader("Location"))
            sep = "&" if "?" in loc else "?"
            conn.request("PUT", f"{loc}{sep}digest={digest}", headers={**headers, "Content-Length": "0"})
            r = conn.getresponse()
            text = r.read()
        else:
            sep = "&" if "?" in loc else "?"
            with open(path, "rb") as f:
                conn.request("PUT", f"{loc}{sep}digest={digest}", body=f, headers=body_headers)
                r = conn.getresponse()
                text = r.read()
        if r.status != 201:
            raise h.BenchError(f"finish upload: HTTP {r.status} {text[:300]!r}")
        return time.monotonic() - t0
    finally:
        conn.close()


def head_cache(port: int, repo: str, digest: str, auth: str) -> str:
    """The first byte through the edge: `206 HIT` when the push was written through. (A
    pusher's HEAD asks the upstream, so a GET.)"""
    conn = h._conn(port, 30)
    try:
        conn.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"Authorization": auth, "Range": "bytes=0-0"})
        r = conn.getresponse()
        r.read()
        return f"{r.status} {r.getheader('X-Cache')}"
    finally:
        conn.close()


def run_once(binary: Path, tmp: Path, size: int, idx: int) -> dict:
    blob = tmp / "blob.bin"
    digest = h.make_blob(blob, size)
    up = h.start_registry(tmp, "upstream")
    secret, block = push_token(binary)
    auth = "Basic " + base64.b64encode(f"bench:{secret}".encode()).decode()
    d = edge_config(tmp, up.port, block, size)
    edge, _, _ = h.start_edge(binary, d)
    try:
        out = {}
        for mode, chunked in (("", False), ("chunked_", True)):
            if chunked:
                # A blob of its own: neither the edge nor the upstream may hold it already.
                blob = tmp / "blob2.bin"
                digest = h.make_blob(blob, size)
            # Both a registry:2 receiving a push and the edge forwarding one write the blob: each
            # timed push starts right after a page-cache warm-up of twice its size (harness.py's
            # page_cache_probe says why).
            h.wait_quiet()
            h.page_cache_probe(tmp, 2 * size)
            direct = timed_push(up.port, f"bench/{mode}direct{idx}", blob, digest, None, chunked)
            h.wait_quiet()
            h.reset_peak_rss([edge.pid])
            h.page_cache_probe(tmp, 2 * size)
            repo = f"bench/{mode}edge{idx}"
            via = timed_push(edge.port, repo, blob, digest, auth, chunked)
            rss = h.peak_rss([edge.pid])
            cached = head_cache(edge.port, repo, digest, auth)
            on_up = http.client.HTTPConnection(h.HOST, up.port, timeout=30)
            on_up.request("HEAD", f"/v2/{repo}/blobs/{digest}")
            up_status = on_up.getresponse().status
            on_up.close()
            if up_status != 200 or not cached.startswith("206 HIT"):
                raise h.BenchError(f"after the {mode or 'monolithic '}push: upstream HEAD {up_status}, edge HEAD {cached}")
            out.update({f"{mode}direct_s": direct, f"{mode}edge_s": via, f"{mode}ratio": via / direct,
                        f"{mode}edge_peak_rss": rss})
        return out
    finally:
        h.retire(edge, up)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", type=Path, required=True, help="the sparkcr-edge binary (release for figures)")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    size = max(1, min(a.size_mib, 4096)) * h.MiB
    base = Path(tempfile.mkdtemp(prefix="sparkcr-push-bench."))
    try:
        rows = []
        for i in range(max(1, min(a.repeat, 10))):
            tmp = base / f"run{i + 1}"
            tmp.mkdir()
            rows.append(run_once(a.binary.resolve(), tmp, size, i + 1))
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"push of {size // h.MiB} MiB, loopback, registry:2 upstream; monolithic = POST + PUT with the body, "
              "chunked = POST + PATCH with the body + PUT (docker, podman, skopeo)")
        print("| run | how | direct | through the edge | ratio | edge peak RSS |")
        print("|---|---|---|---|---|---|")
        for i, r in enumerate(rows, 1):
            for mode, how in (("", "monolithic"), ("chunked_", "chunked")):
                print(f"| {i} | {how} | {r[mode + 'direct_s']:.2f} s | {r[mode + 'edge_s']:.2f} s | "
                      f"{r[mode + 'ratio']:.2f}× | {r[mode + 'edge_peak_rss'] / h.MiB:.0f} MiB |")
        worst_ratio = max(max(r["ratio"], r["chunked_ratio"]) for r in rows)
        worst_rss = max(max(r["edge_peak_rss"], r["chunked_edge_peak_rss"]) for r in rows)
        print(f"targets: ratio <= 1.15 ({'met' if worst_ratio <= 1.15 else 'missed'}), "
              f"peak RSS <= 100 MiB ({'met' if worst_rss <= 100 * h.MiB else 'missed'})")
        return 0
    except (h.BenchError, subprocess.TimeoutExpired, OSError) as e:
        h.log(f"FAILED: {type(e).__name__}: {e}")
        return 1
    finally:
        h.stop_all()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
