"""The ``scalemule`` command, built on click. Async is the truth; this edge bridges once with ``anyio.run``.

Exit statuses, output formats and the ``call`` conventions are documented in docs/operations.md and
docs/errors.md; ``cli_call`` generates one ``call`` subcommand per registry operation.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import click

from scalemule import __version__
from scalemule.core import audit_checkpoints, bootstrap, crypto, identity, secrets, unit_of_work
from scalemule.core.errors import ScaleMuleError
from scalemule.core.identity import KeyRecord
from scalemule.core.pages import paginate
from scalemule.db import migrate
from scalemule.db.engine import Connection
from scalemule.dispatch import DEFAULT_TOOLS, Dispatcher, Exposure, Invocation
from scalemule.operations import REGISTRY, Operation
from scalemule.operations.identity import KeyDetail
from scalemule.runtime import Runtime
from scalemule.settings import Settings, env_name
from scalemule.surfaces import cli_audit, schemas
from scalemule.surfaces.cli_call import SuggestingGroup, ToolGroup, parse_pairs
from scalemule.surfaces.cli_output import EXIT_CODES, FORMATS, CliError, chosen_format, emit, emit_error, out, progress
from scalemule.surfaces.console import loading

if TYPE_CHECKING:
    from scalemule.worker.server_tasks import TaskRunner

__all__ = ["EXIT_CODES", "CliError", "app", "main", "parse_pairs"]

FORMAT_OPTION = click.option("--format", "fmt", type=click.Choice(FORMATS), help="default: table on a terminal")
API_KEY_OPTION = click.option("--api-key", metavar="KEY", help="API key (default: SCALEMULE_API_KEY)")


def store_label(settings: Settings) -> str:
    """Where the store is, for messages: the SQLite file, or the database URL without its password."""
    if settings.database_url is None:
        return str((settings.data_dir / "scalemule.db").resolve())
    from sqlalchemy.engine import make_url

    try:
        return make_url(settings.database_url).render_as_string(hide_password=True)
    except Exception:  # a URL too malformed to parse: name the setting instead of echoing it
        return "SCALEMULE_DATABASE_URL (unparseable)"


async def _with_runtime(settings: Settings, body: Any) -> Any:
    runtime = Runtime.open(settings)
    try:
        return await body(runtime)
    finally:
        await runtime.close()


def _run(settings: Settings, body: Any) -> Any:
    return anyio.run(_with_runtime, settings, body)


async def _require_schema(runtime: Runtime, settings: Settings) -> None:
    from sqlalchemy.exc import DBAPIError

    where = store_label(settings)
    setting = "SCALEMULE_DATABASE_URL" if settings.database_url else "SCALEMULE_DATA_DIR"
    try:
        behind = await migrate.pending(runtime.db)
    except (DBAPIError, OSError) as exc:
        raise CliError(
            "failed_precondition",
            f"cannot open the store at {where}: {type(exc).__name__}",
            f"Check {setting}; a new store is made with 'scalemule init'.",
        ) from None
    if behind:
        raise CliError(
            "failed_precondition",
            f"the store at {where} is missing or behind the current schema",
            f"Set {setting} to the store 'scalemule init' made, run 'scalemule init' for a new store, "
            "or 'scalemule migrate' for an existing one.",
        )


def private_dir(path: Path) -> None:
    """Create the data directory readable by its owner only (0700); an existing one is left as it is."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _settings() -> Settings:
    return Settings.from_env()


def _dispatch(settings: Settings, name: str, arguments: dict[str, Any], api_key: str | None) -> Any:
    async def body(runtime: Runtime) -> Any:
        await _require_schema(runtime, settings)
        invocation = Invocation(
            name,
            arguments,
            api_key or settings.api_key,
            "cli",
            client_name="scalemule-cli",
            client_version=__version__,
        )
        return await Dispatcher(runtime, Exposure(toolsets=None)).call(invocation)

    outcome = _run(settings, body)
    if outcome.error is not None:
        raise CliError(outcome.error.code, outcome.error.message, outcome.error.hint)
    return outcome.result


@click.group(cls=SuggestingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="scalemule", message="%(prog)s %(version)s")
@click.option(
    "--format", "output_format", type=click.Choice(FORMATS), help="output format (default: table on a terminal)"
)
def app(output_format: str | None) -> None:
    """ScaleMule: the production backend for agent-built apps."""


