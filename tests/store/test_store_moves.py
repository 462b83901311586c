"""MoveScope's statements (store/assignments.py): the SQL that gives a moved row its new
scope says what `gatehouse.engine.moves.moved_scope` says, for every scope at or below
the source, to a target scope or to the root."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from gatehouse.engine.moves import moved_scope
from gatehouse.engine.patterns import scope_covers
from gatehouse.store.assignments import MOVED_SCOPE
from gatehouse.store.postgres import PostgresStore

segment = st.sampled_from(["a", "b", "ab", "x.y", "a-b"])
scope = st.lists(segment, max_size=4).map("/".join)


async def _sql(store: PostgresStore, cases: list[tuple[str, str, str]]) -> list[str]:
    async with store._reading("*") as conn:
        return [
            await conn.fetchval(f"SELECT {MOVED_SCOPE} FROM (VALUES ($1::text)) AS v (scope)", s, source, target)
            for s, source, target in cases
        ]


async def test_the_documented_moves(store: PostgresStore) -> None:
    scopes = ["org/eu/sales", "org/eu/sales/team1", "org/eu/sales/team1/x"]
    targets = ["org/emea/sales", "org/emea", "", "x"]
    cases = [(s, "org/eu/sales", t) for s, t in itertools.product(scopes, targets)]
    assert await _sql(store, cases) == [moved_scope(*case) for case in cases]


@settings(max_examples=60, deadline=None)
@given(cases=st.lists(st.tuples(scope, scope.filter(bool), scope), min_size=1, max_size=20))
async def test_sql_and_engine_agree(store: PostgresStore, cases: list[tuple[str, str, str]]) -> None:
    below = [(s, source, target) for s, source, target in cases if scope_covers(source, s)]
    assert await _sql(store, below) == [moved_scope(*case) for case in below]
