"""Handlers for the chaos test's worker processes: each attempt logs its start and end to a per-process
file (the side effects the test counts), working a few milliseconds in between. Once the test drops a
``hold-<pid>`` file in the log directory, that process's handlers block after logging their start, so
the process is sure to hold leases when the test kills it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio

from scalemule.worker import Handlers, JobContext

handlers = Handlers()


def _log(event: str, ctx: JobContext) -> None:
    path = Path(os.environ["CHAOS_LOG_DIR"]) / f"{os.getpid()}.log"
    # One short O_APPEND write per line: lines from concurrent handlers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{event} {ctx.job_id} {ctx.attempt}\n".encode())
    finally:
        os.close(fd)


@handlers("count")
async def count(payload: Any, ctx: JobContext) -> Any:
    _log("start", ctx)
    if (Path(os.environ["CHAOS_LOG_DIR"]) / f"hold-{os.getpid()}").exists():
        await anyio.sleep_forever()
    await anyio.sleep(0.005)
    _log("end", ctx)
    return {"n": payload["n"]}
