"""Shared benchmark machinery: stores, stdio servers and clients, interleaving, the summary table.

HTTP servers, clients and load windows are in ``_http.py``.

Every figure is compared with a baseline measured in the same run: the SDK's own floor, a bare
low-level ``mcp.server.Server`` over the same transport (``bare_server.py``). Calls and load windows
alternate between baseline and subject, one of each per round, so drift in machine load hits both.

A benchmark that meets a failed call stops with :class:`BenchError`; ``run`` prints it and exits 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TextIO

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

HERE = Path(__file__).resolve().parent
BARE_SERVER = str(HERE / "bare_server.py")
SCALEMULE = str(Path(sys.executable).with_name("scalemule"))
POSTGRES_ADMIN_URL = os.environ.get("SCALEMULE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
PROTOCOL = "2026-07-28"
CLIENT_INFO = types.Implementation(name="scalemule-bench", version="1.0")
STARTUP_TIMEOUT = 60.0
CALL_TIMEOUT = 120.0
StoreKind = Literal["sqlite", "postgresql"]


class BenchError(Exception):
    """A call failed or a server did not start: the figures would be wrong, so the run stops."""


# ---------------------------------------------------------------------------------------------------
# Statistics


def percentile(samples: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile of ``samples``."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def median(samples: Sequence[float]) -> float:
    """The 50th percentile."""
    return percentile(samples, 50)


# ---------------------------------------------------------------------------------------------------
# Rows of the summary table


@dataclass(frozen=True)
class Target:
    """A bound on a ratio: ``<=`` for costs (lower is better), ``>=`` for throughput."""

    op: Literal["<=", ">="]
    value: float
    unit: str = "x"

    def met(self, figure: float) -> bool:
        """Whether ``figure`` is within the bound."""
        return figure <= self.value if self.op == "<=" else figure >= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}{self.unit}"


@dataclass(frozen=True)
class Row:
    """One line of the summary: what was measured, the figures, the ratio judged, its target."""

    path: str
    store: str
    figures: str
    ratio: float | None
    target: Target | None
    judged: float | None = None  # the number the target applies to, when not the ratio (e.g. ms)
    ratio_unit: str = "x"

    @property
    def verdict(self) -> str:
        """PASS, OVER, or info (no target)."""
        if self.target is None:
            return "info"
        value = self.judged if self.judged is not None else self.ratio
        assert value is not None
        return "PASS" if self.target.met(value) else "OVER"

    def cells(self) -> list[str]:
        """The row's cells for the Markdown table."""
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}{self.ratio_unit}"
        return [
            self.path,
            self.store,
            self.figures,
            ratio,
            "" if self.target is None else str(self.target),
            self.verdict,
        ]


def table(rows: Sequence[Row]) -> str:
    """``rows`` as a Markdown table."""
    head = ["path", "store", "measured (this run)", "ratio", "target", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    """Seconds as a short millisecond figure."""
    return f"{seconds * 1000:.2f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


# ---------------------------------------------------------------------------------------------------
# Stores


@dataclass
class Store:
    """A fresh store made by ``scalemule init --json`` (tenant ``bench``), and how to reach it."""

    kind: StoreKind
    env: dict[str, str]
    database_url: str
    made: dict[str, Any]
    schema: str | None = None

    @property
    def agent_key(self) -> str:
        """The key of the agent ``init`` creates (role developer: config, storage, audit:read)."""
        return str(self.made["agent_key"])

    @property
    def tenant_id(self) -> str:
        """The ``bench`` tenant's id (also its audit chain)."""
        return str(self.made["tenant"]["id"])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``SCALEMULE_*`` variable, plus ``extra``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SCALEMULE_")} | extra


async def scalemule_cli(env: dict[str, str], *argv: str) -> str:
    """Run ``scalemule argv...`` to completion; returns its stdout.

    Raises:
        BenchError: it exited non-zero.
    """
    done = await anyio.run_process([SCALEMULE, *argv], env=env, check=False)
    if done.returncode != 0:
        out = (done.stdout or done.stderr).decode(errors="replace").strip()
        raise BenchError(f"scalemule {' '.join(argv)} failed ({done.returncode}): {out[-2000:]}")
    return done.stdout.decode()


async def _postgres(sql: str) -> None:
    import sqlalchemy as sa

    from scalemule.db.engine import create_engine

    engine = create_engine(POSTGRES_ADMIN_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await engine.dispose()


@asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A fresh PostgreSQL schema at ``SCALEMULE_BENCH_POSTGRES`` for one run, dropped afterwards;
    yields the database URL that selects it."""
    schema = f"sm_bench_{os.getpid()}_{secrets.token_hex(4)}"
    await _postgres(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{POSTGRES_ADMIN_URL}?search_path={schema}"
    finally:
        with anyio.CancelScope(shield=True):
            await _postgres(f'DROP SCHEMA "{schema}" CASCADE')


async def open_store(kind: StoreKind, workdir: Path) -> Store:
    """Initialise a fresh store: SQLite in ``workdir``, or a new PostgreSQL schema.

    Raises:
        BenchError: ``scalemule init`` failed or PostgreSQL is unreachable.
    """
    data_dir = workdir / f"store-{kind}"
    env = clean_env(SCALEMULE_DATA_DIR=str(data_dir))
    schema = None
    if kind == "postgresql":
        schema = f"sm_bench_{os.getpid()}_{secrets.token_hex(4)}"
        try:
            await _postgres(f'CREATE SCHEMA "{schema}"')
        except Exception as exc:  # any driver error: say where PostgreSQL was expected
            raise BenchError(f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {exc}") from None
        env["SCALEMULE_DATABASE_URL"] = f"{POSTGRES_ADMIN_URL}?search_path={schema}"
    try:
        made = json.loads(await scalemule_cli(env, "init", "--json", "--tenant", "bench"))
    except BaseException:
        if schema is not None:
            with anyio.CancelScope(shield=True):
                await _postgres(f'DROP SCHEMA "{schema}" CASCADE')
        raise
    url = env.get("SCALEMULE_DATABASE_URL") or f"sqlite:///{(data_dir / 'scalemule.db').resolve()}"
    return Store(kind, env, url, made, schema)


async def close_store(store: Store) -> None:
    """Drop the store's PostgreSQL schema (SQLite stores go with the work directory)."""
    if store.schema is not None:
        await _postgres(f'DROP SCHEMA "{store.schema}" CASCADE')


# ---------------------------------------------------------------------------------------------------
# MCP clients over stdio


def result_error(result: types.CallToolResult) -> str | None:
    """The text of an error result, or None."""
    if not result.is_error:
        return None
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent)) or "(no text)"


