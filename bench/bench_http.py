"""The analysis service under load: requests per second and latency (median, p99) with 1, 4
and 16 concurrent clients against the PACBED model, through a real `flakescan serve`.

The server is a subprocess on a free loopback port with its default `[http] workers = 2`
(two analyses at once on a 2-core machine; more requests queue). Each client is a thread
with its own HTTP connection, posting one PACBED pattern (.npy, 160 x 160 px, a disc with
fringes and shot noise) per request. The same pattern analysed in-process by
`AnalysisService` gives the floor the HTTP path adds to.

    .venv/bin/python bench/bench_http.py [--requests 200] [--clients 1 4 16]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

MODEL = "pacbed_srtio3"
PARAMS = {"conv_angle_mrad": 20.0, "energy_kev": 300.0}


def _pattern() -> bytes:
    yy, xx = np.mgrid[:160, :160]
    r = np.hypot(yy - 81.3, xx - 78.9)
    disc = (r < 40) * (1 + 0.3 * np.cos(r / 3.0)) + 0.01
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).poisson(disc * 400).astype(np.float32))
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(client: httpx.Client, url: str, blob: bytes) -> float:
    t0 = time.perf_counter()
    reply = client.post(
        f"{url}/v1/analyze/{MODEL}",
        files=[("files", ("pattern.npy", blob))],
        data={"params": json.dumps(PARAMS)},
    )
    elapsed = time.perf_counter() - t0
    if reply.status_code != 200:
        raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:300]}")
    return elapsed


def _load(url: str, blob: bytes, clients: int, total: int) -> dict:
    """`total` requests shared by `clients` threads; per-request latency and throughput."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = [total // clients + (i < total % clients) for i in range(clients)]

    def worker(n: int) -> None:
        with httpx.Client(timeout=120) as client:
            for _ in range(n):
                dt = _post(client, url, blob)
                with lock:
                    latencies.append(dt)

    threads = [threading.Thread(target=worker, args=(n,)) for n in per_client]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = sorted(1e3 * x for x in latencies)
    return {
        "clients": clients,
        "requests": len(ms),
        "requests_per_s": round(len(ms) / wall, 1),
        "latency_ms_median": round(statistics.median(ms), 1),
        "latency_ms_p99": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1),
    }


def _in_process(blob: bytes, repeats: int) -> float:
    from flakescan.inference.analysis import AnalysisParams, AnalysisService

    service = AnalysisService()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pattern.npy"
        path.write_bytes(blob)
        service.analyze("pacbed", [path], AnalysisParams(**PARAMS), model=MODEL)  # load
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            service.analyze("pacbed", [path], AnalysisParams(**PARAMS), model=MODEL)
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200, help="per concurrency level")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    a = p.parse_args()
    blob = _pattern()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "flakescan.daemon", "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/v1/health", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("flakescan serve did not start") from None
                time.sleep(0.2)
        with httpx.Client(timeout=120) as c:  # load the model, warm the sessions
            for _ in range(5):
                _post(c, url, blob)
        rows = [_load(url, blob, n, a.requests) for n in a.clients]
    finally:
        server.terminate()
        server.wait(timeout=20)
    floor = _in_process(blob, 50)
    print(f"{os.cpu_count()} cores; server [http] workers = 2; {a.requests} requests per level")
    print(f"in-process AnalysisService, same pattern: {floor:.1f} ms median")
    print("| clients | requests/s | latency median (ms) | latency p99 (ms) |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['clients']} | {r['requests_per_s']} | {r['latency_ms_median']} | "
            f"{r['latency_ms_p99']} |"
        )
    print(json.dumps({"in_process_ms": round(floor, 2), "levels": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
