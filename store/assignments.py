"""Role assignments: assign (optionally until a time; or give a held grant new terms),
revoke (never the last owner), list, move a subtree, and sweep the expired ones away."""

from __future__ import annotations

from dataclasses import replace as replace_change

import asyncpg

from gatehouse.engine.model import SubjectRef
from gatehouse.engine.moves import fits, moved_scope
from gatehouse.engine.patterns import MAX_SCOPE_LEN
from gatehouse.errors import AlreadyExists, MoveConflict, MovedScopeTooLong, NotAMember, NotFound, NothingToMove
from gatehouse.store.api import OWNER_ROLE, Actor, AssignmentRecord, MovedGrant, MoveGuard, Page, ScopeMove
from gatehouse.store.members import refuse_last_owner
from gatehouse.store.pages import Filters, clamp_page_size, decode_token, page_of
from gatehouse.store.rows import assignment_record
from gatehouse.store.transactions import PLATFORM_SCOPE, require_tenant_id, tenant_revision
from gatehouse.store.write_tail import AuditedChange, TenantWrite, TenantWrites, complete_write


class Assignments(TenantWrites):
    """Who holds which role at which scope."""

    async def assign_role(
        self,
        actor: Actor,
        tenant_id: str,
        subject: SubjectRef,
        *,
        role: str,
        scope: str,
        expected_revision: int = 0,
        expires_at: float | None = None,
        condition: str = "",
        replace: bool = False,
    ) -> tuple[AssignmentRecord, int]:
        """Grant `role` at `scope` to a member (NotAMember / NotFound / AlreadyExists),
        until `expires_at` (unix seconds; None = for good; the caller checks it is in the
        future), applying only where `condition` (CEL, checked by the caller; "" = none)
        holds. The same grant already expired but not yet swept is granted anew.

        With `replace`, a grant held already (in force) is not refused: its condition and
        expiry become these and its created_at now, in this one transaction (one revision,
        one `role.assign` audit row whose details carry the terms replaced under
        `replaced`, one event). Giving the tenant's last lasting owner a condition or an
        expiry is refused as revoking it is (LastOwner, `store.members.refuse_last_owner`)."""
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
            is_member, role_exists = await write.conn.fetchrow(
                """
                SELECT EXISTS (SELECT 1 FROM memberships
                               WHERE tenant_id = $1 AND subject_type = $2 AND subject_id = $3),
                       EXISTS (SELECT 1 FROM roles WHERE tenant_id = $1 AND name = $4)
                """,
                write.tenant_id,
                subject.type,
                subject.id,
                role,
            )
            if not is_member:
                raise NotAMember("roles are assigned to members only", metadata={"subject": subject.key})
            if not role_exists:
                raise NotFound("role not found", metadata={"role": role})
            # The tenant row is locked (`_tenant_write`): what is read here holds until commit.
            held = None
            if replace:
                held = await write.conn.fetchrow(_HELD, write.tenant_id, subject.type, subject.id, role, scope)
            lasting = expires_at is None and not condition
            if held is not None and role == OWNER_ROLE and scope == "" and not lasting:
                # No longer lasting: to the last-owner rule, as good as revoked.
                await refuse_last_owner(write.conn, write.tenant_id, subject)
            created_at = await write.conn.fetchval(
                """
                INSERT INTO role_assignments (tenant_id, subject_type, subject_id, role, scope, expires_at, condition)
                VALUES ($1, $2, $3, $4, $5, to_timestamp($6), $7)
                ON CONFLICT (tenant_id, subject_type, subject_id, role, scope) DO UPDATE
                    SET expires_at = excluded.expires_at, condition = excluded.condition, created_at = now()
                    WHERE $8 OR role_assignments.expires_at <= statement_timestamp()
                RETURNING created_at
                """,
                write.tenant_id,
                subject.type,
                subject.id,
                role,
                scope,
                expires_at,
                condition,
                replace,
            )
            if created_at is None:
                raise AlreadyExists("the subject already has this role at this scope", metadata={"role": role})
            change = _assignment_change("role.assign", subject, role, scope)
            extra: dict[str, object] = {"expires_at": expires_at} if expires_at is not None else {}
            if condition:
                extra["condition"] = condition
            if held is not None:
                extra["replaced"] = {"condition": held["condition"], "expires_at": held["expires_at"]}
            if extra:
                change = replace_change(change, details={**change.details, **extra})
            write.record(change)
        record = AssignmentRecord(
            str(write.tenant_id), subject, role, scope, created_at.timestamp(), expires_at, condition
        )
        return record, write.revision

    async def revoke_role(
        self, actor: Actor, tenant_id: str, subject: SubjectRef, *, role: str, scope: str, expected_revision: int = 0
    ) -> int:
        """Take back one grant (NotFound when there is no such grant); never from the last owner."""
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
            if role == OWNER_ROLE and scope == "":
                await refuse_last_owner(write.conn, write.tenant_id, subject)
            revoked = await write.conn.fetchval(
                """
                DELETE FROM role_assignments
                WHERE tenant_id = $1 AND subject_type = $2 AND subject_id = $3 AND role = $4 AND scope = $5
                RETURNING 1
                """,
                write.tenant_id,
                subject.type,
                subject.id,
                role,
                scope,
            )
            if revoked is None:
                raise NotFound("no such role assignment", metadata={"subject": subject.key, "role": role})
            write.record(_assignment_change("role.revoke", subject, role, scope))
        return write.revision

    async def list_role_assignments(
        self, tenant_id: str, *, subject: SubjectRef | None, page_size: int, page_token: str
    ) -> Page[AssignmentRecord]:
        """Assignments in (subject, role, scope) order, optionally of one subject."""
        tid = require_tenant_id(tenant_id)
        query = Filters()
        query.add("tenant_id = {}", tid)
        if subject is not None:
            query.add("subject_type = {} AND subject_id = {}", subject.type, subject.id)
        after = decode_token(page_token, (str, str, str, str))
        if after is not None:
            query.add("(subject_type, subject_id, role, scope) > ({}, {}, {}, {})", *after)
        size = clamp_page_size(page_size)
        sql = (
            f"SELECT * FROM role_assignments{query.where()}"
            f" ORDER BY subject_type, subject_id, role, scope LIMIT {query.param(size + 1)}"
        )
        async with self._reading(str(tid)) as conn:
            await tenant_revision(conn, tid)
            rows = await conn.fetch(sql, *query.args)
        return page_of(
            rows,
            size,
            assignment_record,
            key=lambda row: [row["subject_type"], row["subject_id"], row["role"], row["scope"]],
        )

    async def move_scope(
        self,
        actor: Actor,
        tenant_id: str,
        *,
        from_scope: str,
        to_scope: str,
        keep_existing: bool,
        guard: MoveGuard,
        expected_revision: int = 0,
    ) -> ScopeMove:
        """Move every assignment at or below `from_scope` to its place below `to_scope`
        (`gatehouse.engine.moves.moved_scope`; the caller has refused a target inside the
        source), in one transaction: one revision, one audit row naming the source, the
        target and the counts, one tenant-wide `assignment` event (every subject holding
        a moved grant is concerned). Rows are updated in place, so whatever else an
        assignment carries moves with it.

        `guard` sees every distinct (role, old scope, new scope) and may refuse.
        NothingToMove when nothing is at or below `from_scope`; MovedScopeTooLong when a
        new scope would be longer than a scope may be; MoveConflict when a moved
        assignment would land where its subject holds the role already, unless
        `keep_existing` (then the moved one is dropped and counted as merged).
        """
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
            conn, tid = write.conn, write.tenant_id
            # The lists a move sends (`= ANY($n)`) are as long as the move is large. A
            # generic plan (Postgres's choice for a statement prepared on this connection
            # after five runs) cannot see them: it searches each list linearly, row by
            # row (a move of 10,000 assignments at 10,000 scopes: 4-11 s). Planned for
            # its own values, a list is hashed (under 0.2 s).
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            rows = await conn.fetch(
                f"""
                SELECT subject_type, subject_id, role, scope FROM role_assignments
                WHERE tenant_id = $1 AND {_AT_OR_BELOW}
                ORDER BY subject_type, subject_id, role, scope
                """,
                tid,
                from_scope,
            )
            if not rows:
                raise NothingToMove("no role assignment at or below this scope", metadata={"from_scope": from_scope})
            # (subject type, subject id, role, old scope) -> new scope, in key order.
            moves: dict[tuple[str, str, str, str], str] = {}
            for row in rows:
                key = (row["subject_type"], row["subject_id"], row["role"], row["scope"])
                new = moved_scope(key[3], from_scope, to_scope)
                if new is None:  # the query and the engine disagree on "below": never move it
                    raise RuntimeError(f"{key[3]!r} is not below {from_scope!r}")
                if not fits(new):
                    raise MovedScopeTooLong(
                        "an assignment would move to a scope longer than a scope may be",
                        metadata={"subject": f"{key[0]}/{key[1]}", "role": key[2], "scope": key[3],
                                  "limit": str(MAX_SCOPE_LEN)},
                    )
                moves[key] = new
            await guard(await _moved_grants(write, moves))
            merged = await _refuse_or_merge_conflicts(write, moves, from_scope, keep_existing=keep_existing)
            await _update_scopes(write, moves, from_scope, to_scope)
            write.record(
                AuditedChange(
                    action="scope.move",
                    target=f"scope/{from_scope} to scope/{to_scope}",
                    kind="assignment",
                    details={
                        "from_scope": from_scope,
                        "to_scope": to_scope,
                        "moved": len(moves),
                        "merged": merged,
                        "on_conflict": "keep_existing" if keep_existing else "fail",
                    },
                )
            )
        return ScopeMove(moved=len(moves), merged=merged, revision=write.revision)