def _executable() -> str:
    """The absolute path of this command, so a client whose PATH lacks the venv still starts it."""
    beside = Path(sys.executable).parent / "scalemule"
    if beside.is_file():
        return str(beside)
    return str(Path(sys.argv[0]).resolve())


def client_env(settings: Settings, agent_token: str) -> tuple[dict[str, str], list[str]]:
    """The environment a client must give ``scalemule serve``, and the settings it must add by hand.

    Every setting in force is carried (the data directory always, absolute: blobs and key files live
    there on PostgreSQL too); the master key, whose value is never printed, is named instead.
    """
    # Key material set in the environment: the client needs it too, but it is not pasted into files.
    held_back = {crypto.MASTER_KEY_ENV, env_name("audit_signing_key")}
    known = {env_name(name) for name in Settings.model_fields} - {env_name("api_key")} - held_back
    env = {env_name("api_key"): agent_token}
    env |= {name: value for name, value in sorted(os.environ.items()) if name in known and value}
    env[env_name("data_dir")] = str(settings.data_dir.resolve())
    missing = sorted(name for name in held_back if os.environ.get(name))
    return env, missing


@app.command()
@click.option("--tenant", default="main", show_default=True, help="slug of the first tenant")
@click.option("--owner", default="owner@localhost", show_default=True, help="email of the owner user")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def init(tenant: str, owner: str, as_json: bool) -> int:
    """Create the store, the first tenant, owner and agent keys; print an MCP client configuration."""
    settings = _settings()
    private_dir(settings.data_dir)
    audit_checkpoints.create_signing_key_file(settings.data_dir)

    async def body(runtime: Runtime) -> bootstrap.Bootstrap:
        await migrate.upgrade(runtime.db.engine)
        return await bootstrap.initialize(runtime.db, slug=tenant, owner_email=owner)

    made = _run(settings, body)
    crypto.create_key_file(settings.data_dir)
    env, missing = client_env(settings, made.agent_token)
    mcp_json = {"mcpServers": {"scalemule": {"command": _executable(), "args": ["serve"], "env": env}}}
    view = {"id": made.tenant.id, "slug": made.tenant.slug, "name": made.tenant.name}
    if as_json:
        emit(
            {"tenant": view, "owner_key": made.owner_token, "agent_key": made.agent_token, "mcp_json": mcp_json}, "json"
        )
    else:
        out(f"Initialised ScaleMule in {settings.data_dir.resolve()} with tenant '{made.tenant.slug}'.\n")
        out(f"Owner ({made.owner.name}) key, shown once:  {made.owner_token}")
        out(f"Agent ({made.agent.name}) key, shown once: {made.agent_token}\n")
        out("Add this to your MCP client's configuration:")
        emit(mcp_json, "json")
    for name in missing:
        click.echo(f"scalemule: also give the client {name} (not printed: it is key material).", err=True)
    return 0


@app.command("migrate")
def migrate_cmd() -> int:
    """Apply database migrations."""
    settings = _settings()
    if not settings.database_url:
        private_dir(settings.data_dir)

    async def body(runtime: Runtime) -> None:
        await migrate.upgrade(runtime.db.engine)

    _run(settings, body)
    click.echo("migrations applied", err=True)
    return 0


def _call(op: Operation, arguments: dict[str, Any], api_key: str | None, fmt: str | None) -> None:
    try:
        result = _dispatch(_settings(), op.name, arguments, api_key)
    except CliError as exc:
        emit_error(exc.body, fmt)
        raise click.exceptions.Exit(exc.exit_code) from None
    except ScaleMuleError as exc:
        emit_error({"code": exc.code, "message": exc.message, "hint": exc.hint}, fmt)
        raise click.exceptions.Exit(EXIT_CODES.get(exc.code, 1)) from None
    emit(result, fmt)


app.add_command(
    ToolGroup(
        _call,
        name="call",
        help="Run one operation through the dispatch path. 'scalemule call TOOL --help' lists its arguments.",
        params=[click.Option(["--api-key"], metavar="KEY", help="API key (default: SCALEMULE_API_KEY)")],
        callback=lambda api_key: click.get_current_context().ensure_object(dict).update(api_key=api_key),
    )
)


def _stdio_banner(settings: Settings, who: identity.Authenticated) -> None:
    if sys.stderr.isatty():
        tenant = who.bound[0].slug if who.bound is not None else "none"
        click.echo(
            f"scalemule {__version__} serving MCP over stdio · store {store_label(settings)} · tenant {tenant}",
            err=True,
        )


