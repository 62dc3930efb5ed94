"""The daemon's request errors: each becomes an `error` reply with its code."""

from __future__ import annotations

from nexus_protocol import Error, ErrorCode

__all__ = ["RequestError"]


class RequestError(Exception):
    """A request that cannot be served; changes nothing."""

    def __init__(self, code: ErrorCode, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def reply(self, request_id: int | None) -> Error:
        return Error(id=request_id, code=self.code.value, message=self.message,
                     retry_after=self.retry_after)