async def _moved_grants(write: TenantWrite, moves: dict[tuple[str, str, str, str], str]) -> list[MovedGrant]:
    """Every distinct (role, old scope, new scope) of a move, with the role's permissions."""
    pairs = sorted({(key[2], key[3], new) for key, new in moves.items()})
    roles = sorted({role for role, _, _ in pairs})
    permissions = {
        row["name"]: tuple(row["permissions"])
        for row in await write.conn.fetch(
            "SELECT name, permissions FROM roles WHERE tenant_id = $1 AND name = ANY($2::text[])", write.tenant_id, roles
        )
    }
    return [MovedGrant(role, permissions[role], old, new) for role, old, new in pairs]


# The rows a move takes: those at or below the source ($2); the rest stay where they are.
_AT_OR_BELOW = "(scope = $2 OR starts_with(scope, $2 || '/'))"
_STAYS = f"NOT {_AT_OR_BELOW}"
# An assignment's full key as one text (for `= ANY`, hashed by Postgres): no id, role or
# scope holds the unit separator.
_KEY = "subject_type || E'\\x1f' || subject_id || E'\\x1f' || role || E'\\x1f' || scope"


def _key_text(key: tuple[str, str, str, str]) -> str:
    return "\x1f".join(key)


async def _refuse_or_merge_conflicts(
    write: TenantWrite,
    moves: dict[tuple[str, str, str, str], str],
    from_scope: str,
    *,
    keep_existing: bool,
) -> int:
    """Find moved assignments whose new key is held by an assignment that stays; refuse
    the move (MoveConflict naming the first in key order), or drop them from `moves` and
    the table (`keep_existing`). How many were dropped.

    The statements are scans of the tenant's rows with `= ANY` lists (hashed: see
    `move_scope`), not joins against an unnested array, whose plans went bad for large
    moves (a nested loop rescanning the array for every row: 30 s and more for 10,000)."""
    staying = {
        (row["subject_type"], row["subject_id"], row["role"], row["scope"])
        for row in await write.conn.fetch(
            f"SELECT subject_type, subject_id, role, scope FROM role_assignments"
            f" WHERE tenant_id = $1 AND scope = ANY($3::text[]) AND {_STAYS}",
            write.tenant_id,
            from_scope,
            sorted(set(moves.values())),
        )
    }
    conflicts = [key for key, new in moves.items() if (key[0], key[1], key[2], new) in staying]
    if not conflicts:
        return 0
    if not keep_existing:
        first = conflicts[0]
        raise MoveConflict(
            "a moved assignment would land where its subject holds the role already",
            metadata={"subject": f"{first[0]}/{first[1]}", "role": first[2], "scope": first[3],
                      "to_scope": moves[first], "conflicts": str(len(conflicts))},
        )
    await write.conn.execute(
        f"DELETE FROM role_assignments WHERE tenant_id = $1 AND {_KEY} = ANY($2::text[])",
        write.tenant_id,
        [_key_text(key) for key in conflicts],
    )
    for key in conflicts:
        del moves[key]
    return len(conflicts)