@app.command()
@click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--toolsets", default="default", show_default=True, help="comma list, 'default' or 'all'")
@click.option("--read-only", is_flag=True, help="expose and allow only read-only tools")
def serve(transport: str, host: str, port: int, toolsets: str, read_only: bool) -> int:
    """Serve MCP over stdio (default) or streamable HTTP. Errors go to stderr: stdout is the protocol."""
    with loading():
        from scalemule.surfaces.stdio import serve_stdio
        from scalemule.worker.server_tasks import TaskRunner

    settings = _settings()

    async def body(runtime: Runtime) -> None:
        exposure = Exposure.parse(toolsets, read_only=read_only)
        await _require_schema(runtime, settings)
        dispatcher = Dispatcher(runtime, exposure)
        runner = TaskRunner(dispatcher)
        if transport == "http":
            with loading():
                from scalemule.surfaces.http import build_app, serve_http
        # What is loaded by now (modules, models, tables) lives as long as the server: frozen, the
        # collector never walks it again, neither in the pauses of a busy server nor at exit, where
        # it cost half a second.
        gc.freeze()
        if transport == "http":
            app = build_app(dispatcher, host=host)
            click.echo(f"scalemule: serving MCP on http://{host}:{port}/mcp", err=True)
            click.echo(settings.signing_notice(), err=True)
            await _with_job_maintenance(runner, lambda: serve_http(app, host=host, port=port, before_exit=runner.stop))
            return
        key = settings.api_key
        try:
            async with runtime.db.transaction() as conn:
                who = await identity.authenticate(conn, key)
        except ScaleMuleError as exc:
            raise CliError(
                exc.code,
                f"cannot serve over stdio: {exc.message}",
                "Set SCALEMULE_API_KEY to a live key (see 'scalemule init').",
            ) from None
        assert key is not None
        _stdio_banner(settings, who)
        await _with_job_maintenance(runner, lambda: serve_stdio(dispatcher, key))

    settings = settings.for_http(host, port) if transport == "http" else settings
    return _to_stderr(lambda: _run(settings, body))


def _to_stderr(body: Callable[[], Any]) -> int:
    """Run a long-lived command whose errors go to stderr only (stdout may be a protocol channel)."""
    try:
        body()
    except (ScaleMuleError, CliError) as exc:
        code, message, hint = (
            (exc.code, exc.message, exc.hint) if isinstance(exc, ScaleMuleError) else tuple(exc.body.values())
        )
        click.echo(f"scalemule: {code}: {message} {hint or ''}".rstrip(), err=True)
        return EXIT_CODES.get(str(code), 1)
    return 0


async def _with_job_maintenance(runner: TaskRunner, serve: Callable[[], Awaitable[None]]) -> None:
    """Run ``serve`` while rescuing expired job leases and running the server's tasks (MCP Tasks of
    operations such as audit_verify): whichever server or worker runs does it, no daemon. On the way
    out, running tasks are handed back for another server to finish."""
    from scalemule.worker.maintenance import rescue_forever

    async with anyio.create_task_group() as tg:
        tg.start_soon(rescue_forever, runner.runtime)
        tg.start_soon(runner.run)
        await serve()
        await runner.stop()
        tg.cancel_scope.cancel()


@app.command()
@click.option("--handlers", required=True, metavar="MODULE[:ATTR]", help="handlers by kind (ATTR: handlers)")
@click.option("--queues", help="comma list of queues to claim from (default: all)")
@click.option("--concurrency", type=int, default=1, show_default=True, help="jobs run at once")
@click.option("--lease-seconds", type=int, default=60, show_default=True, help="lease per claim")
@click.option("--grace-seconds", type=float, default=30, show_default=True, help="on SIGTERM, time to finish")
def worker(
    handlers: str, queues: str | None, concurrency: int, lease_seconds: int, grace_seconds: float
) -> int:  # pragma: no cover - exercised through the installed command
    """Run Python job handlers: claim, heartbeat, complete (needs jobs:work)."""
    from scalemule.worker import ToolError, process
    from scalemule.worker.runner import WorkerOptions

    names = tuple(q.strip() for q in queues.split(",") if q.strip()) if queues else None
    options = WorkerOptions(
        queues=names, concurrency=concurrency, lease_seconds=lease_seconds, grace_seconds=grace_seconds
    )
    process.configure_logging()
    settings = _settings()

    def body() -> None:
        async def check(runtime: Runtime) -> None:
            await _require_schema(runtime, settings)

        _run(settings, check)
        try:
            anyio.run(process.run, settings, handlers, options)
        except (ValueError, ImportError) as exc:
            raise CliError("invalid_argument", f"cannot start the worker: {exc}", "See docs/jobs.md.") from None
        except ToolError as exc:
            raise CliError(exc.code, f"cannot start the worker: {exc.message}", exc.hint) from None

    return _to_stderr(body)


