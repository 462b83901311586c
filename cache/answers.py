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
methods can have the same bytes. What an answer is (`A`: its bytes, or its bytes and
its batch framing) is the server's business: the cache only keeps and checks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from gatehouse.cache.policy_cache import ABSENT, CachedTenant, PolicyCache, Absent
from gatehouse.engine.decision import SubjectGrants

A = TypeVar("A")


@dataclass(slots=True)
class Remembered(Generic[A]):
    tenant_id: str
    min_revision: int
    tenant: CachedTenant | Absent  # the entry decided from: compared by identity
    subject_key: str | None  # None: the answer did not depend on a subject
    grants: SubjectGrants | None  # the subject's entry decided from (identity too)
    until: float  # unix seconds; the answer may change from then on
    answer: A


class Answers(Generic[A]):
    def __init__(self, cache: PolicyCache, max_entries: int, *, max_body: int = 2048) -> None:
        self._cache = cache
        self._max_entries = max_entries
        self._max_body = max_body
        self._entries: dict[bytes, Remembered[A]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, body: bytes, now: float) -> A | None:
        """The remembered answer to `body`, if it is still exactly what deciding would give."""
        known = self._entries.get(body)
        if known is None:
            self.misses += 1
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
            self.misses += 1
            return None
        self.hits += 1
        return known.answer

    def remember(
        self,
        body: bytes,
        tenant_id: str,
        min_revision: int,
        tenant: CachedTenant | None,
        subject_key: str | None,
        grants: SubjectGrants | None,
        until: float,
        answer: A,
    ) -> None:
        """Remember `answer` as the answer to `body`, decided from `tenant` (None: absent)
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
            tenant_id, min_revision, ABSENT if tenant is None else tenant, subject_key, grants, until, answer
        )
        if len(entries) > self._max_entries:
            del entries[next(iter(entries))]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