# Every row at or below the source ($2) to its place below the target ($3), prefixed with
# $4. The expression is `gatehouse.engine.moves.moved_scope` in SQL (tests/store check
# they agree): "org/eu/sales/x" from "org/eu/sales" to "org/emea" is "org/emea" || "/x";
# to the root "", the rest without its leading "/" ("x"; "" for the source itself).
MOVED_SCOPE = "CASE WHEN $3 = '' THEN substr(scope, length($2) + 2) ELSE $3 || substr(scope, length($2) + 1) END"
_MOVE_ROWS = f"UPDATE role_assignments SET scope = $4 || {MOVED_SCOPE} WHERE tenant_id = $1 AND {_AT_OR_BELOW}"
# No valid scope starts with "/" (engine.patterns.is_valid_scope): a place no row is at.
_PARKED = "/"


async def _update_scopes(
    write: TenantWrite, moves: dict[tuple[str, str, str, str], str], from_scope: str, to_scope: str
) -> None:
    """Give every row left at or below the source its new scope, in place (one scan).

    The primary key's uniqueness is checked row by row as an UPDATE goes, not at its end:
    when one moved row's new key is another moved row's old key (moving up: `a/b` to `a`
    takes `a/b/b/c` to `a/b/c`, which leaves for `a/c`), the rows are first parked at
    keys no row can hold (their new scope behind a "/"), then unparked."""
    if not moves:
        return
    parked = any((k[0], k[1], k[2], new) in moves for k, new in moves.items())
    updated = await write.conn.execute(
        _MOVE_ROWS, write.tenant_id, from_scope, to_scope, _PARKED if parked else ""
    )
    if updated != f"UPDATE {len(moves)}":  # the tenant is locked: nothing else changed its rows
        raise RuntimeError(f"moved {updated!r}, expected {len(moves)} rows")
    if parked:
        await write.conn.execute(
            "UPDATE role_assignments SET scope = substr(scope, 2) WHERE tenant_id = $1 AND starts_with(scope, $2)",
            write.tenant_id,
            _PARKED,
        )