class Stdio:
    """An official MCP client connected over stdio to a server this harness started."""

    def __init__(self, name: str, client: Client, log: Path, pid_file: Path) -> None:
        self.name = name
        self.client = client
        self.log = log
        self.pid_file = pid_file

    @property
    def pid(self) -> int:
        """The server process's id (for its CPU time and peak RSS)."""
        return int(self.pid_file.read_text())

    async def call(self, tool: str, args: dict[str, Any]) -> types.CallToolResult:
        """Call ``tool``; an error result stops the run.

        Raises:
            BenchError: the call returned an error.
        """
        result = await self.client.call_tool(tool, args)
        error = result_error(result)
        if error is not None:
            raise BenchError(f"{self.name}: {tool} failed: {error[:500]}")
        return result


@asynccontextmanager
async def stdio(name: str, argv: list[str], env: dict[str, str], workdir: Path) -> AsyncIterator[Stdio]:
    """Start ``argv`` as a stdio MCP server (stderr to a log file) and connect the official client."""
    tag = f"{name.replace(' ', '-')}-{secrets.token_hex(3)}"
    log, pid_file = workdir / f"{tag}.log", workdir / f"{tag}.pid"
    # `exec` keeps the shell's pid, so the pid written is the server's own.
    wrapped = ["-c", 'echo $$ > "$0"; exec "$@"', str(pid_file), *argv]
    params = StdioServerParameters(command="/bin/sh", args=wrapped, env=env)
    with log.open("w") as errlog:
        try:
            async with Client(
                stdio_client(params, errlog=errlog), client_info=CLIENT_INFO, read_timeout_seconds=CALL_TIMEOUT
            ) as client:
                yield Stdio(name, client, log, pid_file)
        except Exception as exc:
            bench_error = _find_bench_error(exc)
            if bench_error is not None:
                raise bench_error from None
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise BenchError(f"{name}: {describe(exc)}\nserver log tail:\n{tail}") from exc


