"""What a controller has to say about each of its objects, for people to read.

``shoal describe`` and ``get -o yaml`` show, per service, why a finished slot is
not restarted and the error of the last reconcile. Both are produced inside
the reconcile loop (the orchestrator's restart decisions, the runner's
outcomes); rather than the Control API reading those controllers' private
state, they write here and the API reads only this small read model. It lives
as long as the manager, across leadership terms, while runners come and go.
"""

from __future__ import annotations

from collections.abc import Mapping

from shoal.reconciler.loop import Failed, Outcome


class Reports:
    """Per key: notes (slot → why it is not restarted) and the last reconcile's error."""

    def __init__(self) -> None:
        self._notes: dict[str, dict[str, str]] = {}
        self._errors: dict[str, str] = {}

    def set_notes(self, key: str, notes: Mapping[str, str]) -> None:
        self._notes[key] = dict(notes)

    def notes(self, key: str) -> dict[str, str]:
        return dict(self._notes.get(key, {}))

    def record(self, key: str, outcome: Outcome | Exception) -> None:
        """The outcome of one reconcile of ``key``: a failure is kept until the next success."""
        if isinstance(outcome, Failed):
            self._errors[key] = outcome.message
        elif isinstance(outcome, Exception):
            self._errors[key] = f"{type(outcome).__name__}: {outcome}"
        else:
            self._errors.pop(key, None)

    def error(self, key: str) -> str | None:
        return self._errors.get(key)

    def forget(self, key: str) -> None:
        """``key`` is gone (a deleted service): nothing more to say about it."""
        self._notes.pop(key, None)
        self._errors.pop(key, None)
