"""The audited unit of work's rules that need no store: sources, and one copy of each rule."""

from __future__ import annotations

from pathlib import Path

from scalemule.core.unit_of_work import network_source

SRC = Path(__file__).parents[2] / "src" / "scalemule"


def test_refused_requests_from_one_ipv6_64_share_a_source() -> None:
    assert network_source("2001:db8:1:2:aaaa::1") == network_source("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert network_source("2001:db8:1:3::1") != network_source("2001:db8:1:2::1")


def test_ipv4_addresses_mapped_or_not_are_their_own_source() -> None:
    assert network_source("192.0.2.7") == network_source("::ffff:192.0.2.7") == "192.0.2.7"
    assert network_source(None) == "unknown"


def test_core_knows_neither_the_runtime_nor_http_paths() -> None:
    for path in (SRC / "core").glob("*.py"):
        text = path.read_text()
        assert "scalemule.runtime" not in text, path.name
        assert '"/blobs/"' not in text, path.name


def test_the_outcome_of_a_failed_call_is_decided_in_one_place() -> None:
    copies = [p for p in SRC.rglob("*.py") if "PermissionDenied | Unauthenticated" in p.read_text()]
    assert [p.name for p in copies] == ["unit_of_work.py"]