def _find_bench_error(exc: BaseException) -> BenchError | None:
    if isinstance(exc, BenchError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_bench_error(inner)
            if found is not None:
                return found
    return None


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, or of every leaf of an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def scalemule_stdio(store: Store, workdir: Path, *serve_args: str) -> Any:
    """``scalemule serve`` over stdio on ``store``, as its agent, with every toolset."""
    env = store.env | {"SCALEMULE_API_KEY": store.agent_key}
    return stdio(f"scalemule-{store.kind}", [SCALEMULE, "serve", "--toolsets", "all", *serve_args], env, workdir)


def bare_stdio(workdir: Path, mode: str = "lowlevel-stdio") -> Any:
    """The bare SDK server over stdio (``bare_server.py``)."""
    return stdio(f"bare-{mode}", [sys.executable, BARE_SERVER, mode], clean_env(), workdir)


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) the process has used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int:
    """The process's peak resident set (``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmHWM for process {pid}")


# ---------------------------------------------------------------------------------------------------
# Interleaved latency


Timed = Callable[[], Awaitable[object]]


async def interleave(
    ops: Sequence[tuple[str, Timed]], rounds: int, warmup: int, *, budget: float, min_rounds: int = 1
) -> dict[str, list[float]]:
    """Run each op once per round, in turn, after ``warmup`` unrecorded rounds; returns seconds per op.

    Stops after ``rounds`` rounds, or earlier once ``budget`` seconds have passed and ``min_rounds``
    are recorded: on a busy machine the run stays within its time, with fewer samples.
    """
    samples: dict[str, list[float]] = {label: [] for label, _ in ops}
    for _ in range(warmup):
        for _label, op in ops:
            await op()
    deadline = time.perf_counter() + budget
    for r in range(rounds):
        if r >= min_rounds and time.perf_counter() > deadline:
            break
        for label, op in ops:
            started = time.perf_counter()
            await op()
            samples[label].append(time.perf_counter() - started)
    return samples


# ---------------------------------------------------------------------------------------------------
# The run


@dataclass
class Bench:
    """One run: its options, its stores (made on first use, shared by the areas), its rows."""

    quick: bool
    kinds: tuple[StoreKind, ...]
    workdir: Path
    out: TextIO = sys.stdout
    rows: list[Row] = field(default_factory=list)
    _stores: dict[str, Store] = field(default_factory=dict)

    def size(self, full: int, quick: int) -> int:
        """``full`` or, in a quick run, ``quick``."""
        return quick if self.quick else full

    def seconds(self, full: float, quick: float) -> float:
        """``full`` or, in a quick run, ``quick``."""
        return quick if self.quick else full

    async def store(self, kind: StoreKind) -> Store:
        """The run's store of ``kind``, initialised on first use."""
        if kind not in self._stores:
            self._stores[kind] = await open_store(kind, self.workdir)
        return self._stores[kind]

    def add(self, row: Row) -> None:
        """Record a summary row and echo it under the current section."""
        self.rows.append(row)
        ratio = "" if row.ratio is None else f"  ratio {row.ratio:.2f}{row.ratio_unit}"
        target = "" if row.target is None else f"  target {row.target}"
        self.say(f"  {row.path} [{row.store}]: {row.figures}{ratio}{target}  {row.verdict}")

    def say(self, text: str) -> None:
        """Print a detail line now (the summary comes at the end)."""
        print(text, file=self.out, flush=True)

    async def close(self) -> None:
        """Drop the run's stores."""
        for store in self._stores.values():
            await close_store(store)


Area = Callable[[Bench], Awaitable[None]]


def _machine() -> str:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({model})"


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} / {five:.1f}"


async def _run(areas: Sequence[tuple[str, Area]], bench: Bench) -> None:
    try:
        for name, area in areas:
            bench.say(f"\n== {name} ==")
            started = time.perf_counter()
            await area(bench)
            bench.say(f"  ({time.perf_counter() - started:.0f} s)")
    finally:
        with anyio.CancelScope(shield=True):
            await bench.close()


def run(areas: Sequence[tuple[str, Area]], description: str, argv: Sequence[str] | None = None) -> int:
    """Parse the common options, run ``areas`` in order, print the summary; 1 if a call failed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="fewer samples and logs up to 100k events: for iterating, not for judging"
    )
    parser.add_argument(
        "--stores", default="sqlite,postgresql", help="comma list of sqlite, postgresql (default: both)"
    )
    names = [name for name, _ in areas]
    if len(areas) > 1:
        parser.add_argument("--only", help=f"comma list of areas to run: {', '.join(names)}")
    options = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in options.stores.split(",") if k.strip())
    if not kinds or any(k not in ("sqlite", "postgresql") for k in kinds):
        parser.error("--stores takes sqlite and/or postgresql")
    chosen = list(areas)
    if getattr(options, "only", None):
        wanted = {w.strip() for w in options.only.split(",")}
        unknown = wanted - set(names)
        if unknown:
            parser.error(f"unknown areas {sorted(unknown)}; choose from {names}")
        chosen = [(n, a) for n, a in areas if n in wanted]
    started = time.perf_counter()
    versions = f"Python {platform.python_version()}, mcp {metadata.version('mcp')}"
    load_before = _load()
    print(f"ScaleMule benchmarks: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {_machine()}, {versions}")
    print(
        f"mode: {'quick' if options.quick else 'full'}; stores: {', '.join(kinds)};"
        f" load average (1/5 min) {load_before}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="scalemule-bench-"))
    bench = Bench(quick=options.quick, kinds=kinds, workdir=workdir)  # type: ignore[arg-type]
    failure: BenchError | None = None
    try:
        anyio.run(_run, chosen, bench)
    except Exception as exc:
        failure = _find_bench_error(exc)
        if failure is None:
            raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - started
    print(f"\nSummary ({elapsed / 60:.1f} min; load average before {load_before}, after {_load()}):\n")
    print(table(bench.rows))
    if failure is not None:
        print(f"\nFAILED: {failure}", file=sys.stderr)
        return 1
    verdicts = [row.verdict for row in bench.rows]
    print(f"\n{len(verdicts)} rows: {verdicts.count('PASS')} PASS, {verdicts.count('OVER')} OVER")
    return 0
