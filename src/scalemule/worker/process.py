"""``scalemule worker``: one worker process, stopped cleanly by SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import sys

import anyio

from scalemule.runtime import Runtime
from scalemule.settings import Settings
from scalemule.worker.handlers import load_handlers
from scalemule.worker.runner import Worker, WorkerOptions

log = logging.getLogger("scalemule.worker")


async def _stop_on_signals(stop: anyio.Event, force: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for received in signals:
            if stop.is_set():
                log.warning("second %s: stopping now", signal.Signals(received).name)
                force.cancel()
                return
            log.info("%s: no more claims; letting running jobs finish", signal.Signals(received).name)
            stop.set()


async def run(settings: Settings, handlers_spec: str, options: WorkerOptions) -> None:
    """Run a worker over ``settings``'s store with its key until a signal stops it.

    Raises:
        ValueError: the handlers cannot be loaded.
        ToolError: the key cannot act as a worker.
    """
    if not settings.api_key:
        raise ValueError("set SCALEMULE_API_KEY to the worker's key (a principal holding jobs:work)")
    handlers = load_handlers(handlers_spec)
    runtime = Runtime.open(settings)
    stop = anyio.Event()
    try:
        with anyio.CancelScope() as force:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_stop_on_signals, stop, force)
                await Worker(runtime, settings.api_key, handlers, options).run(stop)
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await runtime.close()


def configure_logging() -> None:
    """Worker lifecycle lines (jobs started and finished, store faults) on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("scalemule")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
