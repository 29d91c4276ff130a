#!/usr/bin/env python3
"""A WAN emulator for the benchmarks: a TCP relay on loopback that behaves like a long, thin
link between a client and a server.
    python3 benches/wan_relay.py --listen-port 8443 --target-port 5443 \\
        --rtt 0.150 --window 4MiB --link-rate 125e6 [--flow-rate 3e6]

Accepts on 127.0.0.1:<listen-port> and relays each connection to 127.0.0.1:<target-port>.
What a connection through it sees:
- **Delay**: every byte, either way, arrives RTT/2 after the relay read it; the TCP
  handshake costs one RTT (the first client bytes leave one RTT after the accept).
- **A per-flow window** (server -> client): at most `--window` bytes of one connection are
  in flight; a byte's credit comes back one RTT after the relay read it (its ACK). One
  flow therefore moves at most window/RTT: with 4 MiB over 150 ms, about 28 MB/s, which
  is what Linux's default receive-window ceiling gives one TCP flow on such a path.
- **A shared link** (server -> client): all connections' bytes leave through one token
  bucket of `--link-rate` bytes/s; a connection's bytes queue behind the others', like
  on a real bottleneck. More connections do not buy more link.
- **A per-flow rate cap** (`--flow-rate`, optional): each connection alone is limited
  further, like a lossy long-haul flow whose congestion window never opens.
The client -> server direction is only delayed (requests are small).

The relay's own socket buffers are kept small (`--sockbuf`, 64 KiB), since loopback here
allows 32 MiB buffers that would hide extra bytes in flight outside the window.

Each finished connection logs one line:
`conn <n> down=<bytes> up=<bytes> secs=<first byte down to last> rate=<bytes/s>`.
Round trips are logged as they happen: `open <n>` when a connection is accepted (its TCP
handshake: one round trip) and `turn <n>` each time the client sends after it heard new
bytes from the server since it last sent (a TLS handshake's flights, each request that
waited for the answer before it): the round trips a client paid, counted the same way for
any client.
`--selftest` measures the relay's own ceiling on this machine (no delay, no caps; then the
window and link limits) against a local byte source, prints it and exits.
Python 3.10+ standard library only.
"""
from __future__ import annotations

import argparse
import collections
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pace_proxy import log_connection  # noqa: E402  (the same line per connection)

HOST = "127.0.0.1"
READ = 256 << 10


def parse_size(s: str) -> int:
    s = s.strip()
    for suffix, mult in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if s.endswith(suffix):
            return int(float(s[: -len(suffix)]) * mult)
    return int(float(s))


class Bucket:
    """A token bucket as a virtual clock: `t` is when the link has sent every byte reserved
    so far. `done(n)` reserves n bytes and returns the time they have left the link."""

    def __init__(self, rate: float):
        self.rate = rate
        self.t = time.monotonic()
        self.lock = threading.Lock()

    def done(self, n: int, now: float) -> float:
        with self.lock:
            self.t = max(self.t, now) + n / self.rate
            return self.t


