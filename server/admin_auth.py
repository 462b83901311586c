"""Who is calling AdminService: `authorization: Bearer <key>`.

A key is `gh_<id>_<secret>`: `id` is 16 hex digits (the lookup prefix, also the key's
subject id `api_key/<id>`, not secret), `secret` 43 base64url characters (256 random
bits). Only an Argon2id hash of the whole token is stored. Argon2 is slow on purpose, so
a verified token is remembered in memory by its SHA-256 digest (never the token itself)
until its key is revoked (a `key` tenant event, seen by every sidecar), it expires, or
`VERIFIED_TTL_SECONDS` pass.

Failed authentications are bounded apart from everything else, so a flood of made-up
keys (each would cost an Argon2 hash) cannot starve anyone: at most `max_pending`
verifications wait for or run Argon2 at once (beyond that a call is refused at once,
RESOURCE_EXHAUSTED `GATEHOUSE_OVERLOADED` class `auth`, without a lookup or a hash), and
each client address may fail only `FailedAuthLimit`'s budget (a token bucket; beyond it,
refused the same way until the bucket refills). A token verified before is remembered,
so it passes both bounds untouched: a legitimate admin keeps working through a flood.
Unknown key ids and wrong secrets still cost the same (a real Argon2 check each) whenever
a verification runs; the fast refusals are decided before the key id is looked up, so
they say nothing about which ids exist either.

`GATEHOUSE_OPERATOR_KEY` is a bootstrap credential, compared in constant time: it may
only create, list and revoke operator keys, so that the first real operator key can be
minted; everything else needs a key from the database. No key or secret ever reaches a
log or the audit trail: actors are `api_key/<id>` or `operator:bootstrap`.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from urllib.parse import unquote

from cachetools import LRUCache, TTLCache

from gatehouse.engine.model import key_subject
from gatehouse.engine.patterns import PermissionSet
from gatehouse.errors import KeyRejected, Overloaded, Unauthenticated
from gatehouse.logs import request_id as request_id  # the one rule: logs and the audit trail agree
from gatehouse.store.api import Actor, StoreMutator

Metadata = Sequence[tuple[str, str | bytes]]

KEY_RE = re.compile(r"gh_(?P<id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})")
KEY_SHAPE = "gh_<16 hex digits>_<43 base64url characters>"
VERIFIED_TTL_SECONDS = 300.0
BOOTSTRAP_ACTOR = "operator:bootstrap"
BOOTSTRAP_PERMISSIONS = PermissionSet(["gatehouse.key.create", "gatehouse.key.list", "gatehouse.key.revoke"])

# Argon2id, RFC 9106's second recommended option scaled to a sidecar: 19 MiB, 2 passes,
# one lane (OWASP's minimum for Argon2id). Measured in the closing notes / README.
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16)


M_MMAP_THRESHOLD = -3


def return_hash_memory_to_the_os() -> None:
    """Make glibc give each Argon2 hash's 19 MiB back when it is freed.

    glibc serves blocks above its mmap threshold with mmap and unmaps them on free, but
    after the first such free it raises the threshold to that block's size, so every
    later hash is carved from the heap and stays in the RSS: a one-time ~20 MB step per
    hashing thread, seen in the 10-minute soak when cached tokens were re-verified. A
    fixed threshold (which also stops the adjusting) keeps every block of 1 MiB or more
    mmapped. No-op where libc is not glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: an operator (tenant_id "") or a tenant-admin key."""

    actor: Actor
    key_id: str  # "" for the bootstrap credential
    tenant_id: str  # "" = platform scope
    permissions: PermissionSet  # the key's own patterns
    expires_at: float | None = None

    @property
    def is_operator(self) -> bool:
        return not self.tenant_id

    @property
    def is_bootstrap(self) -> bool:
        return not self.key_id


@dataclass(frozen=True, slots=True)
class MintedKey:
    key_id: str
    token: str  # shown to the caller once
    secret_hash: str


def mint_key() -> MintedKey:
    """A fresh key and its Argon2id hash (CPU-heavy: call it off the event loop)."""
    key_id = secrets.token_hex(8)
    token = f"gh_{key_id}_{secrets.token_urlsafe(32)}"
    return MintedKey(key_id, token, HASHER.hash(token))


async def create_operator_key(store: StoreMutator, actor: Actor, *, name: str, permissions: Sequence[str] = ("*",)) -> str:
    """Mint an operator key straight into the store (set-up tooling, tests, bench); the
    token, shown once."""
    minted = await asyncio.to_thread(mint_key)
    await store.create_api_key(
        actor, "", key_id=minted.key_id, secret_hash=minted.secret_hash, name=name,
        permissions=list(permissions), expires_at=None, roles=[],
    )
    return minted.token


def verify_secret(secret_hash: str, token: str) -> bool:
    try:
        return HASHER.verify(secret_hash, token)
    except (VerificationError, InvalidHashError):
        return False


def key_fingerprint(key: str) -> str:
    """A short, non-reversible name for a presented credential, fit for logs."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def peer_address(peer: str) -> str:
    """The client address of a grpc peer string, without the port (a flood opens new
    connections from new ports): `ipv4:10.0.0.7:51234` -> `10.0.0.7`, `ipv6:%5B::1%5D:5`
    -> `::1`; every unix-socket client is one address, `unix`."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = unquote(rest).rpartition(":")[0]
        return host.strip("[]") or rest
    return kind


class FailedAuthLimit:
    """Failed authentications per client address: a token bucket of `burst`, refilled at
    `per_second`. A verification spends a token up front and gets it back unless the key
    is rejected. At most `max_addresses` are remembered (least recently failed dropped
    first), so a flood from many addresses costs bounded memory. `burst` 0 turns it off."""

    def __init__(
        self, *, burst: int, per_second: float, max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.per_second = per_second
        self._clock = clock
        self._buckets: LRUCache[str, tuple[float, float]] = LRUCache(maxsize=max_addresses)

    def _tokens(self, address: str, now: float) -> float:
        bucket = self._buckets.get(address)
        if bucket is None:
            return float(self.burst)
        tokens, at = bucket
        return min(float(self.burst), tokens + (now - at) * self.per_second)

    def spend(self, address: str) -> float:
        """Take one try from `address`'s budget before verifying (so concurrent tries
        cannot all pass on one token) and return 0; or, with none left, take nothing
        and return the seconds until one is back."""
        if self.burst <= 0:
            return 0.0
        now = self._clock()
        tokens = self._tokens(address, now)
        if tokens >= 1.0:
            self._buckets[address] = (tokens - 1.0, now)
            return 0.0
        return (1.0 - tokens) / self.per_second if self.per_second > 0 else 3600.0

    def refund(self, address: str) -> None:
        """The try succeeded: it costs nothing."""
        bucket = self._buckets.get(address)
        if bucket is not None:
            self._buckets[address] = (min(float(self.burst), bucket[0] + 1.0), bucket[1])


class AdminAuthenticator:
    def __init__(
        self,
        store: StoreMutator,
        operator_key: str,
        *,
        max_entries: int = 10_000,
        max_pending: int = 8,
        failures: FailedAuthLimit | None = None,
    ) -> None:
        self._store = store
        self._bootstrap = operator_key.encode()
        self._verified: TTLCache[bytes, Principal] = TTLCache(maxsize=max_entries, ttl=VERIFIED_TTL_SECONDS)
        self._inflight: dict[bytes, asyncio.Future[Principal]] = {}
        # Argon2 runs in threads; bound how many at once, so a flood of bad keys costs
        # at most this many cores' worth of hashing, never the event loop.
        self._hashing = asyncio.Semaphore(2)
        # Verifications waiting for or running Argon2 (or their key's lookup); the bound.
        self._pending = 0
        self._max_pending = max_pending
        self._failures = failures or FailedAuthLimit(burst=0, per_second=0.0)
        self.refused_pending = 0
        self.refused_address = 0
        self.rejected = 0
        self.verifications = 0  # Argon2 verifications run (dummy ones for unknown keys included)

    def stats(self) -> dict[str, float]:
        """For the stats registry: verifications pending, refusals by cause, keys rejected."""
        return {
            "pending": self._pending,
            "refused_pending": self.refused_pending,
            "refused_address": self.refused_address,
            "rejected": self.rejected,
            "verifications": self.verifications,
        }

    async def authenticate(self, metadata: Metadata, request_id: str, peer: str = "") -> Principal:
        """The caller of an admin call, from its `authorization: Bearer <key>` metadata."""
        principal = await self.verify(bearer(metadata), peer)
        return replace(principal, actor=Actor(principal.actor.id, request_id))

    async def verify(self, token: str, peer: str = "") -> Principal:
        """The principal `token` authenticates (its actor without a request id). A token
        verified before costs a SHA-256 and a dict lookup; a new one an Argon2 check, within
        the bounds above. Raises Unauthenticated (malformed), KeyRejected (unknown, wrong,
        revoked, expired) or Overloaded (the failed-authentication bounds)."""
        # compare_digest takes time independent of where the strings differ.
        if self._bootstrap and hmac.compare_digest(token.encode(), self._bootstrap):
            return Principal(Actor(BOOTSTRAP_ACTOR), "", "", BOOTSTRAP_PERMISSIONS)
        match = KEY_RE.fullmatch(token)
        if match is None:
            raise Unauthenticated(f"malformed key (want {KEY_SHAPE})", metadata={"key": key_fingerprint(token)})
        digest = hashlib.sha256(token.encode()).digest()
        principal = self._verified.get(digest)
        if principal is None and digest in self._inflight:
            # This token's verification is running: share its outcome (one Argon2 run, at
            # most one failure) without spending from the budget. Else a valid key's
            # first calls at once, on a sidecar new to it, were refused as failures.
            principal = await asyncio.shield(self._inflight[digest])
        if principal is None:
            address = peer_address(peer)
            wait = self._failures.spend(address)
            if wait > 0:
                self.refused_address += 1
                raise Overloaded(
                    "auth", self._failures.burst, max(1, int(wait * 1000)),
                    "too many failed authentications from this address; retry later",
                )
            try:
                principal = await self._verify_once(digest, match["id"], token)
            except KeyRejected:
                self.rejected += 1
                raise
            except BaseException:
                self._failures.refund(address)  # refused unhashed, or not the key's fault
                raise
            self._failures.refund(address)
        if principal.expires_at is not None and time.time() >= principal.expires_at:
            self._verified.pop(digest, None)
            raise KeyRejected("key rejected", metadata={"key_id": principal.key_id})
        return principal

    def remembered(self, token: str) -> Principal | None:
        """The principal `token` was verified as, while it stays valid; None: `verify` it.
        The hot path's fast step (server/callers.py): a SHA-256 and a dict lookup."""
        principal = self._verified.get(hashlib.sha256(token.encode()).digest())
        if principal is None or (principal.expires_at is not None and time.time() >= principal.expires_at):
            return None
        return principal

    def forget(self, key_id: str) -> None:
        """A key was revoked (here or, through its event, anywhere): verify it afresh."""
        for digest in [d for d, p in self._verified.items() if p.key_id == key_id]:
            self._verified.pop(digest, None)

    def clear(self) -> None:
        """Events may have been missed (a gap in the stream): trust no verification."""
        self._verified.clear()

    async def _verify_once(self, digest: bytes, key_id: str, token: str) -> Principal:
        """Single-flight: concurrent first calls with one token share one Argon2 run."""
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        if self._pending >= self._max_pending:
            # Decided before the key id is looked up: says nothing about which ids exist.
            self.refused_pending += 1
            raise Overloaded(
                "auth", self._max_pending, 1000, "too many key verifications waiting; retry later"
            )
        future: asyncio.Future[Principal] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        self._pending += 1
        try:
            principal = await self._verify(key_id, token)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self._pending -= 1
            self._inflight.pop(digest, None)
        future.set_result(principal)
        self._verified[digest] = principal
        return principal

    async def _verify(self, key_id: str, token: str) -> Principal:
        credential = await self._store.find_api_key(key_id)
        # One answer for unknown, wrong, revoked and expired: nothing to probe.
        rejected = KeyRejected("key rejected", metadata={"key_id": key_id})
        self.verifications += 1
        if credential is None:
            async with self._hashing:  # spend the same time as a real check
                await asyncio.to_thread(verify_secret, _dummy_hash(), token)
            raise rejected
        async with self._hashing:
            ok = await asyncio.to_thread(verify_secret, credential.secret_hash, token)
        if not ok or credential.revoked:
            raise rejected
        if credential.expires_at is not None and time.time() >= credential.expires_at:
            raise rejected
        return Principal(
            Actor(key_subject(credential.id).key),
            credential.id,
            credential.tenant_id,
            PermissionSet(credential.permissions),
            credential.expires_at,
        )


@functools.cache
def _dummy_hash() -> str:
    """A hash no token matches, for spending a real check's time on an unknown id; made
    on first use rather than at import (an Argon2 hash is ~20 ms)."""
    return HASHER.hash("gh_0000000000000000_" + "0" * 43)


def bearer(metadata: Metadata) -> str:
    """The key of `authorization: Bearer <key>`; Unauthenticated when there is not exactly one."""
    header = [v for k, v in metadata if k == "authorization"]
    if not header:
        raise Unauthenticated("missing authorization header (want: Bearer <key>)")
    if len(header) > 1 or not isinstance(header[0], str):
        raise Unauthenticated("exactly one authorization header, please")
    scheme, _, token = header[0].partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization must be 'Bearer <key>'")
    return token.strip()
