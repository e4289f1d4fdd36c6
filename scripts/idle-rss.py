#!/usr/bin/env python3
"""Opens N idle WebSocket connections to a wshub server and reports the server's RSS per
connection (the RSS growth divided by N). Loopback only; bounded in count and time.

    scripts/idle-rss.py --pid PID --url ws://127.0.0.1:5289/ws -n 10000

Run the server with --announce none, or the N^2/2 join announcements (which these idle
clients do not read) fill their queues and they are closed as slow consumers.
"""
import argparse, asyncio, os, resource, sys, time
from urllib.parse import urlparse


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_one(host, port, path, src):
    r, w = await asyncio.open_connection(host, port, local_addr=(src, 0))
    w.write((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await r.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head[:80])
    return r, w


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--url", default="ws://127.0.0.1:5289/ws")
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--settle", type=float, default=3.0)
    a = ap.parse_args()
    if not 0 < a.n <= 19000:
        sys.exit("n must be 1..19000 (one process holds at most ~19,900 sockets)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    u = urlparse(a.url)
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("loopback only")
    time.sleep(0.5)
    before = rss_kib(a.pid)
    t0 = time.time()
    conns, sem = [], asyncio.Semaphore(200)

    async def guarded(i):
        async with sem:
            return await open_one(u.hostname, u.port, u.path or "/", "127.0.0.1")

    conns = await asyncio.wait_for(asyncio.gather(*(guarded(i) for i in range(a.n))), timeout=120)
    took = time.time() - t0
    await asyncio.sleep(a.settle)
    after = rss_kib(a.pid)
    per = (after - before) * 1024 / a.n
    print(f"connections={a.n} connect_time={took:.2f}s rate={a.n/took:.0f}/s "
          f"rss_before={before}KiB rss_after={after}KiB per_connection={per:.0f}B")
    for _, w in conns:
        w.close()


asyncio.run(main())
