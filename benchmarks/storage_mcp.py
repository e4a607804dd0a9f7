"""16 MiB objects through MCP end to end, the server's peak memory doing it, and through signed URLs.

Inline: ``storage_put_object`` / ``storage_get_object`` of a 16 MiB object (base64, the largest a call
may carry) through the official client over stdio, against the bare low-level SDK server moving the
same bytes once (its ``blob`` tool: a 16 MiB argument it ignores, or 16 MiB of base64 it returns).
Each server is fresh for the first put and the first get: its peak resident set (``VmHWM``) after
that call, less its peak when idle (after one small call), is the memory the call cost.

Signed URLs: ``storage_create_signed_url`` then an HTTP PUT / GET of 16 MiB on the ``/blobs/`` URL of
``scalemule serve --transport http``, against the same transfer to a bare route on the bare SDK
server's uvicorn app. Calls alternate between subject and baseline. SQLite store and local blobs.

Usage: ``.venv/bin/python benchmarks/storage_mcp.py [--quick]``. ``storage_throughput.py`` measures
the storage service itself, below MCP.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx2
from _harness import (
    Bench,
    BenchError,
    Row,
    Stdio,
    Target,
    bare_stdio,
    interleave,
    median,
    peak_rss,
    run,
    scalemule_stdio,
)
from _http import bare_http, http_call, http_clients, scalemule_http

SIZE = 16 << 20
MIB = 1 << 20


async def _timed(op: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await op()
    return time.perf_counter() - started


async def _first_call(
    server: Stdio, warm: tuple[str, dict[str, Any]], op: Callable[[], Awaitable[Any]]
) -> tuple[float, int]:
    """Time ``op`` on a fresh server; returns (seconds, peak RSS growth over idle in bytes)."""
    await server.call(*warm)
    idle = peak_rss(server.pid)
    took = await _timed(op)
    return took, peak_rss(server.pid) - idle


def _check_object(result: Any, data: bytes) -> None:
    got = result.structured_content or {}
    if got.get("truncated") or got.get("size") != len(data):
        raise BenchError(f"storage_get_object returned {got.get('size')} bytes, truncated={got.get('truncated')}")
    content = got.get("content", "")
    body = base64.b64decode(content) if got.get("encoding") == "base64" else content.encode()
    if body != data:
        raise BenchError("storage_get_object returned other bytes than were put")


async def inline(bench: Bench) -> None:
    """16 MiB put and get inline, time and peak RSS, against the bare server moving the same bytes."""
    store = await bench.store("sqlite")
    data = os.urandom(SIZE)
    encoded = base64.b64encode(data).decode()
    # The first call on a fresh server gives both its time and its memory; more only while time allows.
    extra, budget = bench.size(2, 0), bench.seconds(10, 0)
    put_args = {"key": "bench/16mib", "content": encoded, "encoding": "base64"}
    get_args = {"key": "bench/16mib", "max_bytes": SIZE}
    async with AsyncExitStack() as stack:
        sm = await stack.enter_async_context(scalemule_stdio(store, bench.workdir))
        bare = await stack.enter_async_context(bare_stdio(bench.workdir))
        sm_put, sm_rss_put = await _first_call(sm, ("whoami", {}), lambda: sm.call("storage_put_object", put_args))
        bare_put, bare_rss_put = await _first_call(bare, ("noop", {}), lambda: bare.call("blob", {"content": encoded}))
        more = await interleave(
            [
                ("sm", lambda: sm.call("storage_put_object", put_args)),
                ("bare", lambda: bare.call("blob", {"content": encoded})),
            ],
            extra,
            0,
            budget=budget - sm_put - bare_put,
            min_rounds=0,
        )
    async with AsyncExitStack() as stack:
        sm = await stack.enter_async_context(scalemule_stdio(store, bench.workdir))
        bare = await stack.enter_async_context(bare_stdio(bench.workdir))
        got: list[Any] = []

        async def sm_get() -> None:
            got.append(await sm.call("storage_get_object", get_args))

        sm_get1, sm_rss_get = await _first_call(sm, ("whoami", {}), sm_get)
        _check_object(got.pop(), data)
        bare_get1, bare_rss_get = await _first_call(bare, ("noop", {}), lambda: bare.call("blob", {"size": SIZE}))
        later = await interleave(
            [("sm", sm_get), ("bare", lambda: bare.call("blob", {"size": SIZE}))],
            extra,
            0,
            budget=budget - sm_get1 - bare_get1,
            min_rounds=0,
        )
    puts = ([sm_put, *more["sm"]], [bare_put, *more["bare"]])
    gets = ([sm_get1, *later["sm"]], [bare_get1, *later["bare"]])
    for label, (mine, floor), target in (("get", gets, Target("<=", 1, " s")), ("put", puts, None)):
        figures = f"{median(mine):.2f} s vs {median(floor):.2f} s for the bare server moving the bytes once"
        figures += f" ({len(mine)} call{'s' if len(mine) > 1 else ''} each)"
        tool = f"storage_{label}_object"
        bench.add(
            Row(
                f"16 MiB {tool} inline, official client, end to end",
                "sqlite",
                figures,
                median(mine) / median(floor),
                target,
                judged=median(mine) if target else None,
            )
        )
        if target is not None and not target.met(median(floor)):
            bench.say(
                f"  (the bare server sending the same bytes once takes {median(floor):.2f} s with this client, over"
                f" the target: the official client's stdio reader is quadratic in a message's size, so no server"
                " meets it with that client; see client_reader.py)"
            )
    for label, rss, floor in (("put", sm_rss_put, bare_rss_put), ("get", sm_rss_get, bare_rss_get)):
        figures = f"+{rss / MIB:.0f} MiB over idle (bare SDK server moving the same bytes: +{floor / MIB:.0f} MiB)"
        bench.add(
            Row(
                f"inline 16 MiB {label}: server peak RSS over idle",
                "sqlite",
                figures,
                rss / SIZE,
                Target("<=", 3, "x the object"),
                ratio_unit="x the object",
            )
        )


async def _transfer(client: httpx2.AsyncClient, url: str, method: str, data: bytes) -> float:
    """Seconds to PUT ``data`` to ``url`` or GET it back (checked when the URL is a signed one)."""
    started = time.perf_counter()
    reply = await client.request(method, url, content=data if method == "PUT" else None)
    took = time.perf_counter() - started
    if reply.status_code >= 300 or (method == "GET" and "/blobs/" in url and reply.content != data):
        raise BenchError(f"{method} {url.split('?')[0]}: HTTP {reply.status_code}: {reply.text[:300]}")
    return took


async def signed_urls(bench: Bench) -> None:
    """16 MiB PUT and GET on signed URLs against the same transfers to the bare server's ``/blob``."""
    store = await bench.store("sqlite")
    data = os.urandom(SIZE)
    rounds = bench.size(3, 2)
    samples: dict[str, list[float]] = {"put": [], "get": [], "bare put": [], "bare get": []}
    async with (
        scalemule_http(store, bench.workdir) as sm,
        bare_http(bench.workdir) as bare,
        http_clients(sm, 1) as (mcp,),
        http_clients(bare, 1) as (raw,),
    ):
        for r in range(rounds + 1):  # the first round warms up
            put = await http_call(mcp, sm, "storage_create_signed_url", {"key": "bench/signed", "method": "PUT"})
            took = {
                "put": await _transfer(raw, str(put["url"]), "PUT", data),
                "bare put": await _transfer(raw, f"{bare.base}/blob", "PUT", data),
            }
            get = await http_call(mcp, sm, "storage_create_signed_url", {"key": "bench/signed", "method": "GET"})
            took["get"] = await _transfer(raw, str(get["url"]), "GET", data)
            took["bare get"] = await _transfer(raw, f"{bare.base}/blob?size={SIZE}", "GET", data)
            for label, t in took.items():
                if r:
                    samples[label].append(t)
    for label in ("put", "get"):
        mine, floor = median(samples[label]), median(samples[f"bare {label}"])
        rates = f"{SIZE / MIB / mine:.0f} vs {SIZE / MIB / floor:.0f} MiB/s"
        figures = f"{mine * 1000:.0f} vs {floor * 1000:.0f} ms ({rates}), {rounds} rounds"
        path = f"16 MiB {label.upper()} on a signed URL vs bare HTTP route"
        bench.add(Row(path, "sqlite", figures, mine / floor, None))


async def storage(bench: Bench) -> None:
    """Inline through MCP, then signed URLs."""
    await inline(bench)
    await signed_urls(bench)


AREAS = [("storage", storage)]

if __name__ == "__main__":
    sys.exit(run(AREAS, __doc__.splitlines()[0] if __doc__ else ""))
