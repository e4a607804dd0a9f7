"""The ``scalemule`` console script: the command of ``surfaces.cli``, loaded with the collector paused."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def loading() -> Iterator[None]:
    """Pause the garbage collector while modules load.

    Loading makes a few hundred thousand objects that live as long as the process (modules, models,
    tables, schemas): the collector would walk them over and over while they are made, to free nothing
    (about a tenth of a second of a server's start).
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def main() -> int:
    """Run the ``scalemule`` command (``surfaces.cli.main``)."""
    with loading():
        from scalemule.surfaces.cli import main as command
    return command()