@app.group(cls=SuggestingGroup)
def config() -> None:
    """Configuration for deployment."""


@config.command("export")
@click.option("--tenant")
@click.option("--env", "env_name", required=True)
@click.option("--format", "fmt", type=click.Choice(["dotenv", "json"]), default="dotenv", show_default=True)
@API_KEY_OPTION
def config_export(tenant: str | None, env_name: str, fmt: str, api_key: str | None) -> int:
    """Print an environment's config and secrets (needs secrets:reveal; audited as a reveal)."""
    arguments = {"env": env_name, "format": fmt} | ({"tenant": tenant} if tenant else {})
    result = _dispatch(_settings(), "config_export", arguments, api_key)
    out(result["text"], nl=False)
    return 0


def parse_dotenv(text: str) -> dict[str, str]:
    """Read the dotenv ``config_export`` writes: ``NAME=value``, quoted values are JSON strings."""
    import json

    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name] = json.loads(value) if value.startswith('"') else value
    return values


@app.command(context_settings={"allow_interspersed_args": False})
@click.option("--env", "env_name", required=True, help="environment whose config and secrets to pass")
@click.option("--tenant", help="tenant slug (default: the key's tenant)")
@API_KEY_OPTION
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(env_name: str, tenant: str | None, api_key: str | None, command: tuple[str, ...]) -> int:
    """Run COMMAND with an environment's config values and secrets as environment variables.

    Reads them as the caller (needs secrets:reveal; audited as a reveal) and writes nothing to disk.
    Names follow the dotenv export (db.url -> DB_URL). Exits with COMMAND's status.

    Example: scalemule run --env dev -- python app.py
    """
    arguments = {"env": env_name, "format": "dotenv"} | ({"tenant": tenant} if tenant else {})
    result = _dispatch(_settings(), "config_export", arguments, api_key)
    child_env = os.environ | parse_dotenv(result["text"])
    try:
        done = subprocess.run(list(command), env=child_env, check=False)
    except OSError as exc:
        emit_error({"code": "not_found", "message": f"cannot start {command[0]!r}: {exc.strerror}", "hint": None})
        return 127
    # A child killed by a signal: the shell's convention, 128 + signal number.
    return done.returncode if done.returncode >= 0 else 128 - done.returncode


@app.group("secrets", cls=SuggestingGroup)
def secrets_cmd() -> None:
    """Secret storage maintenance."""


@secrets_cmd.command("rotate-master-key")
@FORMAT_OPTION
def rotate_master_key(fmt: str | None) -> int:
    """Re-wrap every data key under a new master key version (online)."""
    settings = _settings()

    async def body(runtime: Runtime) -> tuple[int, int]:
        await _require_schema(runtime, settings)
        with progress("re-wrapping data keys") as advance:
            return await secrets.rotate_master_key(runtime.db, runtime.keyring, progress=advance)

    version, count = _run(settings, body)
    emit({"master_key_version": version, "rewrapped": count}, fmt)
    return 0


@app.group(cls=SuggestingGroup)
def keys() -> None:
    """API keys, as the local operator."""


@keys.command("revoke")
@click.argument("key_id")
@FORMAT_OPTION
def keys_revoke(key_id: str, fmt: str | None) -> int:
    """Revoke a key and every key minted from it (audited)."""
    settings = _settings()

    async def body(runtime: Runtime) -> dict[str, Any]:
        await _require_schema(runtime, settings)
        work, trace = unit_of_work.operator(runtime.db, "keys_revoke", {"key_id": key_id}, target=key_id)

        async def revoke(conn: Connection) -> tuple[KeyRecord, int]:
            record, count = await identity.revoke_key(conn, audience=None, key_id=key_id)
            owner = await identity.get_principal(conn, record.info.principal_id)
            # Recorded in the log of the tenant the key belonged to.
            trace.tenant_id = record.info.tenant_id or (owner.tenant_id if owner is not None else None)
            return record, count

        record, count = await work.run(revoke)
        return {"key": KeyDetail.of_record(record).model_dump(mode="json"), "revoked_keys": count}

    emit(_run(settings, body), fmt)
    return 0


