"""The MCP conformance suite's server scenarios that need no fixture pass over HTTP."""

from __future__ import annotations

import pytest

from tests.e2e import conformance


def test_the_conformance_suites_server_scenarios_pass_over_http() -> None:
    reason = conformance.unavailable()
    if reason is not None:
        pytest.skip(reason)
    results = conformance.run()
    assert [r.name for r in results] == list(conformance.SCENARIOS)
    failed = {r.name: r.output for r in results if not r.passed}
    assert failed == {}, "\n\n".join(f"{name}:\n{output}" for name, output in failed.items())
