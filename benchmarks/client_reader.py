"""The official client's stdio reader: its time for one message grows with the square of the message.

Why a server cannot make a 16 MiB object inline fast for that client: ``mcp.client.stdio`` reads the
server's stdout 64 KiB at a time and, on every read, joins the new text to everything not yet ended by
a newline and splits the whole again (``lines = (buffer + chunk).split("\\n")``). A message of n bytes
costs about n^2 / 128 KiB bytes of copying and scanning. Two figures, each against a baseline in the
same run:

- the official client reading one result of 2, 4, 8 and 16 MiB (as base64) from the bare SDK server
  over stdio: each doubling of the message should take about 2x if reading were linear;
- that reader's loop alone, fed the 64 KiB pieces of one 16 MiB object's message, against the same
  loop splitting only each new piece (what a linear reader does).

Usage: ``.venv/bin/python benchmarks/client_reader.py``. Not part of ``make bench``: it measures the
SDK's client, not ScaleMule.
"""

from __future__ import annotations

import sys
import time

from _harness import Bench, Row, bare_stdio, median, run

MIB = 1 << 20
PIECE = 64 << 10


def _sdk_loop(pieces: list[str]) -> int:
    """The client's loop as it is: join and re-split the whole unfinished buffer on every piece."""
    lines, buffer = 0, ""
    for chunk in pieces:
        parts = (buffer + chunk).split("\n")
        buffer = parts.pop()
        lines += len(parts)
    return lines


def _linear_loop(pieces: list[str]) -> int:
    """The same loop splitting only each new piece, joining a line's pieces once when it ends."""
    lines: list[str] = []
    pending: list[str] = []
    for chunk in pieces:
        *ended, rest = chunk.split("\n")
        if ended:
            lines += ["".join([*pending, ended[0]]), *ended[1:]]
            pending = []
        pending.append(rest)
    return len(lines)


async def reader(bench: Bench) -> None:
    """Time the official client reading growing messages, then the reader's loop on its own."""
    times: dict[int, list[float]] = {}
    async with bare_stdio(bench.workdir) as bare:
        await bare.call("noop", {})
        for _ in range(bench.size(3, 1)):
            for mib in (2, 4, 8, 16):
                started = time.perf_counter()
                await bare.call("blob", {"size": mib * MIB})
                times.setdefault(mib, []).append(time.perf_counter() - started)
    for mib in (4, 8, 16):
        mine, half = median(times[mib]), median(times[mib // 2])
        figures = f"{mine:.2f} s vs {half:.2f} s for {mib // 2} MiB"
        bench.add(Row(f"official client reading {mib} MiB as base64 over stdio", "-", figures, mine / half, None))
    line = "A" * (16 * MIB * 4 // 3) + "\n"
    pieces = [line[i : i + PIECE] for i in range(0, len(line), PIECE)]
    took = {}
    for name, loop in (("sdk", _sdk_loop), ("linear", _linear_loop)):
        started = time.perf_counter()
        assert loop(pieces) == 1
        took[name] = time.perf_counter() - started
    figures = f"{took['sdk']:.2f} s vs {took['linear'] * 1000:.1f} ms splitting only new pieces ({len(pieces)} reads)"
    bench.add(
        Row(
            "the client's reader loop over one 16 MiB object's message",
            "-",
            figures,
            took["sdk"] / took["linear"],
            None,
        )
    )


AREAS = [("client reader", reader)]

if __name__ == "__main__":
    sys.exit(run(AREAS, __doc__.splitlines()[0] if __doc__ else ""))
