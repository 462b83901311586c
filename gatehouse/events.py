"""Tenant events: what the outbox relay publishes to the Redis Stream and every sidecar reads.

One stream entry per committed change, format version 1, plain fields so that
`redis-cli XRANGE gh:events - +` is readable:

    v        "1"                   format version; readers skip entries of a newer major
    id       outbox row id         unique per event; duplicates are harmless
    tenant   tenant uuid
    rev      tenant revision the change committed (every change bumps it by one)
    kind     tenant | config | plan | role | membership | assignment | key
    subject  "user/alice" when the change concerns only that subject, else ""
    at       commit time, unix milliseconds
    tp       optional: the W3C traceparent of the (sampled) admin write that made the
             change, when tracing is on; absent otherwise. Readers that do not know it
             ignore it (every reader picks the fields it knows), so the format stays 1.

`kind` and `subject` decide what a sidecar evicts: an event with a subject (membership,
assignment, key) evicts that subject's grants only; any other evicts the whole tenant.
A plan change arrives as one `plan` event per tenant on the plan.

Relay heartbeats share the stream and the format (a reader of version 1 that does not
know them sees an event of no tenant at revision 0, which raises nothing):

    v        "1"
    kind     heartbeat
    id       "0"; tenant ""; rev "0"; subject ""
    at       published-through time, unix milliseconds (the database's clock): every
             write committed before it has its event earlier in the stream than this entry
    relay    the publishing relay's id (host:pid:random), for operators

`store.relay` explains why `at` means that with several relays running.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

FORMAT_VERSION = "1"
KINDS = frozenset({"tenant", "config", "plan", "role", "membership", "assignment", "key"})
# Changes that alter what GetTenantConfig answers (watchers wake on these).
CONFIG_KINDS = frozenset({"tenant", "config", "plan"})
HEARTBEAT_KIND = "heartbeat"


# Kinds of event whose `subject` is the only thing the write changed (any other kind, or
# one without a subject, may have changed every entry of the tenant).
SUBJECT_KINDS = ("membership", "assignment", "key")

@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A relay's statement: every write committed before `through_ms` (unix ms, database
    clock) has its event in the stream before this entry."""

    through_ms: int
    relay: str = ""

    def fields(self) -> dict[str, str]:
        return {
            "v": FORMAT_VERSION,
            "id": "0",
            "tenant": "",
            "rev": "0",
            "kind": HEARTBEAT_KIND,
            "subject": "",
            "at": str(self.through_ms),
            "relay": self.relay,
        }


@dataclass(frozen=True, slots=True)
class TenantEvent:
    id: int
    tenant_id: str
    revision: int
    kind: str
    subject: str = ""
    at_ms: int = 0
    traceparent: str = ""  # the write's W3C traceparent (tracing on and sampled), else ""

    @property
    def tenant_wide(self) -> bool:
        """True when every cached entry of the tenant may be stale (not just one subject's)."""
        return not self.subject or self.kind not in SUBJECT_KINDS

    def fields(self) -> dict[str, str]:
        fields = {
            "v": FORMAT_VERSION,
            "id": str(self.id),
            "tenant": self.tenant_id,
            "rev": str(self.revision),
            "kind": self.kind,
            "subject": self.subject,
            "at": str(self.at_ms),
        }
        if self.traceparent:
            fields["tp"] = self.traceparent
        return fields

    @classmethod
    def parse(cls, fields: Mapping[bytes, bytes] | Mapping[str, str]) -> "TenantEvent | None":
        """The event in a stream entry, or None for an entry this build cannot read (or a heartbeat)."""
        entry = parse_entry(fields)
        return entry if isinstance(entry, TenantEvent) else None

    @classmethod
    def _from(cls, data: Mapping[str, str]) -> "TenantEvent | None":
        try:
            return cls(
                id=int(data["id"]),
                tenant_id=data["tenant"],
                revision=int(data["rev"]),
                kind=data.get("kind", "tenant"),
                subject=data.get("subject", ""),
                at_ms=int(data.get("at", "0") or 0),
                traceparent=data.get("tp", ""),
            )
        except (KeyError, ValueError):
            return None


def parse_entry(fields: Mapping[bytes, bytes] | Mapping[str, str]) -> "TenantEvent | Heartbeat | None":
    """A stream entry as a tenant event or a relay heartbeat; None when this build cannot read it."""
    data = {as_text(k): as_text(v) for k, v in fields.items()}
    if data.get("v", "").split(".")[0] != FORMAT_VERSION:
        return None
    if data.get("kind") == HEARTBEAT_KIND:
        try:
            return Heartbeat(through_ms=int(data["at"]), relay=data.get("relay", ""))
        except (KeyError, ValueError):
            return None
    return TenantEvent._from(data)


def as_text(value: bytes | str) -> str:
    """Redis replies come as bytes unless the client decodes them."""
    return value.decode() if isinstance(value, bytes) else value


def stream_key(prefix: str) -> str:
    return f"{prefix}:events"


# --- where events and the L2 revision pointer live in Redis --------------------------------
# Shared by the outbox relay (store/) and the cache (cache/), so defined here, below both.

# Store data ARGV[2] under key KEYS[2] (when given) and move the pointer KEYS[1] forward,
# never back, to revision ARGV[1]; both live ARGV[3] milliseconds. The relay uses it too,
# with KEYS[1] alone. Every key it is given is declared, and all are one tenant's (one
# hash tag, one slot): Redis Cluster runs it on the master owning that slot.
#
# Superseded revisions do not pile up (each tenant entry is a whole compiled snapshot):
# data for a revision older than the pointer is not written at all (no reader ever reads
# below the pointer), and moving the pointer deletes the tenant entry of the revision it
# leaves, `<tag>:t:<old>` (built from KEYS[1] = `<tag>:rev`: same hash tag, same slot).
# Readers are unaffected: `_READ_AT_POINTER` reads the pointer and the data at it in one
# script, so none can be between the two when the old entry goes. Subject entries of an
# old revision (`<tag>:s:<old>:…`, too many to name here) are orphaned and expire with
# their TTL.
ADVANCE_POINTER = """
local cur = redis.call('GET', KEYS[1])
local rev = tonumber(ARGV[1])
if cur and tonumber(cur) > rev then return 0 end
if KEYS[2] then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end
if not cur or tonumber(cur) < rev then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  if cur then redis.call('DEL', string.sub(KEYS[1], 1, -4) .. 't:' .. cur) end
else
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"""


def tenant_tag(prefix: str, tenant_id: str) -> str:
    """The start of every key of one tenant; `{…}` is the Redis Cluster hash tag (the
    prefix holds no brace, see Settings.check_redis_prefix, so this is the key's tag)."""
    return f"{prefix}:{{{tenant_id}}}"


POINTER_SUFFIX = ":rev"


def pointer_key(prefix: str, tenant_id: str) -> str:
    return f"{tenant_tag(prefix, tenant_id)}{POINTER_SUFFIX}"
