"""Which node of the eligible ones gets the next task: spread, by rank or by preferences.

Without placement preferences, the eligible nodes of one task shape sit in one
heap ordered by their rank (fewest tasks of the service, then fewest tasks,
then node id), and placing T tasks on N nodes costs O(T log N): the heap's top
is re-ranked lazily when placements changed it, and a node that cannot take
the shape any more is dropped (loads only grow during a pass; room that a
failed write gives back meanwhile is for the next pass, which it wakes).

With preferences (``spread: node.labels.zone``, then maybe ``rack`` …), the
nodes form a tree, one level per preference: the nodes with the same value of
the first label are one group (nodes without the label are one more group),
split by the second label below it, and so on; each leaf group has such a
heap of its nodes. Every group counts the service's live tasks on its nodes.
A task goes down the tree, at each level to the child group with the fewest
tasks that still has a node with room (ties: by value, the label-less group
last), and then to its leaf's best node. This is Swarm's nested spread: even
over the zones whatever their sizes, then even over the racks of each zone,
then over the nodes. A leaf with no room left is marked full, and so is a
group whose children all are, so a pass costs O(T (G + log N)) for G groups
per level.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shoal.models import Node

Rank = tuple[int, int, str]


def best_in_heap(
    heap: list[Rank], rank: Callable[[str], Rank], fits: Callable[[str], bool]
) -> str | None:
    """The best-ranked node of ``heap`` that fits; nodes that do not are dropped."""
    while heap:
        current = rank(heap[0][2])
        if heap[0] != current:  # placements since it was pushed
            heapq.heapreplace(heap, current)
            continue
        if fits(current[2]):
            return current[2]
        heapq.heappop(heap)  # full for this shape; loads only grow
    return None


@dataclass
class _Group:
    # Sort key among siblings: label-less last, then by value.
    key: tuple[bool, str]
    count: int = 0
    children: dict[str | None, _Group] | None = None
    heap: list[Rank] = field(default_factory=list)
    full: bool = False


class SpreadTree:
    """The eligible nodes of one task shape, grouped by the preference labels (maybe none)."""

    def __init__(
        self,
        nodes: Sequence[Node],
        labels: Sequence[str],
        rank: Callable[[str], Rank],
        count: Callable[[str], int],
    ) -> None:
        self._rank = rank
        self._root = _Group((False, ""))
        self._spread = bool(labels)
        # node id → the groups from the root down to its leaf (counted on placement).
        self._paths: dict[str, list[_Group]] = {}
        leaves: dict[int, _Group] = {}
        for node in nodes:
            group = self._root
            path = [group]
            for label in labels:
                value = node.labels.get(label)
                if group.children is None:
                    group.children = {}
                child = group.children.get(value)
                if child is None:
                    child = group.children[value] = _Group((value is None, value or ""))
                group = child
                path.append(group)
            group.heap.append(rank(node.id))
            leaves[id(group)] = group
            if self._spread:
                tasks = count(node.id)
                for member in path:
                    member.count += tasks
                self._paths[node.id] = path
        for leaf in leaves.values():
            heapq.heapify(leaf.heap)

    def choose(self, fits: Callable[[str], bool]) -> str | None:
        """The node the next task should go to, or None when no node fits it."""
        while not self._root.full:
            group = self._root
            while group.children is not None:
                open_ = [c for c in group.children.values() if not c.full]
                if not open_:
                    group.full = True
                    break
                group = min(open_, key=lambda c: (c.count, c.key))
            else:
                chosen = best_in_heap(group.heap, self._rank, fits)
                if chosen is not None:
                    return chosen
                group.full = True
        return None

    def placed(self, node_id: str) -> None:
        """A task of the service went to ``node_id``."""
        if self._spread:
            for group in self._paths[node_id]:
                group.count += 1
