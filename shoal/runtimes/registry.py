"""Finding runtimes: the ``shoal.runtimes`` entry-point group.

Built-in runtimes are registered the same way as third-party ones (see
``pyproject.toml``), so there is one discovery path to test. The entry-point
name is the name specs use (``template.runtime``) and must equal the class's
``name``, which is what handles carry.

A plugin that fails to import, or is not a ``Runtime`` subclass, is left out
with an error log naming it: one broken plugin must not take the agent down,
and it must not vanish without a trace either (the node then simply does not
advertise that runtime).

``runtime_catalogue`` is what spec validation needs to know of them (which
names exist, which take container fields); the manager validates applied
specs with it. The models themselves never read entry points.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

import structlog

from shoal.runtimes.base import Runtime

log = structlog.get_logger(__name__)

ENTRY_POINT_GROUP = "shoal.runtimes"


def _load(entry_point: EntryPoint) -> type[Runtime] | None:
    try:
        loaded = entry_point.load()
    except Exception as exc:  # a plugin may raise anything at import time
        log.error(
            "runtime plugin failed to load",
            plugin=entry_point.name,
            target=entry_point.value,
            error=f"{type(exc).__name__}: {exc}",
            exc_info=exc,
        )
        return None
    if not (isinstance(loaded, type) and issubclass(loaded, Runtime)):
        log.error(
            "runtime plugin is not a Runtime subclass",
            plugin=entry_point.name,
            target=entry_point.value,
        )
        return None
    if getattr(loaded, "name", None) != entry_point.name:
        log.error(
            "runtime plugin's class name attribute does not match its entry point",
            plugin=entry_point.name,
            target=entry_point.value,
            class_name=getattr(loaded, "name", None),
        )
        return None
    return loaded


def available_runtime_classes() -> dict[str, type[Runtime]]:
    """Every runtime class that loads, by name; broken plugins are logged and skipped."""
    classes: dict[str, type[Runtime]] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in classes:
            log.error(
                "runtime plugin name registered twice; keeping the first",
                plugin=entry_point.name,
                target=entry_point.value,
            )
            continue
        loaded = _load(entry_point)
        if loaded is not None:
            classes[entry_point.name] = loaded
    return classes


def runtime_catalogue(classes: dict[str, type[Runtime]] | None = None) -> dict[str, bool]:
    """Name → whether it takes container fields, for every runtime that loads.

    This is the validation context the models take (``{"runtimes": ...}``, see
    ``shoal.models.service``): with it, a spec naming another runtime is refused.
    """
    if classes is None:
        classes = available_runtime_classes()
    return {name: cls.container_fields for name, cls in sorted(classes.items())}
