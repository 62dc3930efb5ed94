"""Hypothesis strategies for the protocol, built from the message catalogue.

Each message class declares a `Kind` per field (see `nexus_protocol._messages`);
`messages(cls)` draws that class's fields from the strategy of each kind, so a
field added to the catalogue is covered here without further work. Everything
drawn is valid under the `Limits` given: a peer must accept it.

The factories are cached: building a strategy costs far more than drawing from
it, and tests draw from the same ones over and over.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import attrs
import msgpack
from hypothesis import strategies as st
from nexus_protocol import (
    DEFAULT_LIMITS,
    MESSAGE_TYPES,
    Kind,
    Limits,
    Message,
    Patch,
    Role,
    encode_body,
)
from nexus_protocol import frame as frame_body

from .helpers import nested

UINT64 = 2**64 - 1
# Deep values are drawn as chains (`deep_values`); the general value strategy
# stays shallow so that examples remain small.
SHALLOW = 3

text = st.text(st.characters(codec="utf-8"), max_size=12)


@cache
def scalars() -> st.SearchStrategy[Any]:
    """Every msgpack scalar: nil, bool, integers of any width, floats, str, bin."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), UINT64),
        st.floats(allow_nan=False),  # NaN != NaN would defeat equality
        text,
        st.binary(max_size=12),
    )


@cache
def values(depth: int = SHALLOW) -> st.SearchStrategy[Any]:
    """msgpack values nesting at most `depth` deep, maps keyed by strings."""
    if depth <= 0:
        return scalars()
    inner = values(depth - 1)
    return st.one_of(
        scalars(),
        st.lists(inner, max_size=4),
        st.dictionaries(text, inner, max_size=4),
    )


@cache
def deep_values(depth: int) -> st.SearchStrategy[Any]:
    """Chains of arrays up to exactly `depth` deep, the deepest valid values."""
    return st.integers(0, depth).map(nested)


@cache
def value_within(depth: int) -> st.SearchStrategy[Any]:
    return st.one_of(values(min(depth, SHALLOW)), deep_values(depth))


@cache
def keys(limits: Limits = DEFAULT_LIMITS) -> st.SearchStrategy[str]:
    """Non-empty strings of at most `limits.max_key` UTF-8 bytes."""
    return st.one_of(
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=max(1, limits.max_key // 4)),
        st.text(st.characters(codec="ascii"), min_size=1, max_size=limits.max_key),
    ).filter(lambda k: len(k.encode()) <= limits.max_key)


@cache
def for_kind(kind: Kind, limits: Limits = DEFAULT_LIMITS) -> st.SearchStrategy[Any]:
    """What a field of `kind` may hold (never nil; see `messages`)."""
    depth = limits.max_depth
    few = min(limits.max_patch, 6)
    if kind is Kind.UINT:
        return st.integers(0, UINT64)
    if kind is Kind.FLOAT:
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind is Kind.BOOL:
        return st.booleans()
    if kind is Kind.STR:
        return text
    if kind is Kind.KEY:
        return keys(limits)
    if kind is Kind.VALUE:
        return value_within(depth)
    if kind is Kind.MAP:
        return st.dictionaries(text, value_within(depth - 1), max_size=4)
    if kind is Kind.LIST:
        return st.lists(value_within(depth - 1), max_size=4)
    if kind is Kind.UINTS:
        return st.lists(st.integers(0, UINT64), max_size=4)
    if kind is Kind.KEYS:
        return st.lists(keys(limits), max_size=few)
    if kind is Kind.ENTRIES:
        return st.dictionaries(keys(limits), value_within(depth - 1), max_size=few)
    if kind is Kind.VERSIONS:
        return st.dictionaries(keys(limits), st.integers(0, UINT64), max_size=few)
    raise AssertionError(f"no strategy for {kind}")


@cache
def messages(cls: type[Message] | None = None,
             limits: Limits = DEFAULT_LIMITS) -> st.SearchStrategy[Message]:
    """Valid messages of `cls`, or of any type when `cls` is None.

    A required field always holds a value of its kind; an optional one either
    holds one or keeps its default.
    """
    if cls is None:
        return st.one_of([messages(c, limits) for c in MESSAGE_TYPES.values()])
    fields: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in attrs.fields(cls):  # type: ignore[arg-type]
        strategy = for_kind(f.metadata["kind"], limits)
        if f.default is attrs.NOTHING:
            fields[f.name] = strategy
        else:
            optional[f.name] = strategy
    built = st.fixed_dictionaries(fields, optional=optional).map(lambda kw: cls(**kw))
    if cls is Patch:
        built = built.filter(lambda p: len(p.set) + len(p.delete) <= limits.max_patch)
    return built


@cache
def messages_with_role(*roles: Role,
                       limits: Limits = DEFAULT_LIMITS) -> st.SearchStrategy[Message]:
    return st.one_of([messages(c, limits) for c in MESSAGE_TYPES.values() if c.ROLE in roles])


@cache
def near_messages() -> st.SearchStrategy[dict[str, Any]]:
    """Maps that look like messages: a real tag, real field names, any values."""
    def fill(tag: str) -> st.SearchStrategy[dict[str, Any]]:
        names = [f.name for f in attrs.fields(MESSAGE_TYPES[tag])]  # type: ignore[arg-type]
        return st.dictionaries(st.sampled_from(names), values(2), max_size=len(names)).map(
            lambda d: {"t": tag, **d})
    return st.sampled_from(sorted(MESSAGE_TYPES)).flatmap(fill)


@cache
def frames(limits: Limits = DEFAULT_LIMITS) -> st.SearchStrategy[bytes]:
    """Pieces of a byte stream: valid frames, near-valid frames, frames with
    lying or huge length prefixes, and noise."""
    return st.one_of(
        messages(limits=limits).map(lambda m: frame_body(encode_body(m))),
        near_messages().map(lambda d: frame_body(msgpack.packb(d))),
        values(2).map(lambda v: frame_body(msgpack.packb(v))),
        st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=24)).map(
            lambda t: t[0].to_bytes(4, "big") + t[1]),
        st.binary(max_size=24),
    )

