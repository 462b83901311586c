"""JSON Merge Patch (RFC 7396), the semantics of PatchTenantConfig's settings patch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def merge_patch(target: Any, patch: Any) -> Any:
    """`target` with `patch` applied, per RFC 7396; neither argument is modified.

    An object patch merges key by key: a null value deletes the key, an object value
    merges recursively, anything else replaces. A non-object patch replaces the target
    whole (so an array is replaced, never merged).
    """
    if not isinstance(patch, Mapping):
        return patch
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged
