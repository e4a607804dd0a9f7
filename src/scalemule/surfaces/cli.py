"""The ``scalemule`` command. Async is the truth; this edge bridges once with ``anyio.run``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from scalemule import __version__
from scalemule.core import audit_checkpoints, bootstrap, crypto, identity, secrets, unit_of_work
from scalemule.core.errors import InvalidArgument, ScaleMuleError
from scalemule.core.identity import KeyRecord
from scalemule.core.pages import paginate
from scalemule.db import migrate
from scalemule.db.engine import Connection
from scalemule.dispatch import Dispatcher, Exposure, Invocation
from scalemule.operations import REGISTRY
from scalemule.operations.identity import KeyDetail
from scalemule.runtime import Runtime
from scalemule.settings import Settings
from scalemule.surfaces import schemas


class CliError(Exception):
    """A CLI failure printed as ``{"error": {...}}`` with a non-zero exit."""

    def __init__(self, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.body = {"code": code, "message": message, "hint": hint}


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def parse_pairs(pairs: list[str], raw_json: str | None) -> dict[str, Any]:
    """Tool arguments from ``key=value`` pairs (values parsed as JSON when they are) and ``--json``.

    Raises:
        InvalidArgument: a pair without ``=`` or ``--json`` that is not a JSON object.
    """
    args: dict[str, Any] = {}
    if raw_json is not None:
        try:
            loaded = json.loads(raw_json)
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser allows
            raise InvalidArgument(f"--json is not valid JSON: {exc}", hint="Pass a JSON object.") from None
        if not isinstance(loaded, dict):
            raise InvalidArgument("--json must be a JSON object", hint='e.g. --json \'{"name": "x"}\'')
        args.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"argument {pair!r} is not key=value", hint="e.g. name=worker limit=10")
        try:
            args[key] = json.loads(value)
        except (ValueError, RecursionError):
            args[key] = value
    return args


async def _with_runtime(settings: Settings, body: Any) -> Any:
    runtime = Runtime.open(settings)
    try:
        return await body(runtime)
    finally:
        await runtime.close()


async def _require_schema(runtime: Runtime) -> None:
    from sqlalchemy.exc import DBAPIError

    try:
        behind = await migrate.pending(runtime.db.engine)
    except (DBAPIError, OSError) as exc:
        raise CliError(
            "failed_precondition",
            f"cannot open the store: {type(exc).__name__}",
            "Check SCALEMULE_DATABASE_URL / SCALEMULE_DATA_DIR, or run 'scalemule init'.",
        ) from None
    if behind:
        raise CliError(
            "failed_precondition",
            "the store is missing or behind the current schema",
            "Run 'scalemule init' for a new store or 'scalemule migrate' for an existing one.",
        )


def private_dir(path: Path) -> None:
    """Create the data directory readable by its owner only (0700); an existing one is left as it is."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    private_dir(settings.data_dir)
    audit_checkpoints.create_signing_key_file(settings.data_dir)

    async def body(runtime: Runtime) -> bootstrap.Bootstrap:
        await migrate.upgrade(runtime.db.engine)
        return await bootstrap.initialize(runtime.db, slug=args.tenant, owner_email=args.owner)

    made = anyio.run(_with_runtime, settings, body)
    crypto.create_key_file(settings.data_dir)
    env = {"SCALEMULE_API_KEY": made.agent_token}
    if settings.database_url:
        env["SCALEMULE_DATABASE_URL"] = settings.database_url
    else:
        env["SCALEMULE_DATA_DIR"] = str(settings.data_dir.resolve())
    mcp_json = {"mcpServers": {"scalemule": {"command": "scalemule", "args": ["serve"], "env": env}}}
    tenant = {"id": made.tenant.id, "slug": made.tenant.slug, "name": made.tenant.name}
    if args.json:
        _print_json(
            {
                "tenant": tenant,
                "owner_key": made.owner_token,
                "agent_key": made.agent_token,
                "mcp_json": mcp_json,
            }
        )
        return 0
    print(f"Initialised ScaleMule in {settings.data_dir.resolve()} with tenant '{made.tenant.slug}'.\n")
    print(f"Owner ({made.owner.name}) key, shown once:  {made.owner_token}")
    print(f"Agent ({made.agent.name}) key, shown once: {made.agent_token}\n")
    print("Add this to your MCP client's configuration:")
    _print_json(mcp_json)
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.database_url:
        private_dir(settings.data_dir)

    async def body(runtime: Runtime) -> None:
        await migrate.upgrade(runtime.db.engine)

    anyio.run(_with_runtime, settings, body)
    print("migrations applied", file=sys.stderr)
    return 0


