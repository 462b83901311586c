"""Remembered answers: a request's exact bytes → the bytes of the answer it got.

A sidecar is asked the same few questions over and over (the same service checking the
same users' permissions). The first time, a request is parsed, validated and decided as
usual; its serialized answer is then remembered together with the L1 entries it was
decided from (the tenant's, and the subject's when the decision read it). Asked again,
the answer is served as it is, without parsing, validating or deciding, but only while
`PolicyCache.peek_*` still returns those very entries (the same objects, at or above the
request's `min_revision` and every floor) and before the time the decision itself could
change (an API key's expiry). Since decisions are a pure function of the request, those
entries and the time, a remembered answer is exactly what deciding again would give;
every event, eviction, TTL expiry or reload that changes an entry ends it.

Bounded: at most `max_entries` answers (oldest remembered dropped first), and only for
requests of at most `max_body` bytes. One `Answers` per method, since requests of two
methods can have the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gatehouse.cache.policy_cache import ABSENT, PolicyCache


@dataclass(slots=True)
class Remembered:
    tenant_id: str
    min_revision: int
    tenant: Any  # the CachedTenant (or ABSENT) decided from: compared by identity
    subject_key: str | None  # None: the answer did not depend on a subject
    grants: Any  # the SubjectGrants decided from
    until: float  # unix seconds; the answer may change from then on
    encoded: bytes  # the serialized answer
    framed: bytes  # the same as a length-delimited field 1 (a CheckAccessBatchResponse result)


class Answers:
    def __init__(self, cache: PolicyCache, max_entries: int, *, max_body: int = 2048) -> None:
        self._cache = cache
        self._max_entries = max_entries
        self._max_body = max_body
        self._entries: dict[bytes, Remembered] = {}
        self.hits = 0

    def get(self, body: bytes, now: float) -> Remembered | None:
        """The remembered answer to `body`, if it is still exactly what deciding would give."""
        known = self._entries.get(body)
        if known is None:
            return None
        cache = self._cache
        if (
            now >= known.until
            or cache.peek_tenant(known.tenant_id, known.min_revision) is not known.tenant
            or (
                known.subject_key is not None
                and cache.peek_subject(known.tenant_id, known.subject_key, known.min_revision) is not known.grants
            )
        ):
            del self._entries[body]
            return None
        self.hits += 1
        return known

    def remember(
        self,
        body: bytes,
        tenant_id: str,
        min_revision: int,
        tenant: Any,
        subject_key: str | None,
        grants: Any,
        until: float,
        encoded: bytes,
    ) -> None:
        """Remember `encoded` as the answer to `body`, decided from `tenant` (None: absent)
        and, when `subject_key` is given, `grants`. Only when those are the entries L1
        serves right now: an answer decided from anything else is not remembered."""
        if len(body) > self._max_body or self._max_entries <= 0:
            return
        cache = self._cache
        if cache.peek_tenant(tenant_id, min_revision) is not (ABSENT if tenant is None else tenant):
            return
        if subject_key is not None and (
            grants is None or cache.peek_subject(tenant_id, subject_key, min_revision) is not grants
        ):
            return
        entries = self._entries
        entries[body] = Remembered(
            tenant_id, min_revision, ABSENT if tenant is None else tenant, subject_key, grants, until,
            encoded, frame(encoded),
        )
        if len(entries) > self._max_entries:
            del entries[next(iter(entries))]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


# --- the protobuf wire format, as far as CheckAccessBatch needs it ------------------------


def frame(encoded: bytes) -> bytes:
    """`encoded` as field 1, wire type 2 (length-delimited): tag, varint length, bytes."""
    return b"\x0a" + varint(len(encoded)) + encoded


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def split_field1(body: bytes) -> list[bytes] | None:
    """The payloads of a message made only of length-delimited field-1 entries (a
    CheckAccessBatchRequest's `checks`), in order; None for anything else (another field,
    a non-minimal tag, a truncated length), which the caller leaves to the protobuf parser."""
    parts = []
    i, n = 0, len(body)
    while i < n:
        if body[i] != 0x0A:
            return None
        i += 1
        length = shift = 0
        while True:
            if i >= n or shift > 28:
                return None
            b = body[i]
            i += 1
            length |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        end = i + length
        if end > n:
            return None
        parts.append(body[i:end])
        i = end
    return parts
