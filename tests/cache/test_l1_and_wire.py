"""The L1 map's bound and expiry, and the few protobuf wire-format steps remembered
answers take instead of the protobuf runtime (checked against it)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gatehouse.server.wire import frame, split_field1, varint
from gatehouse.cache.l1 import ExpiringMap
from gatehouse_client.v1 import access_pb2, common_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_their_ttl_and_rewriting_renews_them() -> None:
    clock = Clock()
    m: ExpiringMap[str, int] = ExpiringMap(maxsize=10, ttl=5.0, clock=clock)
    m["a"] = 1
    clock.now += 4.9
    assert m.get("a") == 1 and "a" in m
    m["a"] = 2
    clock.now += 4.9
    assert m.get("a") == 2
    clock.now += 0.1
    assert m.get("a") is None and "a" not in m and len(m) == 0


def test_a_full_map_drops_the_entry_used_longest_ago() -> None:
    m: ExpiringMap[int, int] = ExpiringMap(maxsize=3, ttl=60.0)
    for key in (1, 2, 3):
        m[key] = key
    m[1] = 10  # rewritten: now the most recent
    m[4] = 4
    assert len(m) == 3 and m.get(2) is None
    assert m.get(3) == 3  # read: now the most recent
    m[5] = 5
    assert m.get(1) is None
    assert [m.get(k) for k in (3, 4, 5)] == [3, 4, 5]
    assert m.pop(3) == 3 and m.pop(3) is None and sorted(m.keys()) == [4, 5]


ids = st.text(alphabet="abcxyz019._:@-", min_size=1, max_size=300)
checks = st.builds(
    access_pb2.CheckAccessRequest,
    tenant_id=ids,
    subject=st.builds(common_pb2.Subject, type=ids, id=ids),
    permission=ids,
    resource=st.builds(common_pb2.Resource, type=st.just(""), id=ids, scope=ids),
    min_revision=st.integers(min_value=0, max_value=2**62),
)


@given(st.lists(checks, max_size=20))
def test_a_batch_splits_into_exactly_its_checks_bytes(batch: list[access_pb2.CheckAccessRequest]) -> None:
    body = access_pb2.CheckAccessBatchRequest(checks=batch).SerializeToString()
    assert split_field1(body) == [c.SerializeToString() for c in batch]


@given(st.lists(st.binary(max_size=400), max_size=20))
def test_framed_answers_joined_are_the_batch_response(answers: list[bytes]) -> None:
    results = [access_pb2.CheckAccessResponse(granted_by_role=a.hex()) for a in answers]
    encoded = [r.SerializeToString() for r in results]
    assert b"".join(frame(e) for e in encoded) == access_pb2.CheckAccessBatchResponse(results=results).SerializeToString()


@given(st.integers(min_value=0, max_value=2**35))
def test_varint_is_protobufs(value: int) -> None:
    message = access_pb2.CheckAccessRequest(min_revision=value)
    assert message.SerializeToString() == (b"\x28" + varint(value) if value else b"")


def test_anything_but_a_plain_list_of_checks_is_left_to_the_parser() -> None:
    one = access_pb2.CheckAccessBatchRequest(checks=[access_pb2.CheckAccessRequest(tenant_id="t")]).SerializeToString()
    assert split_field1(one) is not None
    assert split_field1(one + b"\x12\x00") is None  # another field
    assert split_field1(one[:-1]) is None  # truncated payload
    assert split_field1(b"\x0a\x80") is None  # truncated length
    assert split_field1(b"\x8a\x00\x00") is None  # a non-minimal tag
    assert split_field1(b"") == []
