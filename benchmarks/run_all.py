"""Every ScaleMule benchmark in one run, ending with one summary table of ratios, targets and verdicts.

Each row of the performance targets is printed with its figures, its ratio to a baseline measured in
the same run, its target and PASS/OVER. Areas, in order (``--only`` picks some): ``latency`` (stdio),
``http`` (16 keep-alive clients, blind sets), ``storage`` (16 MiB through MCP, peak RSS, signed URLs),
``startup`` (spawn to first tools/list), ``audit`` (last: it grows the audit log to a million events,
then measures readers beside a slow audit query).

Usage: ``make bench`` or ``.venv/bin/python benchmarks/run_all.py [--quick] [--only AREA,...]
[--stores sqlite,postgresql]``. It exits 1 if a call fails, 0 otherwise (OVER rows included).
"""

from __future__ import annotations

import sys

import audit_log
import http_concurrency
import startup
import storage_mcp
import tool_call_latency
from _harness import run

AREAS = [
    *tool_call_latency.AREAS,
    *http_concurrency.AREAS,
    *storage_mcp.AREAS,
    *startup.AREAS,
    *audit_log.AREAS,
]

if __name__ == "__main__":
    sys.exit(run(AREAS, __doc__.splitlines()[0] if __doc__ else ""))
