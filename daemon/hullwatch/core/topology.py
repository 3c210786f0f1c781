"""Hatch topology: segments joined by open hatches form volumes.

A volume's id is its member segment names, sorted and joined by "-" (ICD §2).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def volume_id(segments: Iterable[str]) -> str:
    """The id of the volume made of these segments."""
    return "-".join(sorted(segments))


def form_volumes(
    segments: Iterable[str], hatches: Mapping[str, tuple[str, str]], open_hatches: Iterable[str]
) -> dict[str, tuple[str, ...]]:
    """Group segments into volumes: {volume id: member segments (sorted)}."""
    parent = {s: s for s in segments}

    def root(s: str) -> str:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    for hatch in open_hatches:
        a, b = hatches[hatch]
        parent[root(a)] = root(b)
    groups: dict[str, list[str]] = {}
    for s in parent:
        groups.setdefault(root(s), []).append(s)
    return {volume_id(members): tuple(sorted(members)) for members in groups.values()}
