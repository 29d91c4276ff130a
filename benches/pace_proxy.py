#!/usr/bin/env python3
"""A pacing TCP proxy for the benchmark harness: an upstream link of a given speed, on loopback.
    python3 benches/pace_proxy.py --listen-port 8001 --target-port 5000 --rate 1e9
Accepts on 127.0.0.1:<listen-port>, connects each client to 127.0.0.1:<target-port> and
copies both ways. The target -> client direction of ALL connections together is paced by
one token bucket (`--rate` bytes/s, `--burst` bytes of credit), like one shared link:
opening more connections does not buy more bandwidth. Client -> target is not paced.

The bytes never enter user space: each direction moves them socket -> pipe -> socket with
`splice(2)`, so the proxy costs a few system calls per `--read-size` bytes (1 MiB), not
two copies of every byte. (A proxy that copied through Python needed most of a core at
1 GB/s and took it from the servers being measured on a small machine.) Pacing is
sleep-based: each splice reserves its bytes on the bucket's
clock and sleeps until the bucket allows them, then forwards them; the burst (default: 4 ms
at the rate, at least two reads) lets it catch up after oversleeping, so over a transfer
the rate is exact. One thread per direction per connection.

Each finished connection logs one line:
`conn <n> down=<bytes> up=<bytes> secs=<first paced byte in to last out> rate=<bytes/s>`
(the rate includes any idle time between responses on a kept-alive connection).
Python 3.10+ standard library only, Linux only (os.splice).
"""
from __future__ import annotations

import argparse
import fcntl
import os
import socket
import sys
import threading
import time

HOST = "127.0.0.1"
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, missing from older Pythons' fcntl module


class Bucket:
    """A token bucket as a virtual clock (GCRA): `t` is when the link is done with every byte
    reserved so far; bytes may go ahead of it by at most `burst`. Shared by all connections."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.t = time.monotonic()
        self.lock = threading.Lock()

    def delay(self, n: int) -> float:
        """Reserves n bytes; returns how long to wait before sending them."""
        with self.lock:
            now = time.monotonic()
            self.t = max(self.t, now) + n / self.rate
            return self.t - now - self.burst / self.rate


def pump(src: socket.socket, dst: socket.socket, size: int, bucket: Bucket | None,
         stats: dict, key: str) -> None:
    """Moves src -> dst through a pipe until src ends; paced by bucket if given."""
    r, w = os.pipe()
    try:
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, size)
        except OSError:
            size = min(size, 64 << 10)  # the default pipe holds 64 KiB
        sfd, dfd = src.fileno(), dst.fileno()
        while True:
            n = os.splice(sfd, w, size)
            if not n:
                break
            if bucket:
                stats.setdefault("first", time.monotonic())
                wait = bucket.delay(n)
                if wait > 0:
                    time.sleep(wait)
            left = n
            while left:
                left -= os.splice(r, dfd, left)
            stats[key] += n
            if bucket:
                stats["last"] = time.monotonic()
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(w)
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def handle(client: socket.socket, n: int, args, bucket: Bucket, out_lock: threading.Lock) -> None:
    up = socket.socket()
    stats = {"down": 0, "up": 0}
    try:
        up.connect((HOST, args.target_port))
        for s in (client, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=pump, args=(client, up, 64 << 10, None, stats, "up"), daemon=True)
        back.start()
        pump(up, client, args.read_size, bucket, stats, "down")
        back.join()
    except OSError as e:
        with out_lock:
            print(f"conn {n}: {e}", flush=True)
    finally:
        client.close()
        up.close()
    log_connection(n, stats, out_lock)


def log_connection(n: int, stats: dict, out_lock: threading.Lock) -> None:
    """The one line per finished connection (also used by wan_relay.py): bytes each way, the
    time from the first byte down to the last, and the rate over it."""
    secs = stats["last"] - stats["first"] if "first" in stats and "last" in stats else 0.0
    rate = f"{stats['down'] / secs:.0f}" if secs > 0 else "-"
    with out_lock:
        print(f"conn {n} down={stats['down']} up={stats['up']} secs={secs:.6f} rate={rate}", flush=True)


def serve(args) -> None:
    bucket = Bucket(args.rate, args.burst or max(2 * args.read_size, int(args.rate * 0.004)))
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((HOST, args.listen_port))
    lsock.listen(256)
    out_lock = threading.Lock()
    print(f"pacing {HOST}:{args.listen_port} -> {HOST}:{args.target_port} at {args.rate:.0f} B/s, "
          f"burst {bucket.burst} B, splices of {args.read_size} B", flush=True)
    count = 0
    while True:
        client, _ = lsock.accept()
        count += 1
        threading.Thread(target=handle, args=(client, count, args, bucket, out_lock), daemon=True).start()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen-port", type=int, required=True)
    ap.add_argument("--target-port", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True, help="bytes/s, target -> client, all connections")
    ap.add_argument("--burst", type=int, default=0, help="bucket size in bytes (default: 4 ms at the rate)")
    ap.add_argument("--read-size", type=int, default=1 << 20)
    args = ap.parse_args()
    if args.rate <= 0:
        ap.error("--rate must be positive")
    try:
        serve(args)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
