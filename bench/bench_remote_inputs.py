"""Photos on object storage: reading a shard's inputs one by one vs in one concurrent batch, and whole builds.

A cloud object store answers each request after tens of milliseconds. This bench serves distinct photos
(bench/synth_images.py) over HTTP from a local server that waits ``--latency-ms`` before every answer (a
stand-in for S3/GCS first-byte latency; the same fsspec async code path as s3fs), then measures in one run:

(a) one shard's inputs (``--shard-size`` photos): ``storage.root.read_uri`` per photo (fsspec ``open`` + read,
    how both build stages read inputs before) against ``storage.root.read_uris`` (one concurrent batch),
    alternating, ``--rounds`` times each; requests per photo counted by the server;
(b) with ``--build``: ``monolidar build`` over the same photos as an http:// list against the same photos on
    local disk, alternating (the embedded teacher, a small canvas, shards of ``--shard-size``).

    python bench/bench_remote_inputs.py --images 64 --latency-ms 40 [--build]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


class LatencyFiles(BaseHTTPRequestHandler):
    """Files of one folder over HTTP (GET with Range, HEAD), each answer delayed by ``latency_s``."""

    root = Path(".")
    latency_s = 0.04
    requests = 0
    lock = threading.Lock()

    def _file(self) -> Path | None:
        p = self.root / self.path.lstrip("/")
        return p if p.is_file() else None

    def _answer(self, body: bool) -> None:
        with self.lock:
            type(self).requests += 1
        time.sleep(self.latency_s)
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start, stop = int(a or 0), min(len(data), int(b) + 1 if b else len(data))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
            data = data[start:stop]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server's names)
        self._answer(True)

    def do_HEAD(self):  # noqa: N802
        self._answer(False)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # socketserver's default backlog of 5 would refuse a batch's concurrent connects


def serve(root: Path, latency_s: float) -> tuple[ThreadingHTTPServer, str]:
    LatencyFiles.root, LatencyFiles.latency_s = root, latency_s
    server = _Server(("127.0.0.1", 0), LatencyFiles)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def read_shard(uris: list[str], batched: bool) -> tuple[float, int]:
    from storage.root import read_uri, read_uris

    before = LatencyFiles.requests
    t0 = time.perf_counter()
    if batched:
        got = read_uris(uris)
        assert all(isinstance(v, bytes) for v in got.values())
    else:
        for u in uris:
            read_uri(u)
    return time.perf_counter() - t0, LatencyFiles.requests - before


def build(images: str, work: Path, shard: int) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    cmd = [sys.executable, "-m", "flows.cli", "build", "--quiet", "--json", "--images", images, "--out",
           str(work / "s.zarr"), "--cache-dir", str(work / "cache"), "--shard-size", str(shard), "--height", "176",
           "--width", "608"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64, help="distinct photos (bench/synth_images.py)")
    ap.add_argument("--latency-ms", type=float, default=40.0, help="delay before each HTTP answer")
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--build", action="store_true", help="also (b): whole builds, http vs local inputs")
    args = ap.parse_args()

    from synth_images import write_images  # bench/ is on sys.path when this file runs

    with tempfile.TemporaryDirectory(prefix="monolidar-remote-") as tmp:
        photos = Path(tmp) / "photos"
        write_images(photos, args.images, seed=1)
        names = sorted(p.name for p in photos.glob("*.jpg"))
        server, base = serve(photos, args.latency_ms / 1000.0)
        try:
            uris = [f"{base}/{n}" for n in names[: args.shard_size]]
            read_shard(uris[:2], batched=True)  # imports and the HTTP session, outside the timing
            times: dict[bool, list[float]] = {False: [], True: []}
            reqs: dict[bool, int] = {}
            for r in range(args.rounds):
                for batched in ((False, True) if r % 2 == 0 else (True, False)):
                    dt, n = read_shard(uris, batched)
                    times[batched].append(dt)
                    reqs[batched] = n
            one, many = (statistics.median(times[b]) for b in (False, True))
            print(f"(a) one shard of {len(uris)} photos over HTTP, {args.latency_ms:.0f} ms per answer, medians of "
                  f"{args.rounds}:")
            print(f"  one by one (read_uri)      {one:7.2f} s   {reqs[False] / len(uris):.1f} requests per photo")
            print(f"  one batch (read_uris)      {many:7.2f} s   {reqs[True] / len(uris):.1f} requests per photo")
            print(f"  ratio                      {one / many:7.1f}x")
            if args.build:
                listing = Path(tmp) / "http.txt"
                listing.write_text("".join(f"{base}/{n}\n" for n in names))
                res: dict[str, list[float]] = {"local": [], "http": []}
                for r in range(args.rounds):
                    for kind in (("local", "http") if r % 2 == 0 else ("http", "local")):
                        summary = build(str(photos) if kind == "local" else str(listing), Path(tmp) / "b", args.shard_size)
                        assert summary["status"]["ok"] == len(names), summary["status"]
                        res[kind].append(summary["seconds"])
                loc, rem = (statistics.median(res[k]) for k in ("local", "http"))
                print(f"(b) monolidar build of {len(names)} photos (embedded teacher, 176x608, shards of "
                      f"{args.shard_size}), medians of {args.rounds}: local {loc:.1f} s, over HTTP {rem:.1f} s "
                      f"({rem / loc:.2f}x)")
        finally:
            server.shutdown()


if __name__ == "__main__":
    main()
