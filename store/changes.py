"""The store's change feed: who hears of a committed write (`Subscribable`).

The write path knows what each mutation changed (its outbox event); once the
transaction has committed, the store hands that to every listener here. The cache
subscribes, so no handler has to remember to invalidate anything.

Listeners are awaited, in subscription order, before the write returns: an admin call
must not answer before this process's cache (and the L2 pointer) reflect its write, or
a read-your-writes check right after it could be served older data. A listener that
raises is logged and skipped: the write has committed, and the relay's event will reach
every sidecar (this one included) regardless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from gatehouse.events import CONFIG_KINDS
from gatehouse.store.api import ChangeListener, TenantChange

log = logging.getLogger(__name__)


def tenant_change(tenant_id: object, revision: int, kind: str, subject: str | None) -> TenantChange:
    """The change a committed outbox event of `kind` announces for one tenant."""
    return TenantChange(str(tenant_id), revision, kind, subject or "", config=kind in CONFIG_KINDS)


class ChangeFeed:
    """A list of listeners, told of each committed change in order."""

    def __init__(self) -> None:
        self._listeners: list[ChangeListener] = []

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def publish(self, changes: Iterable[TenantChange]) -> None:
        """Tell every listener of every change; call only after the commit."""
        for change in changes:
            for listener in list(self._listeners):
                try:
                    await listener(change)
                except Exception:  # committed is committed: the caller gets its answer
                    log.exception(
                        "change listener failed for tenant %s revision %d (%s)",
                        change.tenant_id, change.revision, change.kind,
                    )
