"""Compose files deployed as stacks (``shoal stack deploy -c FILE STACK``).

There is no maintained Python library that loads and validates Compose
files, so shoal reads them itself, with the same ``FILE:LINE: field: message``
errors as its own specs: ``loader`` runs the steps, ``yamltree`` keeps the
marks through interpolation (``interpolate``) and the merge of several files,
``keys`` decides for every Compose key whether it is honoured, not applied
yet, ignored or refused, ``models`` validates what is left, and ``convert``
turns it into shoal's documents. A stack is an apply set named
``stack.NAME`` (``stack_set_name``), so a redeploy prunes what the files no
longer hold.
"""

from __future__ import annotations

from shoal.compose.loader import Note, SecretFile, Stack, load_stack, stack_name_from

STACK_SET_PREFIX = "stack."


def stack_set_name(stack: str) -> str:
    """The apply set that records what stack ``stack`` owns."""
    return STACK_SET_PREFIX + stack


__all__ = ["Note", "SecretFile", "Stack", "load_stack", "stack_name_from", "stack_set_name"]