# One grant's terms, when it is in force (an expired one not yet swept is not held).
_HELD = """
SELECT condition, extract(epoch FROM expires_at)::float8 AS expires_at FROM role_assignments
WHERE tenant_id = $1 AND subject_type = $2 AND subject_id = $3 AND role = $4 AND scope = $5
  AND (expires_at IS NULL OR expires_at > statement_timestamp())
"""


def _assignment_change(action: str, subject: SubjectRef, role: str, scope: str) -> AuditedChange:
    return AuditedChange(
        action=action,
        target=f"{subject.key}#{role}@{scope}",
        kind="assignment",
        subject=subject.key,
        details={"role": role, "scope": scope},
    )


# --- the sweeper: expired assignments go, as an admin write would take them -------------

SWEEPER = Actor("gatehouse:expiry")  # the audit rows' actor

# Subjects holding an expired assignment, oldest expiry first (the partial index).
_EXPIRED_SUBJECTS = """
SELECT tenant_id, subject_type, subject_id
FROM role_assignments
WHERE expires_at IS NOT NULL AND expires_at <= statement_timestamp()
GROUP BY tenant_id, subject_type, subject_id
ORDER BY min(expires_at)
LIMIT $1
"""
_PLATFORM = "SELECT set_config('gatehouse.tenant_id', $1, true)"
_REMOVE_EXPIRED = """
DELETE FROM role_assignments
WHERE tenant_id = $1 AND subject_type = $2 AND subject_id = $3
  AND expires_at IS NOT NULL AND expires_at <= statement_timestamp()
RETURNING role, scope, extract(epoch FROM expires_at)::float8 AS expires_at
"""


async def sweep_expired_assignments(conn: asyncpg.Connection, *, limit: int = 100) -> int:
    """Delete assignments past their `expires_at`, at most `limit` subjects' worth; the
    number of subjects swept. Every tenant's rows are visible to it: each of its
    transactions sets the platform scope for itself. `conn` has the store's codecs
    (`store.transactions.init_connection`): the relay's own connection.

    Each subject's expired rows go in one transaction of their own, exactly like an admin
    write: the tenant row locked, the rows deleted, the revision bumped, one audit row
    (`role.expire`, actor `gatehouse:expiry`, naming every removed grant) and one outbox
    event for that subject. Nothing depends on it for correctness (an expired grant
    already grants nothing, in every sidecar, from its instant on): it keeps the table
    and ListRoleAssignments clean and tells every cache, through the event, to drop
    entries holding grants that will never apply again. A deleted tenant is skipped (it
    takes no writes; its rows grant nothing anyway).
    """
    swept = 0
    async with conn.transaction():
        await conn.execute(_PLATFORM, PLATFORM_SCOPE)
        expired = await conn.fetch(_EXPIRED_SUBJECTS, limit)
    for tenant_id, subject_type, subject_id in expired:
        async with conn.transaction():
            await conn.execute(_PLATFORM, PLATFORM_SCOPE)
            status = await conn.fetchval("SELECT status FROM tenants WHERE id = $1 FOR UPDATE", tenant_id)
            if status is None or status == "deleted":
                continue
            removed = await conn.fetch(_REMOVE_EXPIRED, tenant_id, subject_type, subject_id)
            if not removed:
                continue  # revoked or re-granted meanwhile
            subject = SubjectRef(subject_type, subject_id)
            change = AuditedChange(
                action="role.expire",
                target=f"member/{subject.key}",
                kind="assignment",
                subject=subject.key,
                details={
                    "expired": [
                        {"role": row["role"], "scope": row["scope"], "expires_at": row["expires_at"]} for row in removed
                    ]
                },
            )
            await complete_write(conn, SWEEPER, tenant_id, change)
            swept += 1
    return swept
