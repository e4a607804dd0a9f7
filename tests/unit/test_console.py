"""The console script's entry: modules load with the collector paused (surfaces.console)."""

from __future__ import annotations

import gc

from scalemule.surfaces.console import loading


def test_loading_pauses_the_collector_and_resumes_it_after() -> None:
    assert gc.isenabled()
    with loading():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_loading_leaves_a_collector_paused_by_the_caller_paused() -> None:
    gc.disable()
    try:
        with loading():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
