"""No input, however malformed, crashes a call, surfaces as `internal`, or leaves a partial write.

Every case goes through every registered operation, so operations added later are covered too. Inputs
the argument model refuses are checked in one batch per operation; inputs it accepts (and that reach the
handler with odd content) are checked one by one.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from scalemule.core.errors import ERROR_CODES
from scalemule.dispatch import Invocation, Outcome
from scalemule.operations import REGISTRY, Operation
from tests.conftest import StoreProbe, World

pytestmark = pytest.mark.anyio

STABLE_CODES = frozenset(ERROR_CODES) - {"internal"}
MEGABYTE = "x" * 1_000_000


def _nested(depth: int, leaf: Any, *, as_list: bool = False) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


NASTY_VALUES: list[Any] = [
    MEGABYTE,
    "\x00",
    "\ud800",
    "",
    "'; DROP TABLE tenants; --",
    "\u202egnp.exe",
    _nested(500, "deep"),
    _nested(500, "deep", as_list=True),
    10**100,
    math.nan,
    None,
]
# The tenant argument is read by dispatch itself, the same way for every operation.
NASTY_TENANTS: list[Any] = [MEGABYTE, "\x00", "\ud800", "", {"slug": "acme"}]

NOT_AN_OBJECT: list[Any] = [["a"], MEGABYTE, 7, _nested(500, "deep", as_list=True)]

# Values tried in turn for each required argument until the model accepts them all (a base call that
# reaches the handler, so a single bad field is what the handler sees).
_CANDIDATES: list[Any] = ["dev", "x-1", "viewer", "alice@example.com", 1, True, ["config:read"], {"a": 1}]


def _valid(op: Operation, arguments: Any) -> bool:
    try:
        op.args_model.model_validate(arguments)
    except ValidationError:
        return False
    return True


def _base(op: Operation) -> dict[str, Any]:
    fields = op.args_model.model_fields
    chosen = {name: 0 for name, info in fields.items() if info.is_required()}
    extra = {"tenant": "acme"} if op.tenant_scoped else {}
    for _ in _CANDIDATES:
        arguments = {name: _CANDIDATES[i] for name, i in chosen.items()} | extra
        try:
            op.args_model.model_validate(arguments)
            return arguments
        except ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"] and e["loc"][0] in chosen}
            if not bad:
                return arguments
            for name in bad:
                chosen[name] = min(chosen[name] + 1, len(_CANDIDATES) - 1)
    return {name: _CANDIDATES[i] for name, i in chosen.items()} | extra


def _cases(op: Operation) -> list[Any]:
    base = _base(op)
    cases: list[Any] = list(NOT_AN_OBJECT)
    for name in op.args_model.model_fields:
        if name != "tenant":
            cases += [{**base, name: value} for value in NASTY_VALUES]
    cases += [{**base, "tenant": value} for value in NASTY_TENANTS]
    cases += [{**base, "no_such_argument": 1}, {**base, "k" * 10_000: "\x00"}]
    return cases


def _invocation(op: Operation, arguments: Any, token: str) -> Invocation:
    resource = None if op.tool else f"scalemule://test/{op.name}"
    return Invocation(op.name, arguments, token, "stdio", client_name="fuzz", resource=resource)


def _check_code(op: Operation, outcome: Outcome, arguments: Any) -> None:
    if outcome.error is not None:
        assert outcome.error.code in STABLE_CODES, (op.name, outcome.error.text, repr(arguments)[:200])
        assert outcome.result is None


async def test_arguments_the_model_refuses_are_errors_that_change_nothing(world: World, probe: StoreProbe) -> None:
    for op in REGISTRY.values():
        refused = [c for c in _cases(op) if not _valid(op, c)]
        before, count = await probe.rows(), await probe.audit_count()
        event_ids = set()
        for arguments in refused:
            outcome = await world.dispatcher.call(_invocation(op, arguments, world.owner))
            assert outcome.error is not None, (op.name, repr(arguments)[:200])
            _check_code(op, outcome, arguments)
            event_ids.add(outcome.event_id)
        assert len(event_ids) == len(refused)
        assert await probe.audit_count() == count + len(refused), f"{op.name}: not one audit event per call"
        assert await probe.rows() == before, f"{op.name}: a refused call changed the store"


async def test_odd_content_the_model_accepts_never_fails_as_internal(world: World, probe: StoreProbe) -> None:
    for op in REGISTRY.values():
        for arguments in (c for c in _cases(op) if _valid(op, c)):
            before, count = await probe.rows(), await probe.audit_count()
            outcome = await world.dispatcher.call(_invocation(op, arguments, world.owner))
            _check_code(op, outcome, arguments)
            assert await probe.audit_count() == count + 1, op.name
            if outcome.error is not None:
                assert await probe.rows() == before, (op.name, repr(arguments)[:200])


# --- Random arguments ------------------------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["", "\x00", "acme", "dev", "x" * 300, "\ud800", "smk_", "owner", "viewer", "config:read"])
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@st.composite
def _calls(draw: st.DrawFn) -> tuple[Operation, Any]:
    op = draw(st.sampled_from(list(REGISTRY.values())))
    if draw(st.integers(0, 9)) == 0:
        return op, draw(_JSON)
    names = [*op.args_model.model_fields, "tenant", "extra"]
    arguments = draw(st.dictionaries(st.sampled_from(names), _JSON, max_size=len(names)))
    if op.tenant_scoped and "tenant" not in arguments:
        arguments["tenant"] = "acme"
    return op, arguments


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(call=_calls())
async def test_random_arguments_never_crash_fail_as_internal_or_write_on_error(
    world: World, probe: StoreProbe, call: tuple[Operation, Any]
) -> None:
    op, arguments = call
    before, count = await probe.rows(), await probe.audit_count()
    outcome = await world.dispatcher.call(_invocation(op, arguments, world.owner))
    _check_code(op, outcome, arguments)
    assert await probe.audit_count() == count + 1
    if outcome.error is not None:
        assert await probe.rows() == before
