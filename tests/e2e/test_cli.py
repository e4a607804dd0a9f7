"""The `scalemule` command: init, call and schemas, with the JSON error contract and exit codes."""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import select
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from scalemule import __version__
from scalemule.core import tokens
from scalemule.dispatch import DEFAULT_TOOLS, Dispatcher, Exposure, Invocation
from scalemule.operations import REGISTRY
from scalemule.runtime import Runtime
from scalemule.settings import Settings
from scalemule.surfaces import cli, schemas
from scalemule.surfaces.cli_output import EXIT_CODES
from tests.e2e.conftest import SCALEMULE, Deployment, _deploy, clean_env, free_port, run_cli

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
    assert (server["command"], server["args"]) == (SCALEMULE, ["serve"])
    assert server["env"] == {"SCALEMULE_API_KEY": made["agent_key"], "SCALEMULE_DATA_DIR": str(data_dir.resolve())}
    assert stat.S_IMODE((data_dir / "master.key").stat().st_mode) == 0o600


def test_init_on_an_initialised_store_fails_changes_nothing_and_is_recorded(
    deployment: Deployment, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(deployment.settings.data_dir, copy)
    before = _store_state(copy)
    done = run_cli("init", "--json", env=clean_env(SCALEMULE_DATA_DIR=str(copy)))
    assert done.returncode == EXIT_CODES["failed_precondition"]
    assert json.loads(done.stdout)["error"]["code"] == "failed_precondition"
    assert deployment.owner_key not in done.stdout + done.stderr
    assert _store_state(copy) == before
    with sqlite3.connect(copy / "scalemule.db") as db:
        refused = db.execute(
            "SELECT json_extract(body, '$.actor_kind'), json_extract(body, '$.error_code'), chain FROM audit_events"
            " WHERE operation = 'init' AND outcome = 'error'"
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
    assert done.returncode == EXIT_CODES["permission_denied"]
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
    assert done.returncode == EXIT_CODES["invalid_argument"], done.stderr
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
    assert code == EXIT_CODES["unauthenticated"] and out["error"]["code"] == "unauthenticated" and out["error"]["hint"]


def test_call_with_malformed_arguments_is_an_invalid_argument(
    as_cli: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["whoami", "--json", "[1]"], ["whoami", "novalue"], ["whoami", "--json", "{oops"]):
        code, out = _main(capsys, "call", *argv, "--api-key", as_cli.agent_key)
        assert code == EXIT_CODES["invalid_argument"] and out["error"]["code"] == "invalid_argument", argv


def test_call_on_a_store_that_was_never_initialised_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCALEMULE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.delenv("SCALEMULE_DATABASE_URL", raising=False)
    code, out = _main(capsys, "call", "whoami", "--api-key", tokens.generate())
    assert code == EXIT_CODES["failed_precondition"] and out["error"]["code"] == "failed_precondition"
    assert str((tmp_path / "empty" / "scalemule.db").resolve()) in out["error"]["message"]
    assert "SCALEMULE_DATA_DIR" in out["error"]["hint"]


def test_tools_lists_every_tool_sorted_by_toolset_with_whole_first_sentences(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["tools"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == {op.name for op in REGISTRY.values() if op.tool}
    assert [(r["toolset"], r["name"]) for r in rows] == sorted((r["toolset"], r["name"]) for r in rows)
    assert {r["name"] for r in rows if r["default"]} == DEFAULT_TOOLS
    for row in rows:
        description = " ".join(REGISTRY[row["name"]].description.split())
        assert description.startswith(row["summary"]) and row["summary"].endswith((".", "?", "!")), row
    assert cli.main(["tools", "--format", "table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [r["name"] for r in rows]
    assert all((line.split()[1] == "*") == row["default"] for line, row in zip(lines, rows, strict=True))


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
        assert code == EXIT_CODES["not_found"] and out["error"]["code"] == "not_found"


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


def _owner_env(deployment: Deployment) -> dict[str, str]:
    return deployment.env | {"SCALEMULE_API_KEY": deployment.owner_key}


def test_version_prints_the_program_name_and_version() -> None:
    done = run_cli("--version", env=clean_env())
    assert (done.returncode, done.stdout) == (0, f"scalemule {__version__}\n")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_a_script_for_each_shell(shell: str) -> None:
    done = run_cli("completion", shell, env=clean_env())
    assert done.returncode == 0, done.stderr
    assert "_SCALEMULE_COMPLETE" in done.stdout and "scalemule" in done.stdout


def test_bash_completion_offers_tools_and_their_options() -> None:
    env = clean_env(_SCALEMULE_COMPLETE="bash_complete", COMP_WORDS="scalemule call config_s", COMP_CWORD="2")
    assert "config_set" in run_cli(env=env).stdout
    env |= {"COMP_WORDS": "scalemule call config_set --ex", "COMP_CWORD": "3"}
    assert "--expected-version" in run_cli(env=env).stdout


def test_a_tool_help_lists_its_arguments_with_types_defaults_and_an_example() -> None:
    done = run_cli("call", "config_set", "--help", env=clean_env())
    assert done.returncode == 0, done.stderr
    for text in ("--env TEXT", "--key TEXT", "--value JSON", "--expected-version INTEGER", "Required.", "Example:"):
        assert text in done.stdout, text
    assert "scalemule call config_set --env TEXT --key TEXT" in done.stdout
    listed = run_cli("call", "storage_list_objects", "--help", env=clean_env()).stdout
    assert "--limit INTEGER" in listed and "Default: " in listed


def test_a_mistyped_tool_or_command_gets_the_nearest_name_and_a_usage_status() -> None:
    done = run_cli("call", "confg_set", env=clean_env())
    assert done.returncode == 2 and "No such tool 'confg_set'. Did you mean 'config_set'?" in done.stderr
    done = run_cli("tols", env=clean_env())
    assert done.returncode == 2 and "Did you mean 'tools'?" in done.stderr
    done = run_cli("serve", "--toolsets", "identiy", env=clean_env())
    assert done.returncode == EXIT_CODES["invalid_argument"] and "Did you mean 'identity'?" in done.stderr


def test_typed_options_pairs_and_json_from_a_file_or_stdin_combine(deployment: Deployment, tmp_path: Path) -> None:
    env = deployment.env | {"SCALEMULE_API_KEY": deployment.agent_key}
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"env": "dev", "key": "from_file", "value": {"a": 1}}))
    assert run_cli("call", "config_set", "--json", f"@{args}", env=env).returncode == 0
    done = subprocess.run(
        [SCALEMULE, "call", "config_set", "--json", "-", "--key", "from_stdin"],
        input='{"env": "dev", "value": [1, 2]}',
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout
    got = json.loads(run_cli("call", "config_get", "--env", "dev", "--key", "from_stdin", env=env).stdout)
    assert got["value"] == [1, 2]
    assert json.loads(run_cli("call", "config_get", "env=dev", "key=from_file", env=env).stdout)["value"] == {"a": 1}
    missing = run_cli("call", "whoami", "--json", f"@{tmp_path / 'absent.json'}", env=env)
    assert missing.returncode == EXIT_CODES["invalid_argument"]
    assert str(tmp_path / "absent.json") in json.loads(missing.stdout)["error"]["message"]


def test_a_json_string_argument_is_passed_as_a_string_and_text_arguments_as_written(deployment: Deployment) -> None:
    env = deployment.env | {"SCALEMULE_API_KEY": deployment.agent_key}
    for given, stored in (("5", 5), ('"5"', "5"), ("hello", "hello"), ("true", True)):
        assert (
            run_cli("call", "config_set", "--env", "dev", "--key", "typed", "--value", given, env=env).returncode == 0
        )
        got = json.loads(run_cli("call", "config_get", "--env", "dev", "--key", "typed", env=env).stdout)
        assert got["value"] == stored, given
    made = json.loads(run_cli("call", "agents_create", "name=123", "role=viewer", env=env).stdout)
    assert made["principal"]["name"] == "123"


def test_each_error_class_exits_with_its_documented_status(deployment: Deployment, tmp_path: Path) -> None:
    documented = dict(re.findall(r"^\| (\d+) \| `(\w+)` \|$", (REPO_ROOT / "docs/errors.md").read_text(), re.M))
    assert {code: int(status) for status, code in documented.items()} == EXIT_CODES
    agent = deployment.env | {"SCALEMULE_API_KEY": deployment.agent_key}
    cases = {
        "invalid_argument": (agent, ["call", "config_set", "--env", "dev"]),
        "unauthenticated": (deployment.env, ["call", "whoami"]),
        "permission_denied": (agent, ["call", "tenants_create", "slug=x", "name=X"]),
        "not_found": (agent, ["call", "config_get", "--env", "dev", "--key", "never_set"]),
        "already_exists": (agent, ["call", "envs_create", "--name", "dev"]),
        "conflict": (agent, ["call", "config_set", "env=dev", "key=k", "value=1", "expected_version=41"]),
        "failed_precondition": (clean_env(SCALEMULE_DATA_DIR=str(tmp_path / "none")), ["call", "whoami"]),
    }
    for code, (env, argv) in cases.items():
        done = run_cli(*argv, env=env)
        assert (done.returncode, json.loads(done.stdout)["error"]["code"]) == (EXIT_CODES[code], code), done.stdout
    assert run_cli("call", "whoami", "--limit", "x", env=agent).returncode == 2


def test_output_is_json_when_piped_and_a_table_on_request(deployment: Deployment) -> None:
    env = deployment.env | {"SCALEMULE_API_KEY": deployment.agent_key}
    assert json.loads(run_cli("call", "whoami", env=env).stdout)["role"] == "developer"
    table = run_cli("call", "whoami", "--format", "table", env=env).stdout
    assert re.search(r"^role\s+developer$", table, re.M) and not table.startswith("{")
    listed = run_cli("--format", "table", "call", "envs_list", env=env).stdout
    assert listed.splitlines()[0].split()[0] == "NAME" and "dev" in listed


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    process = subprocess.Popen(
        [SCALEMULE, "tools", "--format", "table"],
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before the command has printed anything: its first write meets a closed pipe
    errors = process.stderr.read()
    assert (process.wait(timeout=60), errors) == (0, b"")


def test_run_starts_a_command_with_config_and_secrets_and_records_a_reveal(
    deployment: Deployment, tmp_path: Path
) -> None:
    owner = _owner_env(deployment)
    assert run_cli("call", "config_set", "env=staging", "key=db.url", "value=postgres://db", env=owner).returncode == 0
    assert run_cli("call", "secrets_set", "env=staging", "name=API_TOKEN", "value=s3 cr3t", env=owner).returncode == 0
    script = "import os, sys; print(os.environ['DB_URL'], os.environ['API_TOKEN'], sep='|'); sys.exit(7)"
    done = subprocess.run(
        [SCALEMULE, "run", "--env", "staging", "--", sys.executable, "-c", script],
        env=owner,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (7, "postgres://db|s3 cr3t\n"), done.stderr
    assert list(tmp_path.iterdir()) == []
    query = ["call", "audit_query", "operation=config_export", "permission=secrets:reveal"]
    events = json.loads(run_cli(*query, env=owner).stdout)["items"]
    assert events and events[0]["outcome"] == "ok" and events[0]["actor"]["kind"] == "user"
    agent = deployment.env | {"SCALEMULE_API_KEY": deployment.agent_key}
    denied = run_cli("run", "--env", "staging", "--", sys.executable, "-c", "print('ran')", env=agent)
    assert denied.returncode == EXIT_CODES["permission_denied"] and "ran" not in denied.stdout


def test_a_store_that_cannot_be_opened_names_the_url_without_its_password() -> None:
    url = f"postgresql://scalemule:hunter2@127.0.0.1:{free_port()}/nothing"
    done = run_cli("call", "whoami", env=clean_env(SCALEMULE_DATABASE_URL=url))
    error = json.loads(done.stdout)["error"]
    assert done.returncode == EXIT_CODES["failed_precondition"] and error["code"] == "failed_precondition"
    assert "127.0.0.1" in error["message"] and "hunter2" not in done.stdout + done.stderr
    assert "SCALEMULE_DATABASE_URL" in error["hint"]


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Run with stderr on a pseudo-terminal (stdin closed, stdout a pipe); returns status, stdout, stderr."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [SCALEMULE, *argv], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal
        )
        os.close(terminal)
        out, _ = process.communicate(timeout=60)
        seen = b""
        while select.select([controller], [], [], 0)[0]:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            seen += chunk
        return process.returncode, out, seen
    finally:
        os.close(controller)


def test_stdio_serve_on_a_terminal_prints_one_line_on_stderr_and_nothing_on_stdout(deployment: Deployment) -> None:
    env = deployment.env | {"SCALEMULE_API_KEY": deployment.agent_key}
    status, out, err = _on_a_terminal(["serve"], env)
    assert (status, out) == (0, b"")
    line = f"scalemule {__version__} serving MCP over stdio · store {deployment.settings.data_dir.resolve()}"
    assert err.decode().strip().startswith(line) and err.decode().strip().endswith(f"tenant {deployment.slug}")
    piped = run_cli("serve", env=env)
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, "", "")


def test_long_work_shows_progress_on_a_terminal_and_stays_quiet_when_piped(deployment: Deployment) -> None:
    status, out, err = _on_a_terminal(["storage", "sweep", "--dry-run"], deployment.env)
    assert status == 0 and json.loads(out)["scanned"] >= 0 and b"sweeping blobs" in err
    piped = run_cli("storage", "sweep", "--dry-run", env=deployment.env)
    assert piped.returncode == 0 and piped.stderr == ""
    status, out, err = _on_a_terminal(["secrets", "rotate-master-key"], deployment.env)
    assert status == 0 and json.loads(out)["master_key_version"] >= 2 and b"re-wrapping data keys" in err


def test_init_names_a_master_key_from_the_environment_instead_of_printing_it(tmp_path: Path) -> None:
    master = "1:" + base64.b64encode(b"k" * 32).decode()
    env = clean_env(SCALEMULE_DATA_DIR=str(tmp_path / "store"), SCALEMULE_MASTER_KEY=master)
    done = run_cli("init", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert master not in done.stdout and "SCALEMULE_MASTER_KEY" in done.stderr
    printed = json.loads(done.stdout)["mcp_json"]["mcpServers"]["scalemule"]["env"]
    assert set(printed) == {"SCALEMULE_API_KEY", "SCALEMULE_DATA_DIR"}
