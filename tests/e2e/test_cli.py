"""The `scalemule` command: init, call and schemas, with the JSON error contract and exit codes."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from scalemule.core import tokens
from scalemule.dispatch import Dispatcher, Exposure, Invocation
from scalemule.operations import REGISTRY
from scalemule.runtime import Runtime
from scalemule.settings import Settings
from scalemule.surfaces import cli, schemas
from tests.e2e.conftest import SCALEMULE, Deployment, _deploy, clean_env, run_cli

REPO_ROOT = Path(__file__).resolve().parents[2]


def _store_state(data_dir: Path) -> tuple[list[str], list[str], bytes]:
    """Files of the data directory, the SQLite dump less the audit log, and the master key."""
    files = sorted(p.name for p in data_dir.iterdir() if not p.name.endswith(("-wal", "-shm")))
    audit = ('INSERT INTO "audit_events"', 'INSERT INTO "audit_heads"', 'INSERT INTO "audit_checkpoints"')
    with sqlite3.connect(data_dir / "scalemule.db") as db:
        dump = [line for line in db.iterdump() if not line.startswith(audit)]
    return files, dump, (data_dir / "master.key").read_bytes()


@pytest.fixture
def as_cli(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    """Run ``cli.main`` in this process with the deployment's environment (and no key unless given)."""
    for name in list(os.environ):
        if name.startswith("SCALEMULE_"):
            monkeypatch.delenv(name)
    for name, value in deployment.env.items():
        if name.startswith("SCALEMULE_"):
            monkeypatch.setenv(name, value)
    return deployment


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = cli.main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_init_prints_the_tenant_both_keys_and_a_client_configuration(tmp_path: Path) -> None:
    data_dir = tmp_path / "store"
    done = run_cli("init", "--json", "--tenant", "menugen", env=clean_env(SCALEMULE_DATA_DIR=str(data_dir)))
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert set(made) == {"tenant", "owner_key", "agent_key", "mcp_json"}
    assert made["tenant"]["slug"] == "menugen" and made["tenant"]["id"]
    assert tokens.is_well_formed(made["owner_key"]) and tokens.is_well_formed(made["agent_key"])
    assert made["owner_key"] != made["agent_key"]
    server = made["mcp_json"]["mcpServers"]["scalemule"]
    assert (server["command"], server["args"]) == ("scalemule", ["serve"])
    assert server["env"] == {"SCALEMULE_API_KEY": made["agent_key"], "SCALEMULE_DATA_DIR": str(data_dir.resolve())}
    assert stat.S_IMODE((data_dir / "master.key").stat().st_mode) == 0o600


