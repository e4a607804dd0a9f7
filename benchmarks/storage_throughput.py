"""Throughput of object storage against raw I/O on the same disk and the same S3 endpoint, in one run.

Local: put and get of 16 MiB objects through the storage service (SQLite metadata and quota in one
transaction, a blob written to a temporary file, fsynced and linked into place, SHA-256 computed on the
way in and verified on the way out) against a raw write (write + fsync: the same durability) and a raw
read of a file in the same directory.

S3: the same service over an S3-compatible server (moto, started on a loopback port in a child
process) against raw boto3 ``put_object`` / ``get_object`` calls on the same endpoint.

Rounds interleave the raw and service operations so drift in machine load hits both alike. Prints the
median time per operation and the throughput ratio (raw time / service time; 1.0 = as fast as raw),
against the targets: 0.7 for local, 0.8 for S3. A benchmark, not a test: it exits 0 whatever the ratios.

Usage: ``.venv/bin/python benchmarks/storage_throughput.py [--rounds N] [--size-mib N] [--skip-s3]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from scalemule.core import bootstrap, storage
from scalemule.core.storage import WriteRequest
from scalemule.db import migrate
from scalemule.runtime import Runtime
from scalemule.settings import Settings

TARGETS = {"local": 0.7, "s3": 0.8}
BUCKET = "scalemule-bench"
# Scratch space inside the checkout, so the raw files and the blobs share one disk.
HERE = Path(__file__).resolve().parent.parent


def timed(samples: list[float]) -> Callable[[Callable[[], Any]], Awaitable[None]]:
    async def run(work: Callable[[], Any]) -> None:
        started = time.perf_counter()
        result = work()
        if hasattr(result, "__await__"):
            await result
        samples.append(time.perf_counter() - started)

    return run


class Service:
    """The storage service over one runtime, acting in a freshly initialised tenant."""

    def __init__(self, runtime: Runtime, tenant_id: str) -> None:
        self.runtime = runtime
        self.tenant_id = tenant_id

    @classmethod
    async def open(cls, settings: Settings) -> Service:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        runtime = Runtime.open(settings)
        await migrate.upgrade(runtime.db.engine)
        made = await bootstrap.initialize(runtime.db, slug="bench", owner_email="bench@example.com")
        return cls(runtime, made.tenant.id)

    async def put(self, key: str, data: bytes) -> None:
        request = WriteRequest(self.tenant_id, key, "application/octet-stream", {}, writer=None)
        async with self.runtime.db.transaction() as conn:
            await storage.put(conn, self.runtime.blobs, request, data, quota=1 << 40)

    async def get(self, key: str) -> bytes:
        async with self.runtime.db.transaction() as conn:
            obj = await storage.head(conn, tenant_id=self.tenant_id, key=key)
        return await storage.read(self.runtime.blobs, obj)


def raw_write(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def raw_write_unsynced(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)


def report(label: str, raw: list[float], service: list[float], size: int, target: float | None) -> None:
    raw_median, service_median = statistics.median(raw), statistics.median(service)
    ratio = raw_median / service_median
    verdict = "" if target is None else ("  PASS" if ratio >= target else "  UNDER") + f" (target {target})"
    mib = size / (1 << 20)
    print(
        f"  {label:34} raw {raw_median * 1000:8.1f} ms ({mib / raw_median:7.0f} MiB/s)"
        f"   service {service_median * 1000:8.1f} ms ({mib / service_median:7.0f} MiB/s)"
        f"   ratio {ratio:5.2f}{verdict}"
    )


async def bench_local(root: Path, data: bytes, rounds: int) -> None:
    service = await Service.open(Settings(data_dir=root / "store"))
    raw_dir = root / "store" / "blobs" / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    samples: dict[str, list[float]] = {name: [] for name in ("rw", "sw", "rr", "sr", "rw_nosync", "sha")}
    try:
        for i in range(rounds + 1):
            keep = i > 0  # the first round warms caches and is not counted
            rw, sw, rr, sr, nosync, sha = ([] if not keep else samples[n] for n in samples)
            path = raw_dir / f"object-{i}"
            await timed(rw)(lambda path=path: anyio.to_thread.run_sync(raw_write, path, data))
            await timed(sw)(lambda i=i: service.put(f"bench/object-{i}", data))
            await timed(rr)(lambda path=path: anyio.to_thread.run_sync(path.read_bytes))
            await timed(sr)(lambda i=i: service.get(f"bench/object-{i}"))
            await timed(nosync)(lambda path=path: anyio.to_thread.run_sync(raw_write_unsynced, path, data))
            await timed(sha)(lambda: anyio.to_thread.run_sync(lambda: hashlib.sha256(data).digest()))
        assert await service.get(f"bench/object-{rounds}") == data
    finally:
        await service.runtime.close()
    print(f"local disk ({root}), {len(data) >> 20} MiB objects, {rounds} rounds, medians:")
    report("put  vs raw write+fsync", samples["rw"], samples["sw"], len(data), TARGETS["local"])
    report("get  vs raw read", samples["rr"], samples["sr"], len(data), TARGETS["local"])
    cycle_raw = [a + b for a, b in zip(samples["rw"], samples["rr"], strict=True)]
    cycle_service = [a + b for a, b in zip(samples["sw"], samples["sr"], strict=True)]
    report("put+get vs raw write+fsync+read", cycle_raw, cycle_service, len(data), TARGETS["local"])
    report("(info) put vs raw write, no fsync", samples["rw_nosync"], samples["sw"], len(data), None)
    floor = statistics.median(samples["sha"])
    print(f"  (info) SHA-256 of the object alone, one core: {floor * 1000:.1f} ms, the verification every get pays")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def bench_s3(root: Path, data: bytes, rounds: int) -> None:
    import boto3

    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    server = await anyio.open_process(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        with anyio.fail_after(30):
            while True:  # bounded by fail_after: up once it accepts connections
                try:
                    await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await anyio.sleep(0.05)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        settings = Settings(data_dir=root / "s3store", s3_bucket=BUCKET, s3_endpoint_url=endpoint, s3_prefix="svc/")
        service = await Service.open(settings)
        samples: dict[str, list[float]] = {name: [] for name in ("rw", "sw", "rr", "sr")}

        def raw_put(key: str) -> None:
            client.put_object(Bucket=BUCKET, Key=key, Body=data)

        def raw_get(key: str) -> bytes:
            return bytes(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())

        try:
            for i in range(rounds + 1):
                rw, sw, rr, sr = ([] if i == 0 else samples[n] for n in samples)
                key = f"raw/object-{i}"
                await timed(rw)(lambda key=key: anyio.to_thread.run_sync(raw_put, key))
                await timed(sw)(lambda i=i: service.put(f"bench/object-{i}", data))
                await timed(rr)(lambda key=key: anyio.to_thread.run_sync(raw_get, key))
                await timed(sr)(lambda i=i: service.get(f"bench/object-{i}"))
            assert await service.get(f"bench/object-{rounds}") == data
        finally:
            await service.runtime.close()
    finally:
        server.terminate()
        with anyio.fail_after(30):
            await server.wait()
    print(f"S3 (moto server at {endpoint}), {len(data) >> 20} MiB objects, {rounds} rounds, medians:")
    report("put  vs raw boto3 put_object", samples["rw"], samples["sw"], len(data), TARGETS["s3"])
    report("get  vs raw boto3 get_object", samples["rr"], samples["sr"], len(data), TARGETS["s3"])
    cycle_raw = [a + b for a, b in zip(samples["rw"], samples["rr"], strict=True)]
    cycle_service = [a + b for a, b in zip(samples["sw"], samples["sr"], strict=True)]
    report("put+get vs raw put+get", cycle_raw, cycle_service, len(data), TARGETS["s3"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--size-mib", type=int, default=16)
    parser.add_argument("--skip-s3", action="store_true")
    args = parser.parse_args()
    data = os.urandom(args.size_mib << 20)
    print(f"{os.cpu_count()} CPUs; ratio = raw median / service median (higher is better, 1.0 = raw speed)\n")
    with tempfile.TemporaryDirectory(prefix="scalemule-bench-", dir=HERE) as tmp:
        await bench_local(Path(tmp), data, args.rounds)
        if not args.skip_s3:
            print()
            await bench_s3(Path(tmp), data, max(3, args.rounds // 2))


if __name__ == "__main__":
    anyio.run(main)