@keys.command("list")
@click.option("--principal", help="only this principal's keys")
@click.option("--tenant", help="only keys bound to this tenant id (slugs name tenants per member)")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--cursor", help="next_cursor of the previous page")
@FORMAT_OPTION
def keys_list(principal: str | None, tenant: str | None, limit: int, cursor: str | None, fmt: str | None) -> int:
    """List keys (metadata only) across the store."""
    settings = _settings()

    async def body(runtime: Runtime) -> dict[str, Any]:
        await _require_schema(runtime, settings)
        async with runtime.db.transaction() as conn:
            page, after = await paginate(
                cursor,
                limit,
                lambda last, n: identity.list_keys(
                    conn, audience=None, principal_id=principal, tenant_id=tenant, after_id=last, limit=n
                ),
                lambda r: r.info.id,
            )
        return {"items": [KeyDetail.of_record(r).model_dump(mode="json") for r in page], "next_cursor": after}

    emit(_run(settings, body), fmt)
    return 0


@app.group(cls=SuggestingGroup)
def storage() -> None:
    """Object storage maintenance."""


@storage.command("sweep")
@click.option("--grace-minutes", type=float, default=60, show_default=True, help="spare blobs younger than this")
@click.option("--dry-run", is_flag=True, help="count what would be deleted, delete nothing")
@FORMAT_OPTION
def storage_sweep(grace_minutes: float, dry_run: bool, fmt: str | None) -> int:
    """Delete blobs no object references and aborted uploads."""
    from dataclasses import asdict
    from datetime import timedelta

    from scalemule.core.storage_sweep import sweep

    settings = _settings()

    async def body(runtime: Runtime) -> Any:
        await _require_schema(runtime, settings)
        with progress("sweeping blobs") as advance:
            grace = timedelta(minutes=grace_minutes)
            return await sweep(runtime.db, runtime.blobs, grace=grace, dry_run=dry_run, progress=advance)

    emit(asdict(_run(settings, body)), fmt)
    return 0


# A full stop ends a sentence when the next word starts one (not after "e.g." or "i.e.").
_SENTENCE_END = re.compile(r"(?<!e\.g\.)(?<!i\.e\.)(?<=[.!?])\s+(?=[A-Z])")


def first_sentence(text: str) -> str:
    """The first sentence of a description, whole (its first paragraph when it has no full stop)."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    return _SENTENCE_END.split(paragraph, maxsplit=1)[0]


@app.command()
@FORMAT_OPTION
def tools(fmt: str | None) -> int:
    """List the tools by toolset, with their permission; '*' marks the default tool list."""
    ops = sorted((op for op in REGISTRY.values() if op.tool), key=lambda op: (op.toolset, op.name))
    rows = [
        {
            "name": op.name,
            "toolset": op.toolset,
            "default": op.name in DEFAULT_TOOLS,
            "permission": op.permission,
            "summary": first_sentence(op.description),
        }
        for op in ops
    ]
    if chosen_format(fmt) == "json":
        emit(rows, "json")
        return 0
    for row in rows:
        mark = "*" if row["default"] else " "
        out(f"{row['name']:28} {mark} {row['toolset']:9} {row['permission']:16} {row['summary']}")
    return 0


@app.command("schemas")
@click.option("--check", is_flag=True, help="fail if the generated files are stale")
@click.option("--root", default=".", show_default=True, help="repository root")
def schemas_cmd(check: bool, root: str) -> int:
    """Regenerate tool_schemas/, docs/tools.md, the served schemas and the settings table."""
    if check:
        stale = schemas.drift(Path(root))
        for path in stale:
            click.echo(f"stale: {path}", err=True)
        return 1 if stale else 0
    for path in schemas.write(Path(root)):
        click.echo(f"wrote {path}", err=True)
    return 0


app.add_command(cli_audit.build(_run, _require_schema, _settings))


@app.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> int:
    """Print the shell completion script: eval "$(scalemule completion bash)" (or zsh, fish | source)."""
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None  # the three shells click ships
    out(completer(app, {}, "scalemule", "_SCALEMULE_COMPLETE").source())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scalemule`` command; returns the exit status (docs/errors.md)."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        status = app.main(args=argv, prog_name="scalemule", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except ScaleMuleError as exc:
        emit_error({"code": exc.code, "message": exc.message, "hint": exc.hint})
        return EXIT_CODES.get(exc.code, 1)
    except CliError as exc:
        emit_error(exc.body)
        return exc.exit_code
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
