"""pytest plugin loaded for mutation runs only: mutmut 3.8 reads ``item._nodeid``, which pytest 9.2 no longer sets.

Remove it once mutmut reads the public ``item.nodeid``.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item._nodeid = item.nodeid  # type: ignore[attr-defined]