def test_init_on_an_initialised_store_fails_changes_nothing_and_is_recorded(
    deployment: Deployment, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(deployment.settings.data_dir, copy)
    before = _store_state(copy)
    done = run_cli("init", "--json", env=clean_env(SCALEMULE_DATA_DIR=str(copy)))
    assert done.returncode != 0
    assert json.loads(done.stdout)["error"]["code"] == "failed_precondition"
    assert deployment.owner_key not in done.stdout + done.stderr
    assert _store_state(copy) == before
    with sqlite3.connect(copy / "scalemule.db") as db:
        refused = db.execute(
            "SELECT actor_kind, error_code, chain FROM audit_events WHERE operation = 'init' AND outcome = 'error'"
        ).fetchall()
    assert refused == [("operator", "failed_precondition", "-")]


def test_a_failed_call_prints_the_error_contract_and_exits_non_zero(deployment: Deployment) -> None:
    done = run_cli(
        "call",
        "tenants_create",
        "slug=rogue",
        "name=Rogue",
        env=deployment.env | {"SCALEMULE_API_KEY": deployment.agent_key},
    )
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert set(error) == {"code", "message", "hint"}
    assert error["code"] == "permission_denied" and error["message"] and error["hint"]


def test_arguments_that_are_not_valid_utf8_are_an_invalid_argument(deployment: Deployment) -> None:
    env = deployment.env | {"SCALEMULE_API_KEY": deployment.agent_key}
    done = subprocess.run(
        [SCALEMULE, "call", "agents_create", b"name=bot\xff", "role=viewer"],
        env=env,
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "invalid_argument"
    assert b"Traceback" not in done.stderr


def test_call_prints_the_result_as_json(as_cli: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    code, me = _main(capsys, "call", "whoami", "--api-key", as_cli.agent_key)
    assert code == 0
    assert me["principal"]["kind"] == "agent" and me["tenant"]["slug"] == as_cli.slug


def test_call_takes_key_value_pairs_and_a_json_object(
    as_cli: Deployment, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCALEMULE_API_KEY", as_cli.agent_key)
    payload = json.dumps({"name": "cli-key", "scopes": ["config:read"]})
    code, made = _main(capsys, "call", "keys_create", "--json", payload, "expires_in_days=30")
    assert code == 0 and made["key"]["scopes"] == ["config:read"] and made["key"]["expires_at"]
    code, check = _main(capsys, "call", "access_check", 'permissions=["config:read","secrets:reveal"]')
    assert code == 0 and check["missing"] == ["secrets:reveal"]


def test_call_without_a_key_is_unauthenticated(as_cli: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _main(capsys, "call", "whoami")
    assert code == 1 and out["error"]["code"] == "unauthenticated" and out["error"]["hint"]


def test_call_with_malformed_arguments_is_an_invalid_argument(
    as_cli: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["whoami", "--json", "[1]"], ["whoami", "novalue"], ["whoami", "--json", "{oops"]):
        code, out = _main(capsys, "call", *argv, "--api-key", as_cli.agent_key)
        assert code == 1 and out["error"]["code"] == "invalid_argument", argv


def test_call_on_a_store_that_was_never_initialised_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCALEMULE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.delenv("SCALEMULE_DATABASE_URL", raising=False)
    code, out = _main(capsys, "call", "whoami", "--api-key", tokens.generate())
    assert code == 1 and out["error"]["code"] == "failed_precondition"


def test_tools_lists_every_tool(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["tools"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert listed == {op.name for op in REGISTRY.values() if op.tool}


def test_schemas_check_passes_on_the_committed_files() -> None:
    assert cli.main(["schemas", "--check", "--root", str(REPO_ROOT)]) == 0


def test_schemas_check_fails_on_a_stale_or_stray_file_and_schemas_repairs_it(tmp_path: Path) -> None:
    schemas.write(tmp_path)
    assert cli.main(["schemas", "--check", "--root", str(tmp_path)]) == 0
    edited = tmp_path / "tool_schemas" / "whoami.json"
    edited.write_text(edited.read_text().replace("whoami", "whoareyou"))
    (tmp_path / "tool_schemas" / "retired_tool.json").write_text("{}")
    assert cli.main(["schemas", "--check", "--root", str(tmp_path)]) == 1
    assert cli.main(["schemas", "--root", str(tmp_path)]) == 0
    assert schemas.drift(tmp_path) == []
    assert not (tmp_path / "tool_schemas" / "retired_tool.json").exists()


def _operator_revokes_keys(deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):
            if name.startswith("SCALEMULE_"):
                env.delenv(name)
        for name, value in deployment.env.items():
            env.setenv(name, value)
        owner = _main(capsys, "call", "whoami", "--api-key", deployment.owner_key)[1]
        agent_key = _main(capsys, "call", "whoami", "--api-key", deployment.agent_key)[1]["key"]["id"]
        code, mine = _main(capsys, "keys", "list", "--principal", owner["principal"]["id"])
        assert code == 0 and [k["id"] for k in mine["items"]] == [owner["key"]["id"]] and mine["next_cursor"] is None
        code, bound = _main(capsys, "keys", "list", "--tenant", owner["tenant"]["id"])
        assert code == 0 and [k["id"] for k in bound["items"]] == [agent_key]
        code, revoked = _main(capsys, "keys", "revoke", agent_key)
        assert code == 0 and revoked["key"]["revoked_at"] and revoked["revoked_keys"] == 1
        assert (
            _main(capsys, "call", "whoami", "--api-key", deployment.agent_key)[1]["error"]["code"] == "unauthenticated"
        )
        code, page = _main(capsys, "call", "audit_query", "operation=keys_revoke", "--api-key", deployment.owner_key)
        assert code == 0
        (event,) = page["items"]
        assert event["actor"]["kind"] == "operator" and event["target"] == agent_key
        # A person's own unbound key too: no tool could stop it for them once it leaked.
        assert _main(capsys, "keys", "revoke", owner["key"]["id"])[0] == 0
        assert (
            _main(capsys, "call", "whoami", "--api-key", deployment.owner_key)[1]["error"]["code"] == "unauthenticated"
        )
        code, out = _main(capsys, "keys", "revoke", "key_missing")
        assert code == 1 and out["error"]["code"] == "not_found"


def test_the_operator_lists_and_revokes_any_key_with_an_audit_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _operator_revokes_keys(_deploy(tmp_path, None, "ops"), capsys)


def test_the_operator_revokes_keys_on_postgresql_too(
    postgres_deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    _operator_revokes_keys(postgres_deployment, capsys)


def test_init_keeps_the_data_directory_and_every_file_in_it_private_under_umask_022(tmp_path: Path) -> None:
    data_dir = tmp_path / "store"
    previous = os.umask(0o022)
    try:
        done = run_cli("init", "--json", env=clean_env(SCALEMULE_DATA_DIR=str(data_dir)))
        assert done.returncode == 0, done.stderr
        agent = json.loads(done.stdout)["agent_key"]

        async def use_the_store() -> dict[str, int]:
            # An object on local disk, a signed URL, and the SQLite -wal/-shm files of an open store.
            runtime = Runtime.open(Settings(data_dir=data_dir))
            try:
                dispatcher = Dispatcher(runtime, Exposure(toolsets=None))
                for operation, arguments in (
                    ("storage_put_object", {"key": "a/b.txt", "content": "private"}),
                    ("storage_create_signed_url", {"key": "a/b.txt"}),
                ):
                    outcome = await dispatcher.call(Invocation(operation, arguments, agent, "cli"))
                    assert outcome.error is None, outcome.error
                return {str(p.relative_to(data_dir)): stat.S_IMODE(p.stat().st_mode) for p in data_dir.rglob("*")}
            finally:
                await runtime.close()

        modes = anyio.run(use_the_store)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert {"scalemule.db", "scalemule.db-wal", "scalemule.db-shm", "master.key"} <= set(modes)
    assert any(name.startswith("blobs/") and not (data_dir / name).is_dir() for name in modes)
    wanted = {name: 0o700 if (data_dir / name).is_dir() else 0o600 for name in modes}
    assert {name: oct(mode) for name, mode in modes.items() if mode != wanted[name]} == {}
