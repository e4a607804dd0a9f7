"""pytest plugin loaded for mutation runs only (``make mutate`` puts mutation/ on ``PYTHONPATH``).

- mutmut 3.8 reads ``item._nodeid``, which pytest 9.2 no longer sets. Remove that part once mutmut
  reads the public ``item.nodeid``.
- mutmut runs the tests once in its own process, then forks a pytest session per mutant from it. The
  migrated SQLite template is built once for all of them (``SCALEMULE_TEST_SQLITE_TEMPLATE``, read by
  tests/conftest.py): migrating costs more than most mutants' tests.
- Statement caches of the mutated modules are emptied before each test: filled by that first run, they
  would answer instead of the mutated function that builds the statement, and no test could kill it.
- Each session runs only the tests that ``[[tool.scalemule.mutation]]`` in pyproject.toml lists for
  the mutated module (their union when no mutant is active: mutmut's first run, which records which
  test executes which function, and its clean and forced-failure checks). mutmut itself knows one
  selection for every module.
- Each session runs first the tests that killed earlier mutants of the same function (the latest
  first), then the rest in mutmut's order (fastest first). Mutants of one function tend to be killed
  by the same test, and mutmut runs them one after another, so a later mutant usually stops at its
  first test instead of running every faster test that cannot see the change. What runs, and so
  each result, is the same; only the order changes.
- Each session starts by freezing the objects it inherits (``gc.freeze``): pytest collects garbage
  several times as a session ends, and walking the whole inherited heap (every test module, SQLAlchemy,
  hypothesis) cost about a second per mutant, and copied the pages the fork had shared.
- Address space is capped at ``MEMORY_LIMIT`` per process: a mutant that makes a query unbounded (a
  recursive CTE without its stop) fails with an out-of-memory error instead of taking the machine's
  memory until mutmut's timeout ends it.
"""

from __future__ import annotations

import atexit
import gc
import os
import resource
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

TEMPLATE_ENV = "SCALEMULE_TEST_SQLITE_TEMPLATE"
KILLERS_KEPT = 3  # tests remembered per function, the latest first
# This session's file of killers (None when no mutant is active), set as the session starts: tests
# may change the environment it is derived from.
_killers_file: Path | None = None
MEMORY_LIMIT = 4 << 30  # bytes of address space; a test session uses well under one
# Module -> names of its module-level caches of built statements (filled on first use).
STATEMENT_CACHES = {"scalemule.core.jobs": ("_UPDATES", "_CLAIMS", "_FENCED", "_EXPIRED")}


def pytest_configure(config: pytest.Config) -> None:
    global _killers_file
    gc.freeze()
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > MEMORY_LIMIT:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, hard))
    if TEMPLATE_ENV not in os.environ:
        # Set in mutmut's own process, so every forked session inherits it; removed when that ends
        # (the forked sessions leave through os._exit, which skips atexit).
        directory = Path(tempfile.mkdtemp(prefix="scalemule-mutation-"))
        os.environ[TEMPLATE_ENV] = str(directory / "template.db")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    # Beside the shared template, in the directory that mutmut's own process made and removes.
    _killers_file = (
        Path(os.environ[TEMPLATE_ENV]).with_name(f"killers-{mutant.rsplit('__mutmut_', 1)[0]}")
        if "__mutmut_" in mutant
        else None
    )


def _allowed(root: Path) -> frozenset[str]:
    """The test files the active mutant's module may run (every group's when no mutant is active)."""
    tool = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]
    groups = tool["scalemule"]["mutation"]
    if ungrouped := set(tool["mutmut"]["only_mutate"]) - {m for group in groups for m in group["modules"]}:
        raise pytest.UsageError(f"mutated but in no [[tool.scalemule.mutation]] group: {sorted(ungrouped)}")
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if "__mutmut_" not in mutant:
        return frozenset(test for group in groups for test in group["tests"])
    module = mutant.split(".x", 1)[0]  # scalemule.dispatch.xǁDispatcherǁcall__mutmut_12
    (group,) = (g for g in groups if module in {_dotted(m) for m in g["modules"]})
    return frozenset(group["tests"])


def _dotted(path: str) -> str:
    return path.removeprefix("src/").removesuffix(".py").replace("/", ".")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    allowed = _allowed(config.rootpath)
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        item._nodeid = item.nodeid  # type: ignore[attr-defined]
        (kept if item.nodeid.split("::", 1)[0] in allowed else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    rank = {nodeid: place for place, nodeid in enumerate(_killers())}
    # A stable sort: the killers first, in their order, then everything else as mutmut ordered it.
    items[:] = sorted(kept, key=lambda item: rank.get(item.nodeid, len(rank)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = _killers_file
    if report.failed and path is not None:
        latest = [report.nodeid, *(nodeid for nodeid in _killers() if nodeid != report.nodeid)]
        # Written whole, then renamed into place: the other worker never reads half a file.
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text("\n".join(latest[:KILLERS_KEPT]), encoding="utf-8")
        os.replace(partial, path)


def _killers() -> list[str]:
    """The tests that killed earlier mutants of the active mutant's function, the latest first."""
    if _killers_file is None or not _killers_file.is_file():
        return []
    return _killers_file.read_text(encoding="utf-8").split("\n")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for module_name, names in STATEMENT_CACHES.items():
        module = sys.modules.get(module_name)
        for name in names if module is not None else ():
            getattr(module, name).clear()