def cmd_call(args: argparse.Namespace, settings: Settings) -> int:
    arguments = parse_pairs(args.pairs, args.json)

    async def body(runtime: Runtime) -> Any:
        await _require_schema(runtime)
        dispatcher = Dispatcher(runtime, Exposure(toolsets=None))
        return await dispatcher.call(
            Invocation(
                args.tool,
                arguments,
                args.api_key or settings.api_key,
                "cli",
                client_name="scalemule-cli",
                client_version=__version__,
            )
        )

    outcome = anyio.run(_with_runtime, settings, body)
    if outcome.error is not None:
        error = outcome.error
        _print_json({"error": {"code": error.code, "message": error.message, "hint": error.hint}})
        return 1
    _print_json(outcome.result)
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from scalemule.surfaces.stdio import serve_stdio

    exposure = Exposure.parse(args.toolsets, read_only=args.read_only)

    async def body(runtime: Runtime) -> None:
        await _require_schema(runtime)
        dispatcher = Dispatcher(runtime, exposure)
        if args.transport == "http":
            import uvicorn

            from scalemule.surfaces.http import build_app

            config = uvicorn.Config(
                build_app(dispatcher, host=args.host), host=args.host, port=args.port, log_level="warning"
            )
            print(f"scalemule: serving MCP on http://{args.host}:{args.port}/mcp", file=sys.stderr, flush=True)
            await _with_job_maintenance(runtime, uvicorn.Server(config).serve)
            return
        key = settings.api_key
        try:
            async with runtime.db.transaction() as conn:
                await identity.authenticate(conn, key)
        except ScaleMuleError as exc:
            raise CliError(
                exc.code,
                f"cannot serve over stdio: {exc.message}",
                "Set SCALEMULE_API_KEY to a live key (see 'scalemule init').",
            ) from None
        assert key is not None
        await _with_job_maintenance(runtime, lambda: serve_stdio(dispatcher, key))

    anyio.run(_with_runtime, settings, body)
    return 0


async def _with_job_maintenance(runtime: Runtime, serve: Callable[[], Awaitable[None]]) -> None:
    """Run ``serve`` while rescuing expired job leases: whichever server or worker runs does it, no daemon."""
    from scalemule.worker.maintenance import rescue_forever

    async with anyio.create_task_group() as tg:
        tg.start_soon(rescue_forever, runtime)
        await serve()
        tg.cancel_scope.cancel()


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from scalemule.worker import ToolError, process
    from scalemule.worker.runner import WorkerOptions

    queues = tuple(q.strip() for q in args.queues.split(",") if q.strip()) if args.queues else None
    options = WorkerOptions(
        queues=queues, concurrency=args.concurrency, lease_seconds=args.lease_seconds, grace_seconds=args.grace_seconds
    )
    process.configure_logging()

    async def body(runtime: Runtime) -> None:
        await _require_schema(runtime)

    anyio.run(_with_runtime, settings, body)
    try:
        anyio.run(process.run, settings, args.handlers, options)
    except (ValueError, ImportError) as exc:
        raise CliError("invalid_argument", f"cannot start the worker: {exc}", "See docs/jobs.md.") from None
    except ToolError as exc:
        raise CliError(exc.code, f"cannot start the worker: {exc.message}", exc.hint) from None
    return 0


def cmd_config_export(args: argparse.Namespace, settings: Settings) -> int:
    arguments = {"tenant": args.tenant, "env": args.env, "format": args.format}

    async def body(runtime: Runtime) -> Any:
        await _require_schema(runtime)
        invocation = Invocation(
            "config_export",
            arguments,
            args.api_key or settings.api_key,
            "cli",
            client_name="scalemule-cli",
            client_version=__version__,
        )
        return await Dispatcher(runtime, Exposure(toolsets=None)).call(invocation)

    outcome = anyio.run(_with_runtime, settings, body)
    if outcome.error is not None:
        error = outcome.error
        _print_json({"error": {"code": error.code, "message": error.message, "hint": error.hint}})
        return 1
    sys.stdout.write(outcome.result["text"])
    return 0


