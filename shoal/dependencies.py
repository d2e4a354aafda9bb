"""Order by ``dependsOn``: dependencies before their dependents, cycles refused.

Services (``spec.dependsOn``) and Syncs (``spec.dependsOn``) name what they
wait for. Whoever applies several of them at once — ``shoal apply -f DIR``
(the manifest loader and the manager's apply plan) and the Sync controller,
which goes through the same plan — orders them with ``dependency_order`` and
refuses a cycle with ``find_cycle``: a member of a cycle would wait for itself
forever. A dependency that is not among the documents is no problem here:
the dependent waits for it at run time (``shoal.reconciler.gating``), so the
order in which files, applies and Syncs arrive does not matter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Graph = Mapping[str, Sequence[str]]


def find_cycle(graph: Graph, start: str) -> list[str] | None:
    """A path ``start → … → start`` through ``graph`` (name → what it depends on), if any."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for dep in graph.get(node, ()):
            if dep == start:
                return [*path, start]
            if dep not in seen:
                seen.add(dep)
                stack.append((dep, [*path, dep]))
    return None


def distinct_cycles(graph: Graph, names: Sequence[str]) -> list[tuple[str, int, list[str]]]:
    """Every cycle through one of ``names``, each reported once, at the first of ``names``
    on it: ``(name, index, cycle)``, where ``graph[name][index]`` is the entry that
    closes the cycle (the one a file:line error points at)."""
    found: list[tuple[str, int, list[str]]] = []
    reported: set[frozenset[str]] = set()
    for name in names:
        cycle = find_cycle(graph, name)
        if cycle is None or frozenset(cycle) in reported:
            continue
        reported.add(frozenset(cycle))
        found.append((name, list(graph[name]).index(cycle[1]), cycle))
    return found


def dependency_order(names: Sequence[str], graph: Graph) -> list[str]:
    """``names`` with every one after those of its dependencies that are among ``names``.

    Otherwise the given order is kept (a stable topological sort), so files
    without dependencies apply in the order they always did. Members of a
    cycle (refused beforehand by the callers) keep their given order.
    """
    among = set(names)
    placed: set[str] = set()
    order: list[str] = []
    for root in names:
        # Depth first, without recursion (a long chain must not hit the recursion limit).
        stack: list[tuple[str, list[str]]] = [(root, _deps(graph, root, among))]
        entered = {root}
        while stack:
            name, deps = stack[-1]
            if name in placed:
                stack.pop()
                continue
            while deps and (deps[-1] in placed or deps[-1] in entered):
                deps.pop()
            if deps:
                dep = deps.pop()
                entered.add(dep)
                stack.append((dep, _deps(graph, dep, among)))
                continue
            stack.pop()
            placed.add(name)
            order.append(name)
    return order


def _deps(graph: Graph, name: str, among: set[str]) -> list[str]:
    """``name``'s dependencies among ``among``, last first (taken from the end)."""
    return [d for d in reversed(graph.get(name, ())) if d in among]


def cycle_message(cycle: Sequence[str]) -> str:
    return f"dependency cycle {' → '.join(cycle)}: no member of a cycle could ever start"
