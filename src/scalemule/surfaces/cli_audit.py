"""``scalemule audit``: verify, export and sign the audit log, as the local operator."""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import click

from scalemule.core import unit_of_work
from scalemule.core.errors import InvalidArgument
from scalemule.runtime import Runtime
from scalemule.settings import Settings
from scalemule.surfaces.cli_output import emit

# A verification that found a bad event, checkpoint or digest: a finding, not a failure of the command.
EXIT_TAMPERED = 12


class _Bar:
    """A progress bar on stderr when it is a terminal; silent when piped."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.shown = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if self.shown and total:
            filled = 30 * done // total
            bar = "#" * filled + "." * (30 - filled)
            click.echo(f"\r{self.label} [{bar}] {done}/{total} events", nl=False, err=True)
            if done >= total:
                click.echo(err=True)


async def _chains(runtime: Runtime, slug: str | None) -> list[tuple[str, str]]:
    """(chain, label) pairs: one tenant's chain by slug, or every chain (``--all``)."""
    from scalemule.core import audit_verify, tenants

    if slug is None:
        found = await audit_verify.chains(audit_verify.reader(runtime.db), runtime.blobs)
        return [(chain, chain) for chain in found]
    async with runtime.db.transaction() as conn:
        tenant = await tenants.find_for_operator(conn, slug)
    return [(tenant.id, slug)]


def _public_keys(values: tuple[str, ...]) -> dict[str, bytes]:
    from scalemule.core.audit_checkpoints import parse_public_keys

    keys: dict[str, bytes] = {}
    for value in values:
        text = Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value
        if text.lstrip().startswith("{"):  # the JSON 'scalemule audit public-key' prints
            text = "\n".join(f"{k['key_id']} {k['public_key']}" for k in json.loads(text)["keys"])
        keys |= parse_public_keys(text)
    return keys


def build(run: Any, require_schema: Any, settings_of: Any) -> click.Group:
    """The ``audit`` group; ``run(settings, body)`` opens a runtime, ``require_schema`` checks the store."""

    @click.group("audit")
    def audit() -> None:
        """Verify, export and sign the audit log."""

    @audit.command("verify")
    @click.option("--tenant", help="the tenant's chain (slug)")
    @click.option("--all", "every", is_flag=True, help="every chain, the global one included")
    @click.option("--from-seq", type=int, default=1, show_default=True, help="first sequence number (1: genesis)")
    @click.option("--to-seq", type=int, help="last sequence number (default: the head)")
    @click.option("--repair-digests", is_flag=True, help="rewrite missing digest objects of valid checkpoints")
    @click.option("--file", "path", help="verify an export offline (no database)")
    @click.option("--public-key", multiple=True, help="trusted key (base64, or a file); repeatable")
    def verify(
        tenant: str | None,
        every: bool,
        from_seq: int,
        to_seq: int | None,
        repair_digests: bool,
        path: str | None,
        public_key: tuple[str, ...],
    ) -> int:
        """Check hash chains, signed checkpoints and digest objects (exit 12 when something is wrong)."""
        from scalemule.core import audit_export, audit_verify

        if path is not None:
            if not public_key:
                raise InvalidArgument(
                    "--file needs --public-key", hint="Pass the keys 'scalemule audit public-key' prints."
                )
            keys = _public_keys(public_key)
            report = anyio.run(audit_export.verify_file, path, keys)
            emit({"ok": report.ok, "chains": [report.to_dict()]}, "json")
            return 0 if report.ok else EXIT_TAMPERED
        if (tenant is None) == (not every):
            raise InvalidArgument(
                "say which log to verify", hint="Pass --tenant SLUG, --all, or --file with --public-key."
            )
        settings: Settings = settings_of()

        async def body(runtime: Runtime) -> tuple[list[dict[str, Any]], int]:
            await require_schema(runtime, settings)
            results, repaired = [], 0
            for chain, label in await _chains(runtime, tenant):
                report, fixed = await audit_verify.verify_stored(
                    runtime.db, runtime.notary, chain, from_seq=from_seq, to_seq=to_seq,
                    progress=_Bar(label), repair_digests=repair_digests,
                )  # fmt: skip
                results.append({**report.to_dict(), "tenant": label})
                repaired += fixed
            if repaired:
                await unit_of_work.operator(runtime.db, "audit_repair_digests", {"repaired": repaired})[0].commit()
            return results, repaired

        results, repaired = run(settings, body)
        ok = all(r["ok"] for r in results)
        emit({"ok": ok, "chains": results} | ({"repaired_digests": repaired} if repair_digests else {}), "json")
        return 0 if ok else EXIT_TAMPERED

    @audit.command("export")
    @click.option("--tenant", required=True)
    @click.option("--since", help="ISO 8601, inclusive")
    @click.option("--until", help="ISO 8601, exclusive")
    @click.option("--format", "fmt", type=click.Choice(["jsonl", "ocsf"]), default="jsonl", show_default=True)
    @click.option("--output", help="write to this file instead of stdout")
    def export(tenant: str, since: str | None, until: str | None, fmt: str, output: str | None) -> int:
        """Stream a tenant's events with the checkpoints proving them."""
        from scalemule.core import audit_export

        def moment(text: str | None) -> datetime | None:
            return None if text is None else datetime.fromisoformat(text)

        settings: Settings = settings_of()

        async def body(runtime: Runtime, out: Any) -> None:
            await require_schema(runtime, settings)
            ((chain, _),) = await _chains(runtime, tenant)
            what = {"format": fmt, "since": since, "until": until}
            work, _ = unit_of_work.operator(runtime.db, "audit_export", what, tenant_id=chain, target=tenant)
            async with work.recorded():
                window = audit_export.Window(chain, tenant, moment(since), moment(until), fmt)
                async for line in audit_export.export(runtime.db, runtime.notary, window):
                    out.write(line + "\n")
                await work.commit()

        with contextlib.ExitStack() as stack:
            out = sys.stdout if output is None else stack.enter_context(open(output, "w", encoding="utf-8"))
            run(settings, lambda runtime: body(runtime, out))
        return 0

    @audit.command("public-key")
    def public_key() -> int:
        """Print every checkpoint verification key."""
        import base64

        from scalemule.core.audit_checkpoints import SigningKeys

        signing = SigningKeys(settings_of().data_dir)
        current = signing.current()[0] if signing.from_environment or signing.path.is_file() else None
        keys = [
            {"key_id": kid, "public_key": base64.b64encode(raw).decode(), "current": kid == current}
            for kid, raw in signing.public_keys().items()
        ]
        emit({"keys": keys}, "json")
        return 0

    @audit.command("rotate-signing-key")
    def rotate_signing_key() -> int:
        """Sign with a new key; old ones keep verifying."""
        from scalemule.core.audit_checkpoints import SigningKeys

        settings: Settings = settings_of()

        async def body(runtime: Runtime) -> dict[str, str]:
            await require_schema(runtime, settings)
            work, trace = unit_of_work.operator(runtime.db, "audit_rotate_signing_key")
            async with work.recorded():
                signing = SigningKeys(settings.data_dir)
                trace.args.update(previous_key_id=signing.current()[0], key_id=signing.rotate())
                await work.commit()
            return dict(trace.args)

        emit(run(settings, body), "json")
        return 0

    return audit