class Direction:
    """One direction of one connection: a reader thread that takes bytes from `src` while
    the window allows and stamps when each piece may be delivered; a writer thread that
    delivers them to `dst` at that time and hands the credit back one RTT after the read."""

    def __init__(self, src, dst, owd, rtt, window, link, flow, start_at, stats, key, on_turn=None):
        self.src, self.dst = src, dst
        self.on_turn = on_turn
        self.heard = -1  # server bytes the client had heard when it last sent
        self.owd, self.rtt, self.window = owd, rtt, window
        self.link, self.flow = link, flow
        self.start_at = start_at
        self.stats, self.key = stats, key
        self.queue: collections.deque = collections.deque()
        self.cv = threading.Condition()
        self.in_flight = 0
        self.credits: collections.deque = collections.deque()  # (release_at, n)
        self.eof = False

    def read_loop(self) -> None:
        buf = bytearray(READ)
        view = memoryview(buf)
        try:
            while True:
                want = READ
                if self.window:
                    want = self.wait_for_credit()
                n = self.src.recv_into(view[:want])
                if not n:
                    break
                if self.on_turn is not None and self.stats["down"] != self.heard:
                    self.heard = self.stats["down"]
                    self.on_turn()
                now = time.monotonic()
                left_link = now
                if self.flow:
                    left_link = max(left_link, self.flow.done(n, now))
                if self.link:
                    left_link = max(left_link, self.link.done(n, now))
                deliver = max(left_link, self.start_at) + self.owd
                with self.cv:
                    self.in_flight += n
                    self.queue.append((deliver, now, bytes(view[:n])))
                    self.cv.notify_all()
        except OSError:
            pass
        with self.cv:
            self.eof = True
            self.cv.notify_all()

    def wait_for_credit(self) -> int:
        """Blocks until some window is free; returns how much may be read now."""
        with self.cv:
            while True:
                now = time.monotonic()
                while self.credits and self.credits[0][0] <= now:
                    self.in_flight -= self.credits.popleft()[1]
                free = self.window - self.in_flight
                if free > 0:
                    return min(READ, free)
                wait = self.credits[0][0] - now if self.credits else 0.05
                self.cv.wait(max(wait, 0.0005))

    def write_loop(self) -> None:
        try:
            while True:
                with self.cv:
                    while not self.queue and not self.eof:
                        self.cv.wait()
                    if not self.queue:
                        break
                    deliver, read_at, data = self.queue.popleft()
                wait = deliver - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self.dst.sendall(data)
                self.stats[self.key] += len(data)
                if self.key == "down":
                    self.stats.setdefault("first", time.monotonic())
                    self.stats["last"] = time.monotonic()
                with self.cv:
                    # The ACK of these bytes is back one RTT after they were read (later if
                    # the link held them).
                    release = max(read_at + self.rtt, time.monotonic() + self.owd)
                    self.credits.append((release, len(data)))
                    self.cv.notify_all()
        except OSError:
            pass
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def small_buffers(s: socket.socket, size: int) -> None:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if size:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def handle(client, n, args, link, out_lock) -> None:
    accepted = time.monotonic()
    owd = args.rtt / 2
    up = socket.socket()
    small_buffers(up, args.sockbuf)
    stats = {"down": 0, "up": 0}
    try:
        up.connect((HOST, args.target_port))
        small_buffers(client, args.sockbuf)
        flow = Bucket(args.flow_rate) if args.flow_rate else None
        def turn() -> None:
            if not args.quiet:
                with out_lock:
                    print(f"turn {n}", flush=True)
        if not args.quiet:
            with out_lock:
                print(f"open {n}", flush=True)
        # Client -> server: delayed; the handshake's round trip comes first.
        upd = Direction(client, up, owd, args.rtt, 0, None, None, accepted + args.rtt - owd, stats, "up", turn)
        # Server -> client: window, link and flow caps, delayed.
        down = Direction(up, client, owd, args.rtt, args.window, link, flow, 0.0, stats, "down")
        threads = [threading.Thread(target=f, daemon=True)
                   for f in (upd.read_loop, upd.write_loop, down.read_loop, down.write_loop)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    except OSError as e:
        with out_lock:
            print(f"conn {n}: {e}", flush=True)
    finally:
        client.close()
        up.close()
    if not args.quiet:
        log_connection(n, stats, out_lock)


def serve(args, lsock: socket.socket) -> None:
    link = Bucket(args.link_rate) if args.link_rate else None
    out_lock = threading.Lock()
    count = 0
    while True:
        client, _ = lsock.accept()
        count += 1
        threading.Thread(target=handle, args=(client, count, args, link, out_lock), daemon=True).start()


def listen(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((HOST, port))
    s.listen(256)
    return s


def selftest() -> int:
    """The relay's ceiling: a local source sends N bytes to each of K clients through it."""
    size = 256 << 20

    def source(lsock):
        while True:
            c, _ = lsock.accept()

            def send(c=c):
                block = b"\0" * (1 << 20)
                try:
                    c.recv(16)
                    for _ in range(size >> 20):
                        c.sendall(block)
                finally:
                    c.close()
            threading.Thread(target=send, daemon=True).start()

    src = listen(0)
    threading.Thread(target=source, args=(src,), daemon=True).start()
    cases = [
        ("no delay, no caps, 1 flow", dict(rtt=0.0, window=0, link_rate=0, flow_rate=0), 1),
        ("no delay, no caps, 4 flows", dict(rtt=0.0, window=0, link_rate=0, flow_rate=0), 4),
        ("RTT 150 ms, window 4 MiB, 1 flow", dict(rtt=0.150, window=4 << 20, link_rate=0, flow_rate=0), 1),
        ("RTT 150 ms, window 4 MiB, link 1 Gbit/s, 4 flows",
         dict(rtt=0.150, window=4 << 20, link_rate=125e6, flow_rate=0), 4),
        ("RTT 20 ms, window 4 MiB, 1 flow", dict(rtt=0.020, window=4 << 20, link_rate=0, flow_rate=0), 1),
    ]
    print("| case | MB/s per flow | MB/s all flows | expected limit |")
    print("|---|---|---|---|")
    for name, knobs, flows in cases:
        args = argparse.Namespace(target_port=src.getsockname()[1], sockbuf=64 << 10, quiet=True, **knobs)
        lsock = listen(0)
        threading.Thread(target=serve, args=(args, lsock), daemon=True).start()
        port = lsock.getsockname()[1]
        results = []

        def client():
            c = socket.create_connection((HOST, port))
            c.sendall(b"go")
            t0, got = time.monotonic(), 0
            while True:
                b = c.recv(1 << 20)
                if not b:
                    break
                got += len(b)
            results.append((got, time.monotonic() - t0))
            c.close()
        t0 = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(flows)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        per = sum(g / s for g, s in results) / len(results) / 1e6
        total = sum(g for g, _ in results) / wall / 1e6
        limits = []
        if knobs["window"] and knobs["rtt"]:
            limits.append(f"window/RTT {knobs['window'] / knobs['rtt'] / 1e6:.1f}/flow")
        if knobs["link_rate"]:
            limits.append(f"link {knobs['link_rate'] / 1e6:.0f} all")
        print(f"| {name} | {per:.1f} | {total:.1f} | {', '.join(limits) or 'the relay itself'} |", flush=True)
        lsock.close()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen-port", type=int)
    ap.add_argument("--target-port", type=int)
    ap.add_argument("--rtt", type=float, default=0.150, help="round-trip time, seconds")
    ap.add_argument("--window", type=parse_size, default=4 << 20,
                    help="bytes in flight per connection, server -> client (0: unlimited)")
    ap.add_argument("--link-rate", type=float, default=0, help="bytes/s shared by all connections (0: none)")
    ap.add_argument("--flow-rate", type=float, default=0, help="bytes/s per connection (0: none)")
    ap.add_argument("--sockbuf", type=parse_size, default=64 << 10, help="the relay's socket buffers")
    ap.add_argument("--quiet", action="store_true", help="no line per connection")
    ap.add_argument("--selftest", action="store_true", help="measure the relay's ceiling and exit")
    args = ap.parse_args()
    if args.selftest:
        return selftest()
    if args.listen_port is None or args.target_port is None:
        ap.error("--listen-port and --target-port are required")
    if args.rtt < 0 or args.window < 0 or args.link_rate < 0 or args.flow_rate < 0:
        ap.error("--rtt, --window, --link-rate and --flow-rate must not be negative")
    lsock = listen(args.listen_port)
    print(f"wan relay {HOST}:{args.listen_port} -> {HOST}:{args.target_port}: RTT {args.rtt * 1000:.0f} ms, "
          f"window {args.window} B, link {args.link_rate:.0f} B/s, flow cap {args.flow_rate:.0f} B/s",
          flush=True)
    try:
        serve(args, lsock)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
