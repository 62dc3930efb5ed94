"""protocol/SPEC.md and the code describe the same protocol.

The tests read SPEC.md's tables (messages and their fields, kinds, errors,
states, limits) and compare them with the catalogue, `ErrorCode`,
`TRANSITIONS` and `DEFAULT_LIMITS`, so that neither can change alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
from nexus_protocol import (
    DEFAULT_LIMITS,
    FATAL_CODES,
    MESSAGE_TYPES,
    TRANSITIONS,
    ConnectionState,
    ErrorCode,
    Kind,
    Request,
    Role,
    SessionEvent,
    SessionRequest,
    Side,
)

SPEC = (Path(__file__).resolve().parents[2] / "protocol" / "SPEC.md").read_text(encoding="utf-8")


def section(heading: str) -> str:
    """The text under the heading that starts with `heading`, up to the next
    heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}.*$", SPEC, re.MULTILINE)
    assert match, f"no heading {heading!r} in SPEC.md"
    level = len(match.group(1))
    rest = SPEC[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[:end.start()] if end else rest


def rows(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in `text`, as lists of cells."""
    lines = text.splitlines()
    found = []
    for line, after in zip(lines, [*lines[1:], ""], strict=True):
        if not line.startswith("|") or _separator(line) or _separator(after):
            continue  # not a table, or a header and its separator
        found.append([c.strip() for c in line.strip().strip("|").split("|")])
    return found


def _separator(line: str) -> bool:
    return line.startswith("|") and set(line) <= set("|-: ")


def code(cell: str) -> str:
    """`x` -> x."""
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, f"expected a single code span, got {cell!r}"
    return match.group(1)


MESSAGE_HEADINGS = re.findall(r"^#### `([a-z_]+)`$", SPEC, re.MULTILINE)


def test_every_message_has_a_heading_and_every_heading_is_a_message() -> None:
    assert sorted(MESSAGE_HEADINGS) == sorted(MESSAGE_TYPES)
    assert len(MESSAGE_HEADINGS) == len(set(MESSAGE_HEADINGS))


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
def test_message_role_matches(tag: str) -> None:
    match = re.search(r"^Role: \*\*(\w+)\*\*", section(f"`{tag}`"), re.MULTILINE)
    assert match, f"no Role line for {tag}"
    assert match.group(1) == MESSAGE_TYPES[tag].ROLE.value


def presence(cell: str) -> tuple[bool, Any]:
    """(required, default) from a Presence cell."""
    if cell == "required":
        return True, attrs.NOTHING
    if cell == "optional":
        return False, None
    match = re.fullmatch(r"default `(.+)`", cell)
    assert match, f"unreadable presence {cell!r}"
    return False, json.loads(match.group(1))


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
def test_message_fields_match(tag: str) -> None:
    table = [r for r in rows(section(f"`{tag}`")) if r[0] != "Field"]
    spec = [(code(name), kind, *presence(where)) for name, kind, where, _ in table]
    fields = attrs.fields(MESSAGE_TYPES[tag])  # type: ignore[arg-type]
    ours = []
    for f in fields:
        default = f.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        ours.append((f.name, f.metadata["kind"].value, default is attrs.NOTHING, default))
    assert spec == ours


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
def test_message_base_matches_its_role(tag: str) -> None:
    # The daemon routes on these bases: a request about a session (one with a
    # `session_id` field, section 7.2) goes to that session.
    cls = MESSAGE_TYPES[tag]
    names = [code(r[0]) for r in rows(section(f"`{tag}`")) if r[0] != "Field"]
    request = cls.ROLE is Role.REQUEST
    assert issubclass(cls, Request) == request
    assert issubclass(cls, SessionRequest) == (request and "session_id" in names)
    assert issubclass(cls, SessionEvent) == (cls.ROLE is Role.EVENT)


def test_roles_overview_lists_each_message_under_its_role() -> None:
    listed: dict[str, set[str]] = {}
    for role, _, messages in rows(section("1. Overview")):
        if role in {r.value for r in Role}:
            listed[role] = set(re.findall(r"`([a-z_]+)`", messages)) & set(MESSAGE_TYPES)
    # An error with a nil id counts as shutdown.
    listed[Role.SHUTDOWN.value].discard("error")
    assert listed == {
        role.value: {t for t, c in MESSAGE_TYPES.items() if c.ROLE is role} for role in Role
    }


def test_reply_table_covers_every_request() -> None:
    answered: set[str] = set()
    for requests, replies in rows(section("6.2")):
        named = set(re.findall(r"`([a-z_]+)`", requests))
        answered |= named
        assert set(re.findall(r"`([a-z_]+)`", replies)) & set(MESSAGE_TYPES), replies
    requests = {t for t, c in MESSAGE_TYPES.items() if c.ROLE is Role.REQUEST}
    assert answered == requests


def test_every_kind_is_described() -> None:
    assert [code(r[0]) for r in rows(section("4. Field kinds"))] == [k.value for k in Kind]


def test_error_table_matches_the_codes() -> None:
    table = {code(r[0]): r[-1] for r in rows(section("12. Errors"))}
    assert list(table) == [c.value for c in ErrorCode]
    fatal = {c for c, cell in table.items() if cell.startswith("yes")}
    assert fatal == {c.value for c in FATAL_CODES}


def test_state_table_matches_transitions() -> None:
    states = [code(r[0]) for r in rows(section("5.2 States")) if r[0].startswith("`")]
    assert states == [s.value for s in ConnectionState]
    spec = {
        (Side(side), ConnectionState(code(state)), direction, Role(role),
         ConnectionState(code(nxt)))
        for side, state, direction, role, nxt in (
            r for r in rows(section("5.2 States")) if len(r) == 5)
    }
    ours = {
        (side, state, direction, role, nxt)
        for (side, state), moves in TRANSITIONS.items()
        for (direction, role), nxt in moves.items()
    }
    assert spec == ours


def test_limit_defaults_match() -> None:
    table = {code(r[0]): int(r[1]) for r in rows(section("13. Limits")) if r[0].startswith("`")}
    assert table == attrs.asdict(DEFAULT_LIMITS)
