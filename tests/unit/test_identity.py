"""Authentication before the store: what ``identity.authenticate`` refuses without a database lookup."""

from __future__ import annotations

from typing import Any

import pytest

from scalemule.core import identity, tokens
from scalemule.core.errors import Unauthenticated

pytestmark = pytest.mark.anyio


class _Result:
    def first(self) -> None:
        return None


class _CountingConnection:
    """A connection double: counts statements and answers each with no row."""

    def __init__(self) -> None:
        self.statements: list[Any] = []

    async def execute(self, statement: Any, parameters: Any = None) -> _Result:
        self.statements.append(statement)
        return _Result()


def _with_body(body: str) -> str:
    # A token whose checksum matches its body, whatever the body holds.
    return tokens.PREFIX + body + tokens._checksum(body)


_GOOD = tokens.generate()


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param(_GOOD[:10] + ("a" if _GOOD[10] != "a" else "b") + _GOOD[11:], id="typo"),
        pytest.param(_GOOD[:-1], id="truncated"),
        pytest.param(_GOOD + "x", id="one-too-long"),
        pytest.param("sk_x" + _GOOD[4:], id="other-prefix"),
        pytest.param("Bearer " + _GOOD, id="with-scheme"),
        pytest.param(_with_body("-" * tokens.BODY_LENGTH), id="body-outside-base62-with-matching-checksum"),
        pytest.param(_with_body("a" * (tokens.BODY_LENGTH - 1)), id="short-body-with-matching-checksum"),
    ],
)
async def test_a_malformed_token_is_refused_before_any_database_lookup(token: str | None) -> None:
    conn = _CountingConnection()
    with pytest.raises(Unauthenticated) as caught:
        await identity.authenticate(conn, token)  # type: ignore[arg-type]
    assert caught.value.code == "unauthenticated"
    assert conn.statements == []


async def test_a_well_formed_unknown_token_is_looked_up_once_and_refused() -> None:
    # The double above does see lookups: a token of the right shape reaches it.
    conn = _CountingConnection()
    with pytest.raises(Unauthenticated):
        await identity.authenticate(conn, tokens.generate())  # type: ignore[arg-type]
    assert len(conn.statements) == 1