def cmd_rotate_master_key(args: argparse.Namespace, settings: Settings) -> int:
    async def body(runtime: Runtime) -> tuple[int, int]:
        await _require_schema(runtime)
        return await secrets.rotate_master_key(runtime.db, runtime.keyring)

    version, count = anyio.run(_with_runtime, settings, body)
    _print_json({"master_key_version": version, "rewrapped": count})
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def body(runtime: Runtime) -> dict[str, Any]:
        await _require_schema(runtime)
        work, trace = unit_of_work.operator(runtime.db, "keys_revoke", {"key_id": args.key_id}, target=args.key_id)

        async def revoke(conn: Connection) -> tuple[KeyRecord, int]:
            record, count = await identity.revoke_key(conn, audience=None, key_id=args.key_id)
            owner = await identity.get_principal(conn, record.info.principal_id)
            # Recorded in the log of the tenant the key belonged to.
            trace.tenant_id = record.info.tenant_id or (owner.tenant_id if owner is not None else None)
            return record, count

        record, count = await work.run(revoke)
        return {"key": KeyDetail.of_record(record).model_dump(mode="json"), "revoked_keys": count}

    _print_json(anyio.run(_with_runtime, settings, body))
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    async def body(runtime: Runtime) -> dict[str, Any]:
        await _require_schema(runtime)
        async with runtime.db.transaction() as conn:
            page, cursor = await paginate(
                args.cursor,
                args.limit,
                lambda after, n: identity.list_keys(
                    conn, audience=None, principal_id=args.principal, tenant_id=args.tenant, after_id=after, limit=n
                ),
                lambda r: r.info.id,
            )
        return {"items": [KeyDetail.of_record(r).model_dump(mode="json") for r in page], "next_cursor": cursor}

    _print_json(anyio.run(_with_runtime, settings, body))
    return 0


