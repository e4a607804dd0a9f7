"""The MenuGen walkthrough: an agent provisions the backend of a menu-generator app through ScaleMule.

Run it with ``make demo`` (or ``.venv/bin/python examples/menugen.py``). It creates a throwaway data
directory, runs ``scalemule init``, then drives ``scalemule serve`` over stdio with the official MCP
Python client, acting as the agent that ``init`` created. Every step prints the call and a compact
result; denied calls are expected where the walkthrough says so. The script exits non-zero if a step
that should succeed fails, or a step that should be denied is allowed.

Steps are plain async functions listed in ``STEPS``: identity and isolation, then configuration and
secrets, then object storage (including a download through a signed URL served by the HTTP surface),
then background jobs run by the app's worker (``scalemule worker`` with examples/menugen_worker.py and
the worker agent's own key), then the audit trail of it all.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import mcp_types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters

TENANT = "menugen"
OWNER_EMAIL = "chef@menugen.example"
WORKER_NAME = "menugen-worker"
# The worker role holds tenants:read and config:read too; the worker's key is narrowed to the
# queue and the object store, which is all the app's worker process touches.
WORKER_SCOPES = ["jobs:read", "jobs:work", "storage:read", "storage:write"]


class StepFailed(Exception):
    """A step did not get the answer the walkthrough expects."""


@dataclass
class Demo:
    """What the steps share: the MCP client, the keys from ``init`` and facts earlier steps found."""

    client: Client
    data_dir: Path
    owner_key: str
    agent_key: str
    public_port: int
    facts: dict[str, Any] = field(default_factory=dict)

    # --- calls ---------------------------------------------------------------------------------

    async def call(self, tool: str, args: dict[str, Any] | None = None) -> types.CallToolResult:
        """Call ``tool`` as the agent, printing the call."""
        args = args or {}
        shown = {k: _shown(tool, k, v) for k, v in args.items()}
        show(f"→ {tool} {_compact(shown)}")
        return await self.client.call_tool(tool, args)

    async def ok(self, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call ``tool`` and return its structured result; a tool error fails the step."""
        result = await self.call(tool, args)
        if result.is_error:
            raise StepFailed(f"{tool} should succeed but failed: {_text(result)}")
        return dict(result.structured_content or {})

    async def denied(self, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call ``tool`` and return its error body; anything but ``permission_denied`` fails the step."""
        result = await self.call(tool, args)
        error = (result.structured_content or {}).get("error") if result.is_error else None
        if not error or error.get("code") != "permission_denied":
            raise StepFailed(f"{tool} should be denied but returned: {_text(result)}")
        show(f"← {_text(result)}")
        return dict(error)

    def fact(self, name: str) -> Any:
        """A value an earlier step found; fails this step if that step did not get there."""
        if name not in self.facts:
            raise StepFailed(f"needs {name}, which an earlier step did not produce")
        return self.facts[name]

    async def tool_names(self) -> set[str]:
        """The tools this server exposes (the toolsets the walkthrough serves)."""
        return {tool.name for tool in (await self.client.list_tools()).tools}

    def cli(self, *argv: str, api_key: str) -> dict[str, Any]:
        """Run ``scalemule <argv>`` against the demo store with ``api_key``; return its JSON."""
        show(f"$ scalemule {shlex.join(argv)}")
        done = subprocess.run(
            [str(scalemule_executable()), *argv],
            env=store_env(self.data_dir, api_key),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise StepFailed(f"scalemule {argv[0]} failed: {done.stdout or done.stderr}")
        return dict(json.loads(done.stdout))


Step = Callable[[Demo], Awaitable[None]]


# --- printing ------------------------------------------------------------------------------------


def show(line: str = "") -> None:
    """Print one line of the walkthrough."""
    print(line, flush=True)


def heading(number: int, title: str) -> None:
    """Print a step's numbered heading."""
    show()
    show(f"{number}. {title}")
    show("-" * (len(title) + len(str(number)) + 2))


def _shown(tool: str, name: str, value: Any) -> Any:
    """An argument as the walkthrough prints it: secret values masked, long contents summarised."""
    if tool == "secrets_set" and name == "value":
        return "•••"
    if isinstance(value, str) and len(value) > 80:
        return f"<{len(value)} characters>"
    return value


def _compact(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


# --- Part 1: identity, keys, permissions, tenant isolation, audit ------------------------------


async def whoami(demo: Demo) -> None:
    """The agent learns who it is, where, and what it may do."""
    me = await demo.ok("whoami")
    show(f"← {me['principal']['kind']} '{me['principal']['name']}' ({me['principal']['id']})")
    show(f"  tenant '{me['tenant']['slug']}', role {me['role']}, acting on behalf of {me['on_behalf_of']}")
    show(f"  key {me['key']['prefix']}… bound to tenant {me['key']['tenant_id']}")
    show(f"  permissions: {', '.join(me['permissions'])}")
    if me["tenant"]["slug"] != TENANT or me["role"] != "developer":
        raise StepFailed(f"expected the developer agent of '{TENANT}', got {me['role']} in {me['tenant']['slug']}")


async def create_worker(demo: Demo) -> None:
    """The agent creates a second principal for the app's background worker."""
    made = await demo.ok("agents_create", {"name": WORKER_NAME, "role": "worker"})
    demo.facts["worker_id"] = made["principal"]["id"]
    show(f"← agent '{made['principal']['name']}' ({made['principal']['id']}), role {made['role']}")
    show(f"  on behalf of {made['on_behalf_of']}: the user who created the agent that created it")


async def issue_worker_key(demo: Demo) -> None:
    """The agent issues the worker a key narrowed to the queue and the object store."""
    made = await demo.ok(
        "keys_create",
        {"name": "menugen worker", "principal_id": demo.fact("worker_id"), "scopes": WORKER_SCOPES},
    )
    demo.facts["worker_key"] = made["token"]
    demo.facts["worker_key_id"] = made["key"]["id"]
    show(f"← key {made['key']['prefix']}… for {made['key']['principal_id']}; token shown once, never stored")
    show(f"  scopes: {', '.join(made['key']['scopes'])}")
    # The worker's own view: role permissions narrowed to the key's scopes.
    seen = demo.cli("call", "whoami", api_key=demo.fact("worker_key"))
    show(f"← the worker holds: {', '.join(seen['permissions'])}")
    if sorted(seen["permissions"]) != sorted(WORKER_SCOPES):
        raise StepFailed(f"the worker's key should carry exactly {WORKER_SCOPES}, got {seen['permissions']}")


async def cannot_reveal_secrets(demo: Demo) -> None:
    """A developer agent manages secrets but may not read their values."""
    check = await demo.ok("access_check", {"permissions": ["secrets:read", "secrets:write", "secrets:reveal"]})
    show(f"← granted {check['granted']}, missing {check['missing']}")
    if check["missing"] != ["secrets:reveal"]:
        raise StepFailed(f"expected only secrets:reveal to be missing, got {check['missing']}")
    if "secrets_reveal" in await demo.tool_names():
        await demo.denied("secrets_reveal", {"env": "prod", "name": "IMAGE_API_KEY"})


async def cannot_cross_tenants(demo: Demo) -> None:
    """Another tenant is out of reach, and the answer does not reveal whether it exists."""
    made = demo.cli("call", "tenants_create", "slug=rival", "name=Rival Foods", api_key=demo.owner_key)
    show(f"← the owner (a user) created tenant '{made['tenant']['slug']}'; the agent is not a member")
    existing = await demo.denied("whoami", {"tenant": "rival"})
    missing = await demo.denied("whoami", {"tenant": "does-not-exist"})
    same = existing["message"].replace("rival", "X") == missing["message"].replace("does-not-exist", "X")
    show(f"  same answer for an existing and a missing tenant: {same}")
    if not same or existing["hint"] != missing["hint"]:
        raise StepFailed("denials for an existing and a missing tenant differ: that leaks existence")


async def audit_trail(demo: Demo) -> None:
    """Every call above, allowed or denied, is in the tenant's hash-chained audit log. The audit tools
    are opt-in (--toolsets ...,audit); the log's recent events are a resource every server serves."""
    uri = f"scalemule://tenants/{TENANT}/audit/recent"
    show(f"→ resources/read {uri}")
    read = await demo.client.read_resource(uri)
    page = json.loads(read.contents[0].text)  # type: ignore[union-attr]
    show(f"← {len(page['items'])} most recent events; the whole trail, as the owner, with the audit tools:")
    events = []
    cursor: str | None = None
    while True:
        pairs = [f"tenant={TENANT}", "limit=200", "response_format=detailed"] + ([f"cursor={cursor}"] if cursor else [])
        listed = demo.cli("call", "audit_query", *pairs, api_key=demo.owner_key)
        events += listed["items"]
        if (cursor := listed["next_cursor"]) is None:
            break
    events = sorted(events, key=lambda e: e["seq"])
    rows = [
        (
            str(e["seq"]),
            e["at"][11:23],
            e["actor"]["name"] if e["actor"] else "-",
            e["client"] or e["transport"],
            e["operation"],
            e["outcome"],
            e["error_code"] or "",
            _event_note(e),
        )
        for e in events
    ]
    table(("seq", "time", "actor", "client", "operation", "outcome", "error", "note"), rows)
    denied = [e for e in events if e["outcome"] == "denied"]
    if len(denied) < 2 or not all(e["hash"] for e in events):
        raise StepFailed("the audit log should hold the denied calls, each with its hash")
    show(f"  {len(events)} events in '{TENANT}', {len(denied)} denied; each names the hash of the one before")


def _event_note(event: dict[str, Any]) -> str:
    args = event["args"]
    if "count" in args:
        return f"{args['count']} calls that found nothing, in aggregate"
    if "claimed" in args:
        return "claimed " + ", ".join(f"{c['job_id'][:12]}… attempt {c['attempt']}" for c in args["claimed"])
    if event["operation"].startswith("jobs_") and event["target"]:
        return str(event["target"])[:16] + "…"
    return ""


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Print ``rows`` as an aligned text table."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in (header, tuple("-" * w for w in widths), *rows):
        show("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# --- Part 2: configuration and secrets ----------------------------------------------------------

IMAGE_API_KEY = "sk-menugen-demo-" + "7f3a9c"  # a stand-in credential for the image-reading API


async def configure_dev(demo: Demo) -> None:
    """The agent sets the app's model name and feature flags in dev; each write is a version."""
    model = await demo.ok("config_set", {"env": "dev", "key": "vision.model", "value": "menu-reader-large"})
    show(f"← vision.model = {model['value']!r} (version {model['version']})")
    flags = {"dish_photos": True, "allergen_notes": True, "translations": ["fr", "es"]}
    made = await demo.ok("config_set", {"env": "dev", "key": "features", "value": flags, "expected_version": 0})
    show(f"← features = {_compact(made['value'])} (version {made['version']}, created only if absent)")
    stale = await demo.call("config_set", {"env": "dev", "key": "features", "value": {}, "expected_version": 0})
    show(f"← a second create-only write: {_text(stale)}")
    if not stale.is_error:
        raise StepFailed("a stale expected_version should be a conflict")


async def store_secret(demo: Demo) -> None:
    """The agent stores the image API's key; listing shows who set it and when, never the value."""
    made = await demo.ok("secrets_set", {"env": "dev", "name": "IMAGE_API_KEY", "value": IMAGE_API_KEY})
    show(f"← IMAGE_API_KEY version {made['version']} stored encrypted; the value is not echoed")
    listed = await demo.ok("secrets_list", {"env": "dev"})
    for item in listed["items"]:
        show(f"  {item['name']}: version {item['version']}, set by {item['updated_by']} at {item['updated_at']}")
    if IMAGE_API_KEY in json.dumps(listed):
        raise StepFailed("secrets_list returned a secret value")
    await demo.denied("secrets_reveal", {"env": "dev", "name": "IMAGE_API_KEY"})


async def grant_worker_secret(demo: Demo) -> None:
    """The owner grants the worker's key IMAGE_API_KEY alone: no role that reveals every secret."""
    made = demo.cli(
        "call",
        "grants_create",
        f"tenant={TENANT}",
        f"principal_id={demo.fact('worker_id')}",
        f"key_id={demo.fact('worker_key_id')}",
        "pattern=dev/IMAGE_API_KEY",
        api_key=demo.owner_key,
    )
    show(f"← grant {made['id']}: {made['permission']} on {made['pattern']} for the worker's key only")
    worker = demo.fact("worker_key")
    check = demo.cli(
        "call", "access_check", 'permissions=["secrets:reveal"]', "env=dev", "name=IMAGE_API_KEY", api_key=worker
    )
    other = demo.cli(
        "call", "access_check", 'permissions=["secrets:reveal"]', "env=dev", "name=DB_PASSWORD", api_key=worker
    )
    show(f"← the worker may reveal dev/IMAGE_API_KEY: {check['allowed']}; dev/DB_PASSWORD: {other['allowed']}")
    if not check["allowed"] or other["allowed"]:
        raise StepFailed("the worker's grant should cover IMAGE_API_KEY and nothing else")


async def diff_and_plan(demo: Demo) -> None:
    """Compare dev with staging and show what a promotion would copy (a dry run changes nothing)."""
    diff = await demo.ok("config_diff", {"from_env": "dev", "to_env": "staging"})
    only = ", ".join(f"{c['name']} ({c['kind']} v{c['from_version']})" for c in diff["only_in_from"])
    show(f"← only in dev: {only}; changed: {len(diff['changed'])}; unchanged: {diff['unchanged']}")
    plan = await demo.ok("config_promote", {"from_env": "dev", "to_env": "staging"})
    show(f"← promotion plan dev → staging (dry_run={plan['dry_run']}, applied={plan['applied']}):")
    for step in plan["steps"]:
        show(f"    copy {step['kind']} {step['name']} (dev v{step['from_version']})")
    if plan["applied"] or IMAGE_API_KEY in json.dumps(plan):
        raise StepFailed("a dry run must change nothing and never carry secret values")


# --- Part 3: object storage ---------------------------------------------------------------------

PHOTO_KEY = "uploads/2026-11-22/chez-mule-menu.png"


def menu_photo(width: int = 96, height: int = 64) -> bytes:
    """A small PNG standing in for a phone photo of a menu: a paper-coloured card with ruled lines."""
    rows = []
    for y in range(height):
        ruled = y % 8 == 4 and 8 <= y < height - 8
        row = bytearray([0])  # PNG filter type: none
        for x in range(width):
            inside = 6 <= x < width - 6
            row += bytes((60, 50, 40) if ruled and inside else (245, 236, 214))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


async def upload_photo(demo: Demo) -> None:
    """The app's upload path: the agent stores a menu photo (create-only) with a little metadata."""
    photo = menu_photo()
    demo.facts["photo_sha256"] = hashlib.sha256(photo).hexdigest()
    args = {
        "key": PHOTO_KEY,
        "content": base64.b64encode(photo).decode(),
        "encoding": "base64",
        "content_type": "image/png",
        "metadata": {"restaurant": "Chez Mule", "source": "camera"},
        "if_none_match": True,
    }
    show(f"→ storage_put_object key={PHOTO_KEY!r}, {len(photo)} bytes of PNG as base64, if_none_match=true")
    stored = await demo.client.call_tool("storage_put_object", args)
    if stored.is_error:
        raise StepFailed(f"storage_put_object failed: {_text(stored)}")
    made = dict(stored.structured_content or {})
    show(f"← stored {made['size']} bytes, sha256 {made['sha256'][:16]}…, etag {made['etag']}")
    if made["sha256"] != demo.facts["photo_sha256"]:
        raise StepFailed("the stored SHA-256 differs from the photo's")
    again = await demo.call("storage_put_object", args)
    show(f"← the same create-only put again: {_text(again)}")
    if not again.is_error:
        raise StepFailed("a second create-only put should be refused")


async def photo_metadata(demo: Demo) -> None:
    """Reading back what is known about the photo costs no bytes of it."""
    info = await demo.ok("storage_head_object", {"key": PHOTO_KEY})
    show(f"← {info['content_type']}, {info['size']} bytes, metadata {info['metadata']}")
    show(f"  written by {info['created_by']} at {info['created_at']}")
    listed = await demo.ok("storage_list_objects", {"prefix": "uploads/", "delimiter": "/"})
    show(f"← under uploads/: folders {listed['prefixes']}, objects {[i['key'] for i in listed['items']]}")
    deeper = await demo.ok("storage_list_objects", {"prefix": "uploads/"})
    for item in deeper["items"]:
        show(f"  {item['key']}  {item['size']} bytes  {item['content_type']}")
    if [i["key"] for i in deeper["items"]] != [PHOTO_KEY]:
        raise StepFailed("the tenant's uploads should list exactly the photo")


def fetch(url: str) -> tuple[bytes, str | None]:
    """GET ``url``; returns the body and its content type."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read(), response.headers.get("content-type")


async def signed_download(demo: Demo) -> None:
    """A signed URL hands the photo to the app (or a browser) without it passing through the model."""
    made = await demo.ok("storage_create_signed_url", {"key": PHOTO_KEY, "method": "GET", "expires_in_seconds": 600})
    show(f"← {made['method']} {made['url'][:72]}… expires {made['expires_at']}")
    show("$ scalemule serve --transport http   (serves /blobs/… for the local backend)")
    with http_server(demo.data_dir, demo.public_port):
        body, kind = await anyio.to_thread.run_sync(fetch, made["url"])
    show(f"← HTTP 200, {len(body)} bytes of {kind}, sha256 {hashlib.sha256(body).hexdigest()[:16]}…")
    if hashlib.sha256(body).hexdigest() != demo.facts["photo_sha256"]:
        raise StepFailed("the signed URL returned other bytes than the photo")


# --- Part 4: background jobs run by the app's worker -------------------------------------------

EXAMPLES = Path(__file__).resolve().parent


async def start_worker(demo: Demo) -> None:
    """The app's worker process: `scalemule worker` with MenuGen's handlers and the worker agent's key."""
    argv = [str(scalemule_executable()), "worker", "--handlers", "menugen_worker", "--concurrency", "2"]
    show(f"$ SCALEMULE_API_KEY={demo.fact('worker_key')[:12]}… scalemule worker --handlers menugen_worker")
    log = (demo.data_dir / "worker.log").open("w")
    env = store_env(demo.data_dir, demo.fact("worker_key"))
    demo.facts["worker"] = await anyio.open_process(argv, cwd=EXAMPLES, env=env, stdout=log, stderr=log)
    show("← worker started: it claims describe_dishes, render_dish_image and render_menu_images jobs")


async def follow(demo: Demo, job_id: str, until: tuple[str, ...], *, within: float = 60) -> dict[str, Any]:
    """Poll jobs_get until the job reaches one of ``until``, printing each change of state or progress."""
    seen: tuple[Any, ...] = ()
    deadline = time.monotonic() + within
    while True:
        result = await demo.client.call_tool("jobs_get", {"job_id": job_id})
        if result.is_error:
            raise StepFailed(f"jobs_get failed: {_text(result)}")
        job = dict(result.structured_content or {})
        now = (job["state"], job["attempt"], job["progress"], job["progress_message"])
        if now != seen:
            seen = now
            progress = "" if job["progress"] is None else f" {job['progress']:.0%} {job['progress_message'] or ''}"
            error = f"  last error: {job['last_error']}" if job["last_error"] and job["state"] != "running" else ""
            show(f"← jobs_get: {job['state']}, attempt {job['attempt']}/{job['max_attempts']}{progress}{error}")
        if job["state"] in until:
            return job
        if time.monotonic() > deadline:
            raise StepFailed(f"job {job_id} is still {job['state']} after {within:.0f}s")
        await anyio.sleep(0.4)


async def describe_dishes(demo: Demo) -> None:
    """The founding problem: describing every dish takes minutes, so the agent enqueues it and follows it."""
    made = await demo.ok(
        "jobs_enqueue",
        {"kind": "describe_dishes", "payload": {"photo": PHOTO_KEY}, "idempotency_key": "describe-chez-mule-1"},
    )
    show(f"← job {made['id']}: {made['state']}; the call returned at once")
    job = await follow(demo, made["id"], ("succeeded", "dead"))
    if job["state"] != "succeeded":
        raise StepFailed(f"describe_dishes ended {job['state']}: {job['last_error']}")
    show(f"← result {_compact(job['result'])}")
    output = await demo.ok("storage_get_object", {"key": job["result"]["output"]})
    for dish in json.loads(output["content"])[:3]:
        show(f"  {dish['dish']}: {dish['description']}")
    show(f"  … {job['result']['dishes']} dishes, written by the worker to {job['result']['output']}")


async def flaky_job(demo: Demo) -> None:
    """A handler that fails twice: each failure is retried after a backoff, the third attempt succeeds."""
    made = await demo.ok("jobs_enqueue", {"kind": "render_dish_image", "payload": {"dish": "Coq au vin", "env": "dev"}})
    job = await follow(demo, made["id"], ("succeeded", "dead"))
    if (job["state"], job["attempt"]) != ("succeeded", 3):
        raise StepFailed(f"expected success on attempt 3, got {job['state']} on attempt {job['attempt']}")
    show(f"← succeeded on attempt 3; the last failure is kept: {job['last_error']}")


async def cancel_job(demo: Demo) -> None:
    """A long job is cancelled while running: the worker sees it on its next heartbeat and stops."""
    made = await demo.ok("jobs_enqueue", {"kind": "render_menu_images", "payload": {"dishes": 40}})
    await follow(demo, made["id"], ("running",))
    cancelled = await demo.ok("jobs_cancel", {"job_id": made["id"]})
    show(f"← {cancelled['state']}, cancel_requested={cancelled['cancel_requested']}")
    job = await follow(demo, made["id"], ("cancelled", "succeeded", "dead"))
    if job["state"] != "cancelled":
        raise StepFailed(f"the cancelled job ended {job['state']}")
    uri = f"scalemule://tenants/{TENANT}/jobs/{made['id']}"
    show(f"→ resources/read {uri}")
    read = await demo.client.read_resource(uri)
    shown = json.loads(read.contents[0].text)  # type: ignore[union-attr]
    show(f"← {shown['state']} at {shown['finished_at']}, progress {shown['progress']:.0%} when it stopped")


STEPS: list[tuple[str, Step]] = [
    ("Who am I? (whoami)", whoami),
    ("Create an agent for the app's worker (agents_create)", create_worker),
    ("Issue the worker a scoped key (keys_create)", issue_worker_key),
    ("Secret values stay out of reach (access_check, secrets_reveal)", cannot_reveal_secrets),
    ("Other tenants stay out of reach (tenants_create as owner, whoami tenant=...)", cannot_cross_tenants),
    ("Set the app's configuration in dev (config_set)", configure_dev),
    ("Store the image API key as a secret (secrets_set, secrets_list)", store_secret),
    ("Grant the worker that one secret (grants_create as owner, access_check)", grant_worker_secret),
    ("Diff dev against staging and plan a promotion (config_diff, config_promote)", diff_and_plan),
    ("Upload a menu photo (storage_put_object)", upload_photo),
    ("Read back its metadata and list the uploads (storage_head_object, storage_list_objects)", photo_metadata),
    ("Download it through a signed URL (storage_create_signed_url)", signed_download),
    ("Start the app's worker (scalemule worker, with the worker agent's key)", start_worker),
    ("Describe the menu's dishes in the background (jobs_enqueue, jobs_get)", describe_dishes),
    ("A flaky job succeeds on its third attempt (retries with backoff)", flaky_job),
    ("Cancel a long-running job (jobs_cancel)", cancel_job),
    ("Read the audit trail (resource scalemule://tenants/menugen/audit/recent)", audit_trail),
]


# --- setup ---------------------------------------------------------------------------------------


def scalemule_executable() -> Path:
    """The ``scalemule`` command installed next to this Python."""
    path = Path(sys.executable).parent / ("scalemule.exe" if os.name == "nt" else "scalemule")
    if not path.exists():
        found = shutil.which("scalemule")
        if found is None:
            raise SystemExit("scalemule is not installed in this environment: run 'make install' first")
        return Path(found)
    return path


def store_env(data_dir: Path, api_key: str | None, public_port: int | None = None) -> dict[str, str]:
    """This process's environment pointed at the demo store only (no inherited SCALEMULE_* settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEMULE_")}
    env["SCALEMULE_DATA_DIR"] = str(data_dir)
    if api_key is not None:
        env["SCALEMULE_API_KEY"] = api_key
    if public_port is not None:
        env["SCALEMULE_PUBLIC_URL"] = f"http://127.0.0.1:{public_port}"
    return env


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def http_server(data_dir: Path, port: int) -> Iterator[None]:
    """``scalemule serve --transport http`` on ``port`` for the duration of the block."""
    argv = [str(scalemule_executable()), "serve", "--transport", "http", "--port", str(port)]
    process = subprocess.Popen(
        argv, env=store_env(data_dir, None, port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                error = process.stderr.read().decode() if process.stderr else ""
                raise StepFailed(f"the HTTP server did not start: {error.strip()[-300:]}")
            time.sleep(0.05)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def initialise(data_dir: Path) -> dict[str, Any]:
    """Run ``scalemule init`` for the MenuGen tenant and return its JSON output."""
    argv = ["init", "--json", "--tenant", TENANT, "--owner", OWNER_EMAIL]
    show(f"$ scalemule {shlex.join(argv)}")
    done = subprocess.run(
        [str(scalemule_executable()), *argv],
        env=store_env(data_dir, None),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise StepFailed(f"scalemule init failed: {done.stdout or done.stderr}")
    made: dict[str, Any] = json.loads(done.stdout)
    show(f"← tenant '{made['tenant']['slug']}' ({made['tenant']['id']}) in {data_dir}")
    show(f"  owner key {made['owner_key'][:12]}…  agent key {made['agent_key'][:12]}…  (shown once)")
    return made


TOOLSETS = "default,identity,config,secrets,storage"


async def walkthrough(data_dir: Path) -> int:
    """Initialise a store, connect as the agent and run every step; returns the number of failures."""
    heading(1, "Initialise a store for MenuGen (scalemule init)")
    made = initialise(data_dir)
    public_port = free_port()  # where the HTTP surface will serve the signed URLs the agent makes
    server = StdioServerParameters(
        command=str(scalemule_executable()),
        # The default tool list plus whole toolsets: this agent also provisions a worker's identity and
        # grants, diffs and promotes config, reads secret versions and checks objects' metadata.
        args=["serve", "--toolsets", TOOLSETS],
        env=store_env(data_dir, made["agent_key"], public_port),
    )
    heading(2, "Connect as the agent (scalemule serve over stdio)")
    show(f"$ SCALEMULE_API_KEY={made['agent_key'][:12]}… scalemule serve --toolsets {TOOLSETS}")
    failures = 0
    async with Client(server, client_info=types.Implementation(name="menugen-builder", version="1.0")) as client:
        info = client.server_info
        tools = (await client.list_tools()).tools
        show(f"← {info.name if info else '?'} {info.version if info else ''}: {len(tools)} tools")
        demo = Demo(
            client=client,
            data_dir=data_dir,
            owner_key=made["owner_key"],
            agent_key=made["agent_key"],
            public_port=public_port,
        )
        try:
            for number, (title, step) in enumerate(STEPS, start=3):
                heading(number, title)
                try:
                    await step(demo)
                except StepFailed as exc:
                    failures += 1
                    show(f"✗ FAILED: {exc}")
        finally:
            await stop_worker(demo)
    return failures


async def stop_worker(demo: Demo) -> None:
    """SIGTERM the worker (it finishes running jobs first) and wait for it."""
    worker = demo.facts.get("worker")
    if worker is not None:
        worker.terminate()
        with anyio.move_on_after(30) as waited:
            await worker.wait()
        if waited.cancelled_caught:
            worker.kill()


def main() -> int:
    """Run the walkthrough in a temporary data directory; exit 1 if any step failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true", help="keep the data directory and print its path")
    options = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="scalemule-menugen-"))
    try:
        failures = anyio.run(walkthrough, data_dir)
    except StepFailed as exc:
        show(f"✗ FAILED: {exc}")
        failures = 1
    finally:
        if options.keep:
            show(f"\nData directory kept: {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    show()
    show("MenuGen walkthrough: " + (f"{failures} step(s) FAILED" if failures else "all steps passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
