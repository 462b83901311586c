"""Who is calling AdminService: `authorization: Bearer <key>`, checked in constant time.

For now one operator key (platform scope) comes from `GATEHOUSE_OPERATOR_KEY`; full API
keys with tenant-admin scope come with the admin-security work. The key itself never
reaches a log or the audit trail: actors are named by a short digest of the key.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Sequence

from gatehouse.errors import Unauthenticated
from gatehouse.store.api import Actor

Metadata = Sequence[tuple[str, str | bytes]]


def request_id(metadata: Metadata) -> str:
    """`x-request-id`, else the trace id of a W3C `traceparent`, else a fresh one."""
    traceparent = ""
    for key, value in metadata:
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
            return value
        if key == "traceparent" and isinstance(value, str):
            parts = value.split("-")
            if len(parts) == 4 and len(parts[1]) == 32:
                traceparent = parts[1]
    return traceparent or uuid.uuid4().hex


def key_fingerprint(key: str) -> str:
    """A short, non-reversible name for a key, fit for logs and audit rows."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class AdminAuthenticator:
    def __init__(self, operator_key: str) -> None:
        self._operator = operator_key.encode()
        self._operator_actor = f"operator:{key_fingerprint(operator_key)}" if operator_key else ""

    def authenticate(self, metadata: Metadata, request_id: str) -> Actor:
        header = [v for k, v in metadata if k == "authorization"]
        if not header:
            raise Unauthenticated("missing authorization header (want: Bearer <key>)")
        if len(header) > 1 or not isinstance(header[0], str):
            raise Unauthenticated("exactly one authorization header, please")
        scheme, _, key = header[0].partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("authorization must be 'Bearer <key>'")
        key = key.strip()
        # compare_digest takes time independent of where the strings differ.
        if self._operator and hmac.compare_digest(key.encode(), self._operator):
            return Actor(self._operator_actor, request_id)
        raise Unauthenticated("unknown key", metadata={"key": key_fingerprint(key)})
