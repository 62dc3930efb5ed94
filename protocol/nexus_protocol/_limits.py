"""Limits enforced by the codec, whatever the transport."""

from __future__ import annotations

import attrs

__all__ = ["DEFAULT_LIMITS", "Limits"]


@attrs.frozen
class Limits:
    """Bounds on what one frame may hold.

    Attributes:
        max_frame: largest body in bytes (the length prefix excluded).
        max_key: longest data key, in UTF-8 bytes.
        max_depth: deepest nesting of arrays and maps inside a value.
        max_patch: most keys one `patch` may set and delete together.
    """

    max_frame: int = 1 << 20
    max_key: int = 256
    max_depth: int = 32
    max_patch: int = 256

    def __attrs_post_init__(self) -> None:
        for name in ("max_frame", "max_key", "max_depth", "max_patch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.max_frame > 0xFFFF_FFFF:
            raise ValueError("max_frame must fit the 4-byte length prefix")


DEFAULT_LIMITS = Limits()
