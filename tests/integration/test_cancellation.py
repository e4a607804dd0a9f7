from __future__ import annotations

import dataclasses
import functools
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from scalemule.core.audit import AuditEvent
from scalemule.db.tables import audit_events, config_entries
from scalemule.operations import REGISTRY
from tests.conftest import World

pytestmark = pytest.mark.anyio


async def test_a_cancelled_call_is_rolled_back_and_recorded_as_cancelled(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrote = anyio.Event()
    original = REGISTRY["config_set"].handler

    async def write_then_hang(call: Any, args: Any) -> Any:
        await original(call, args)  # the write is made, then the client gives up before the commit
        wrote.set()
        await anyio.sleep_forever()

    monkeypatch.setitem(REGISTRY, "config_set", dataclasses.replace(REGISTRY["config_set"], handler=write_then_hang))
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(world.call, "config_set", world.agent, env="dev", key="k", value=1))
        with anyio.fail_after(5):
            await wrote.wait()
        tg.cancel_scope.cancel()

    async with world.dispatcher.runtime.db.transaction() as conn:
        written = (await conn.execute(sa.select(sa.func.count()).select_from(config_entries))).scalar_one()
        row = (await conn.execute(sa.select(audit_events).order_by(audit_events.c.seq.desc()).limit(1))).one()
    last = AuditEvent.from_row(row)
    assert written == 0
    assert (last.operation, last.outcome, last.actor_name) == ("config_set", "cancelled", "acme-agent")
    # Recorded as the operation it was: its permission, and its arguments by field.
    assert (last.permission, last.args) == ("config:write", {"env": "dev", "key": "k", "value": 1})
