"""What a Python worker's handlers see: the registry of handlers by kind and the per-job context."""

from __future__ import annotations

import base64
import importlib
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from scalemule.settings import Settings

Handler = Callable[[Any, "JobContext"], Awaitable[Any]]


class PermanentError(Exception):
    """Raise from a handler when retrying cannot help: the job is dead at once, with this message."""


class ToolError(Exception):
    """A tool called from a handler (``JobContext.call``) answered with an error."""

    def __init__(self, code: str, message: str, hint: str | None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.hint = code, message, hint


class Handlers:
    """Async handlers by job kind.

    Example:
        ``handlers = Handlers()``, then ``@handlers("describe_dishes")`` on
        ``async def describe(payload, ctx): ...``; run with ``scalemule worker --handlers app.jobs``.
    """

    def __init__(self, by_kind: Mapping[str, Handler] | None = None) -> None:
        self._by_kind: dict[str, Handler] = dict(by_kind or {})

    def __call__(self, kind: str) -> Callable[[Handler], Handler]:
        """Decorator registering the function as the handler of ``kind``."""

        def register(handler: Handler) -> Handler:
            self.register(kind, handler)
            return handler

        return register

    def register(self, kind: str, handler: Handler) -> None:
        """Register ``handler`` for ``kind``.

        Raises:
            ValueError: ``kind`` already has a handler.
        """
        if kind in self._by_kind:
            raise ValueError(f"kind {kind!r} already has a handler")
        self._by_kind[kind] = handler

    def get(self, kind: str) -> Handler | None:
        """The handler of ``kind``, if any."""
        return self._by_kind.get(kind)

    def kinds(self) -> list[str]:
        """Every kind with a handler, sorted."""
        return sorted(self._by_kind)


def load_handlers(spec: str) -> Handlers:
    """The handlers named by ``module[:attr]`` (attr defaults to ``handlers``): a ``Handlers`` or a mapping
    of kind to handler. Modules are also looked up from the current directory, as a script's would be.

    Raises:
        ValueError: the attribute is missing or holds no handlers.
    """
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found = getattr(importlib.import_module(module_name), attr or "handlers", None)
    if isinstance(found, Handlers):
        handlers = found
    elif isinstance(found, Mapping):
        handlers = Handlers(found)
    else:
        raise ValueError(f"{spec}: expected a scalemule.worker.Handlers or a dict of kind -> async handler")
    if not handlers.kinds():
        raise ValueError(f"{spec}: no handlers registered")
    return handlers


Call = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
Progress = Callable[[float, str | None], Awaitable[None]]


@dataclass
class JobContext:
    """One attempt of one job, as its handler sees it.

    Attributes:
        job_id: the job.
        kind: its kind.
        attempt: this attempt's number, from 1.
        max_attempts: attempts allowed in all.
        tenant_id: the worker's tenant, where every ``call`` acts.
        settings: the worker's configuration.
        cancelled: set when cancellation of the job was requested (seen on a heartbeat), or when the
            worker lost its lease: stop soon and return or raise.
    """

    job_id: str
    kind: str
    attempt: int
    max_attempts: int
    tenant_id: str
    settings: Settings
    _call: Call
    _progress: Progress
    cancelled: anyio.Event = field(default_factory=anyio.Event)

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress (0..1, clamped) and a short message; it also extends the lease."""
        await self._progress(min(max(fraction, 0.0), 1.0), message)

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        """Call a ScaleMule tool as the worker (authorized and audited as any call).

        Raises:
            ToolError: the tool answered with an error.
        """
        return await self._call(tool, arguments)

    async def config_get(self, env: str, key: str) -> Any:
        """The value of config ``key`` in ``env``."""
        return (await self.call("config_get", env=env, key=key))["value"]

    async def secret(self, env: str, name: str) -> str:
        """The value of secret ``name`` in ``env``, revealed with the worker's key: it needs a grant
        naming the secret (grants_create) or a role that reveals.

        Raises:
            ToolError: ``permission_denied`` when no grant or role covers it.
        """
        return str((await self.call("secrets_reveal", env=env, name=name))["value"])

    async def get_object(self, key: str, *, max_bytes: int = 16 << 20) -> bytes:
        """An object's bytes (up to ``max_bytes``)."""
        found = await self.call("storage_get_object", key=key, max_bytes=max_bytes)
        content = str(found["content"])
        return content.encode() if found["encoding"] == "text" else base64.b64decode(content)

    async def put_object(self, key: str, data: bytes | str, *, content_type: str | None = None) -> dict[str, Any]:
        """Store ``data`` at ``key``; returns its key, size, sha256 and etag."""
        if isinstance(data, str):
            args: dict[str, Any] = {"key": key, "content": data, "encoding": "text"}
        else:
            args = {"key": key, "content": base64.b64encode(data).decode(), "encoding": "base64"}
        if content_type is not None:
            args["content_type"] = content_type
        return await self.call("storage_put_object", **args)
