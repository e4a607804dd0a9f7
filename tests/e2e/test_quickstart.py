"""docs/quickstart.md, followed literally: every ``$`` command of its ``console`` blocks is run in order.

The convention (stated in the quickstart itself): in a fenced ``console`` block, a line starting with
``$ `` is a command; the lines under it are fragments of what it prints (``…`` matches any text,
runs of spaces match any whitespace), ``(exit N)`` expects status N (else 0). ``export NAME=VALUE``
sets a variable for the commands that follow; ``<agent key>`` and ``<owner key>`` are the keys ``init``
printed.
Commands run in a fresh directory with the venv's bin first on PATH, as ``. .venv/bin/activate`` does.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.conftest import SCALEMULE, clean_env

QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)
    status: int = 0


def steps(markdown: str) -> list[Step]:
    """The ``$`` commands of the ``console`` blocks, with the output each is expected to print."""
    found: list[Step] = []
    for block in re.findall(r"^```console\n(.*?)^```", markdown, flags=re.M | re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                found.append(Step(line[2:]))
            elif (exit_status := re.fullmatch(r"\(exit (\d+)\)", line.strip())) is not None:
                found[-1].status = int(exit_status.group(1))
            elif line.strip():
                found[-1].expected.append(line.strip())
    return found


def _printed(fragment: str, output: str) -> bool:
    words = [re.escape(" ".join(part.split())) for part in fragment.split("…")]
    pattern = ".*?".join(w.replace(r"\ ", r"\s+") for w in words)
    return re.search(pattern, output) is not None


def test_the_quickstart_runs_as_written(tmp_path: Path) -> None:
    found = steps(QUICKSTART.read_text(encoding="utf-8"))
    assert len(found) >= 8 and found[0].command.startswith("scalemule init")
    env = clean_env(PATH=f"{Path(SCALEMULE).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    keys = {"<agent key>": "", "<owner key>": ""}
    for step in found:
        command = step.command
        for placeholder, key in keys.items():
            command = command.replace(placeholder, key)
        if (assignment := re.fullmatch(r"export (\w+)=(\S+)", command)) is not None:
            env[assignment.group(1)] = assignment.group(2)
            continue
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        output = done.stdout + done.stderr
        assert done.returncode == step.status, (command, output)
        missing = [line for line in step.expected if not _printed(line, output)]
        assert missing == [], (command, output)
        if command.startswith("scalemule init"):
            for who in ("agent", "owner"):
                printed = re.search(rf"^{who.title()} .*: +(smk_\w+)$", done.stdout, flags=re.M)
                assert printed is not None, done.stdout
                keys[f"<{who} key>"] = printed.group(1)
