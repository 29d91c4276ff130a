#!/usr/bin/env python3
"""A pacing TCP proxy for the benchmark harness: an upstream link of a given speed, on loopback.

    python3 benches/pace_proxy.py --listen-port 8001 --target-port 5000 --rate 1e9

Accepts on 127.0.0.1:<listen-port>, connects each client to 127.0.0.1:<target-port> and
copies both ways. The target -> client direction of ALL connections together is paced by
one token bucket (`--rate` bytes/s, `--burst` bytes of credit), like one shared link:
opening more connections does not buy more bandwidth. Client -> target is not paced.

Pacing is sleep-based: each read of up to `--read-size` bytes (256 KiB) reserves its
bytes on the bucket's clock and sleeps until the bucket allows them, then sends. The
event loop sleeps in whole milliseconds, so the burst (default: 4 ms at the rate, at least
two reads) is what lets it catch up after oversleeping; over a transfer the rate is exact
unless Python cannot copy that fast. Each finished connection logs one line:
`conn <n> down=<bytes> up=<bytes> secs=<first paced byte in to last out> rate=<bytes/s>`
(the rate includes any idle time between responses on a kept-alive connection).

Python 3.11 standard library only (asyncio, no uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time

HOST = "127.0.0.1"


class Bucket:
    """A token bucket as a virtual clock (GCRA): `t` is when the link is done with every byte
    reserved so far; bytes may go ahead of it by at most `burst`."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.t = time.monotonic()

    def delay(self, n: int) -> float:
        """Reserves n bytes; returns how long to wait before sending them."""
        now = time.monotonic()
        self.t = max(self.t, now) + n / self.rate
        return self.t - now - self.burst / self.rate


async def pump(loop, src: socket.socket, dst: socket.socket, size: int, bucket: Bucket | None,
               stats: dict, key: str) -> None:
    buf = memoryview(bytearray(size))
    try:
        while True:
            n = await loop.sock_recv_into(src, buf)
            if not n:
                break
            if bucket:
                stats.setdefault("first", time.monotonic())
                wait = bucket.delay(n)
                if wait > 0:
                    await asyncio.sleep(wait)
            await loop.sock_sendall(dst, buf[:n])
            stats[key] += n
            if bucket:
                stats["last"] = time.monotonic()
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


async def serve(args) -> None:
    loop = asyncio.get_running_loop()
    bucket = Bucket(args.rate, args.burst or max(2 * args.read_size, int(args.rate * 0.004)))
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((HOST, args.listen_port))
    lsock.listen(256)
    lsock.setblocking(False)
    count = 0

    async def handle(client: socket.socket, n: int) -> None:
        up = socket.socket()
        up.setblocking(False)
        stats = {"down": 0, "up": 0}
        try:
            await loop.sock_connect(up, (HOST, args.target_port))
            for s in (client, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.gather(pump(loop, up, client, args.read_size, bucket, stats, "down"),
                                 pump(loop, client, up, 64 << 10, None, stats, "up"))
        except OSError as e:
            print(f"conn {n}: {e}", flush=True)
        finally:
            client.close()
            up.close()
        secs = stats["last"] - stats["first"] if "first" in stats and "last" in stats else 0.0
        rate = f"{stats['down'] / secs:.0f}" if secs > 0 else "-"
        print(f"conn {n} down={stats['down']} up={stats['up']} secs={secs:.6f} rate={rate}", flush=True)

    print(f"pacing {HOST}:{args.listen_port} -> {HOST}:{args.target_port} at {args.rate:.0f} B/s, "
          f"burst {bucket.burst} B, reads of {args.read_size} B", flush=True)
    tasks = set()
    while True:
        client, _ = await loop.sock_accept(lsock)
        client.setblocking(False)
        count += 1
        t = asyncio.create_task(handle(client, count))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen-port", type=int, required=True)
    ap.add_argument("--target-port", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True, help="bytes/s, target -> client, all connections")
    ap.add_argument("--burst", type=int, default=0, help="bucket size in bytes (default: 4 ms at the rate)")
    ap.add_argument("--read-size", type=int, default=256 << 10)
    args = ap.parse_args()
    if args.rate <= 0:
        ap.error("--rate must be positive")
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