def cmd_storage_sweep(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict
    from datetime import timedelta

    from scalemule.core.storage_sweep import sweep

    async def body(runtime: Runtime) -> Any:
        await _require_schema(runtime)
        grace = timedelta(minutes=args.grace_minutes)
        return await sweep(runtime.db, runtime.blobs, grace=grace, dry_run=args.dry_run)

    _print_json(asdict(anyio.run(_with_runtime, settings, body)))
    return 0


class _Bar:
    """A progress bar on stderr when it is a terminal; silent when piped."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.shown = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if self.shown and total:
            filled = 30 * done // total
            bar = "#" * filled + "." * (30 - filled)
            print(f"\r{self.label} [{bar}] {done}/{total} events", end="", file=sys.stderr, flush=True)
            if done >= total:
                print(file=sys.stderr)


async def _chains(runtime: Runtime, slug: str | None) -> list[tuple[str, str]]:
    """(chain, label) pairs: one tenant's chain by slug, or every chain (``--all``)."""
    from scalemule.core import audit_verify, tenants

    if slug is None:
        found = await audit_verify.chains(audit_verify.reader(runtime.db), runtime.blobs)
        return [(chain, chain) for chain in found]
    async with runtime.db.transaction() as conn:
        tenant = await tenants.find_for_operator(conn, slug)
    return [(tenant.id, slug)]


def _public_keys(values: list[str]) -> dict[str, bytes]:
    from scalemule.core.audit_checkpoints import parse_public_keys

    keys: dict[str, bytes] = {}
    for value in values:
        text = Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value
        if text.lstrip().startswith("{"):  # the JSON 'scalemule audit public-key' prints
            text = "\n".join(f"{k['key_id']} {k['public_key']}" for k in json.loads(text)["keys"])
        keys |= parse_public_keys(text)
    return keys


def cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from scalemule.core import audit_export, audit_verify

    if args.file is not None:
        if not args.public_key:
            raise InvalidArgument(
                "--file needs --public-key", hint="Pass the keys 'scalemule audit public-key' prints."
            )
        keys = _public_keys(args.public_key)
        with open(args.file, encoding="utf-8") as first, open(args.file, encoding="utf-8") as second:
            report = audit_export.verify_lines(first, second, keys)
        _print_json({"ok": report.ok, "chains": [report.to_dict()]})
        return 0 if report.ok else 1
    if (args.tenant is None) == (not args.all):
        raise InvalidArgument("say which log to verify", hint="Pass --tenant SLUG, --all, or --file with --public-key.")

    async def body(runtime: Runtime) -> tuple[list[dict[str, Any]], int]:
        await _require_schema(runtime)
        results, repaired = [], 0
        for chain, label in await _chains(runtime, args.tenant):
            report, fixed = await audit_verify.verify_stored(
                runtime.db, runtime.notary, chain, from_seq=args.from_seq, to_seq=args.to_seq,
                progress=_Bar(label), repair_digests=args.repair_digests,
            )  # fmt: skip
            results.append({**report.to_dict(), "tenant": label})
            repaired += fixed
        if repaired:
            await unit_of_work.operator(runtime.db, "audit_repair_digests", {"repaired": repaired})[0].commit()
        return results, repaired

    results, repaired = anyio.run(_with_runtime, settings, body)
    ok = all(r["ok"] for r in results)
    _print_json({"ok": ok, "chains": results} | ({"repaired_digests": repaired} if args.repair_digests else {}))
    return 0 if ok else 1


def cmd_audit_export(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import datetime

    from scalemule.core import audit_export

    def moment(text: str | None) -> datetime | None:
        return None if text is None else datetime.fromisoformat(text)

    async def body(runtime: Runtime, out: Any) -> None:
        await _require_schema(runtime)
        ((chain, _),) = await _chains(runtime, args.tenant)
        what = {"format": args.format, "since": args.since, "until": args.until}
        work, _ = unit_of_work.operator(runtime.db, "audit_export", what, tenant_id=chain, target=args.tenant)
        async with work.recorded():
            window = audit_export.Window(chain, args.tenant, moment(args.since), moment(args.until), args.format)
            async for line in audit_export.export(runtime.db, runtime.notary, window):
                out.write(line + "\n")
            await work.commit()

    with contextlib.ExitStack() as stack:
        out = sys.stdout if args.output is None else stack.enter_context(open(args.output, "w", encoding="utf-8"))
        anyio.run(_with_runtime, settings, lambda runtime: body(runtime, out))
    return 0


def cmd_audit_public_key(args: argparse.Namespace, settings: Settings) -> int:
    import base64

    from scalemule.core.audit_checkpoints import SigningKeys

    signing = SigningKeys(settings.data_dir)
    current = signing.current()[0] if signing.from_environment or signing.path.is_file() else None
    keys = [
        {"key_id": kid, "public_key": base64.b64encode(raw).decode(), "current": kid == current}
        for kid, raw in signing.public_keys().items()
    ]
    _print_json({"keys": keys})
    return 0


def cmd_audit_rotate_signing_key(args: argparse.Namespace, settings: Settings) -> int:
    from scalemule.core.audit_checkpoints import SigningKeys

    async def body(runtime: Runtime) -> dict[str, str]:
        await _require_schema(runtime)
        work, trace = unit_of_work.operator(runtime.db, "audit_rotate_signing_key")
        async with work.recorded():
            signing = SigningKeys(settings.data_dir)
            trace.args.update(previous_key_id=signing.current()[0], key_id=signing.rotate())
            await work.commit()
        return dict(trace.args)

    _print_json(anyio.run(_with_runtime, settings, body))
    return 0


def cmd_tools(args: argparse.Namespace, settings: Settings) -> int:
    for op in REGISTRY.values():
        if op.tool:
            summary = op.description.splitlines()[0] if op.description else ""
            print(f"{op.name:28} {op.toolset:9} {op.permission:16} {summary}")
    return 0


def cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    root = Path(args.root)
    if args.check:
        stale = schemas.drift(root)
        for path in stale:
            print(f"stale: {path}", file=sys.stderr)
        return 1 if stale else 0
    for path in schemas.write(root):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="scalemule", description="ScaleMule: the production backend for agent-built apps."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create the store, first tenant, owner and agent keys")
    p.add_argument("--tenant", default="main", help="slug of the first tenant (default: main)")
    p.add_argument("--owner", default="owner@localhost", help="email of the owner user")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_init)

    p = sub.add_parser("serve", help="serve MCP over stdio (default) or streamable HTTP")
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--toolsets", default="default", help="comma list ('default' = the default set) or 'all'")
    p.add_argument("--read-only", action="store_true", help="expose and allow only read-only tools")
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("worker", help="run Python job handlers: claim, heartbeat, complete (needs jobs:work)")
    p.add_argument("--handlers", required=True, metavar="MODULE[:ATTR]", help="handlers by kind (ATTR: handlers)")
    p.add_argument("--queues", help="comma list of queues to claim from (default: all)")
    p.add_argument("--concurrency", type=int, default=1, help="jobs run at once (default: 1)")
    p.add_argument("--lease-seconds", type=int, default=60, help="lease per claim (default: 60)")
    p.add_argument("--grace-seconds", type=float, default=30, help="on SIGTERM, time to finish (default: 30)")
    p.set_defaults(run=cmd_worker)

    p = sub.add_parser("call", help="run one operation through the dispatch path and print JSON")
    p.add_argument("tool")
    p.add_argument("pairs", nargs="*", metavar="key=value")
    p.add_argument("--json", help="arguments as a JSON object")
    p.add_argument("--api-key", help="API key (default: SCALEMULE_API_KEY)")
    p.set_defaults(run=cmd_call)

    config_parser = sub.add_parser("config", help="configuration for deployment").add_subparsers(
        dest="config_command", required=True
    )
    p = config_parser.add_parser("export", help="print an environment's config and secrets (needs secrets:reveal)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--env", required=True)
    p.add_argument("--format", choices=["dotenv", "json"], default="dotenv")
    p.add_argument("--api-key", help="API key (default: SCALEMULE_API_KEY)")
    p.set_defaults(run=cmd_config_export)

    secrets_parser = sub.add_parser("secrets", help="secret storage maintenance").add_subparsers(
        dest="secrets_command", required=True
    )
    p = secrets_parser.add_parser(
        "rotate-master-key", help="re-wrap every data key under a new master key version (online)"
    )
    p.set_defaults(run=cmd_rotate_master_key)

    keys_parser = sub.add_parser("keys", help="API keys, as the local operator").add_subparsers(
        dest="keys_command", required=True
    )
    p = keys_parser.add_parser("revoke", help="revoke a key and every key minted from it (audited)")
    p.add_argument("key_id")
    p.set_defaults(run=cmd_keys_revoke)
    p = keys_parser.add_parser("list", help="list keys (metadata only) across the store")
    p.add_argument("--principal", help="only this principal's keys")
    p.add_argument("--tenant", help="only keys bound to this tenant id (slugs name tenants per member)")
    p.add_argument("--limit", type=int, default=100, choices=range(1, 1001), metavar="1-1000")
    p.add_argument("--cursor", help="next_cursor of the previous page")
    p.set_defaults(run=cmd_keys_list)

    storage_parser = sub.add_parser("storage", help="object storage maintenance").add_subparsers(
        dest="storage_command", required=True
    )
    p = storage_parser.add_parser("sweep", help="delete blobs no object references and aborted uploads")
    p.add_argument("--grace-minutes", type=float, default=60, help="spare blobs younger than this (default: 60)")
    p.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    p.set_defaults(run=cmd_storage_sweep)

    _audit_parsers(sub)
    sub.add_parser("tools", help="list the operations").set_defaults(run=cmd_tools)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(run=cmd_migrate)

    p = sub.add_parser("schemas", help="regenerate tool_schemas/ and docs/tools.md")
    p.add_argument("--check", action="store_true", help="fail if the generated files are stale")
    p.add_argument("--root", default=".", help="repository root (default: .)")
    p.set_defaults(run=cmd_schemas)
    return parser


def _audit_parsers(sub: Any) -> None:
    audit_parser = sub.add_parser("audit", help="verify, export and sign the audit log").add_subparsers(
        dest="audit_command", required=True
    )
    p = audit_parser.add_parser("verify", help="check hash chains, signed checkpoints and digest objects")
    p.add_argument("--tenant", help="the tenant's chain (slug)")
    p.add_argument("--all", action="store_true", help="every chain, the global one included")
    p.add_argument("--from-seq", type=int, default=1, help="first sequence number (default: 1, genesis)")
    p.add_argument("--to-seq", type=int, help="last sequence number (default: the head)")
    p.add_argument("--repair-digests", action="store_true", help="rewrite missing digest objects of valid checkpoints")
    p.add_argument("--file", help="verify an export offline (no database)")
    p.add_argument("--public-key", action="append", default=[], help="trusted key (base64, or a file); repeatable")
    p.set_defaults(run=cmd_audit_verify)
    p = audit_parser.add_parser("export", help="stream a tenant's events with the checkpoints proving them")
    p.add_argument("--tenant", required=True)
    p.add_argument("--since", help="ISO 8601, inclusive")
    p.add_argument("--until", help="ISO 8601, exclusive")
    p.add_argument("--format", choices=["jsonl", "ocsf"], default="jsonl")
    p.add_argument("--output", help="write to this file instead of stdout")
    p.set_defaults(run=cmd_audit_export)
    audit_parser.add_parser("public-key", help="print every checkpoint verification key").set_defaults(
        run=cmd_audit_public_key
    )
    audit_parser.add_parser("rotate-signing-key", help="sign with a new key; old ones keep verifying").set_defaults(
        run=cmd_audit_rotate_signing_key
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scalemule`` command."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # key=value pairs may follow options: `scalemule call whoami --api-key K tenant=x`.
        if args.command != "call" or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.pairs += extra
    try:
        return int(args.run(args, Settings.from_env()))
    except ScaleMuleError as exc:
        body = {"code": exc.code, "message": exc.message, "hint": exc.hint}
    except CliError as exc:
        body = exc.body
    if args.command in ("serve", "worker"):
        # stdout is the protocol channel on stdio: the operator reads stderr.
        print(f"scalemule: {body['code']}: {body['message']} {body['hint'] or ''}", file=sys.stderr)
        return 2
    _print_json({"error": body})
    return 1


if __name__ == "__main__":
    sys.exit(main())
