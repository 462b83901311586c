"""`GatehouseError`: every failed call, with what the server put in its error details.

Gatehouse ends every error with a `google.rpc.Status` in the `grpc-status-details-bin`
trailer: an `ErrorInfo` (a stable `GATEHOUSE_*` reason, domain `gatehouse.dev`) and, for
INVALID_ARGUMENT, a `BadRequest` naming each bad field (the server's server/errors.py).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

DETAILS_TRAILER = "grpc-status-details-bin"


class GatehouseError(Exception):
    """A call that failed.

    `code`: the `grpc.StatusCode`; `message`: the status message; `reason`: the
    `ErrorInfo` reason (`"GATEHOUSE_*"`, `""` when the answer carried none, e.g. a
    deadline or a server that could not be reached); `violations`: `(field, description)`
    pairs from `BadRequest`; `field`: the first violation's field (`""` when none);
    `metadata`: the `ErrorInfo` metadata.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        violations: tuple[tuple[str, str], ...] = (),
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.violations = violations
        self.field = violations[0][0] if violations else ""
        self.metadata = dict(metadata or {})

    def __str__(self) -> str:
        parts = [self.code.name]
        if self.reason:
            parts.append(self.reason)
        text = f"{' '.join(parts)}: {self.message}"
        if self.violations:
            text += " (" + "; ".join(f"{field}: {description}" for field, description in self.violations) + ")"
        return text

    @classmethod
    def from_rpc_error(cls, error: Any) -> GatehouseError:
        """The error a `grpc.RpcError` (sync) or `grpc.aio.AioRpcError` stands for."""
        code: grpc.StatusCode = error.code()
        message: str = error.details() or ""
        reason = ""
        violations: list[tuple[str, str]] = []
        metadata: dict[str, str] = {}
        for key, value in error.trailing_metadata() or ():
            if key != DETAILS_TRAILER or not isinstance(value, bytes):
                continue
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(info):
                    reason, metadata = info.reason, dict(info.metadata)
                elif detail.Unpack(bad):
                    violations.extend((v.field, v.description) for v in bad.field_violations)
        return cls(code, message, reason=reason, violations=tuple(violations), metadata=metadata)
