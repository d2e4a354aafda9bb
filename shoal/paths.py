"""Where shoal keeps local state, shared by the CLI and the daemons it starts.

``shoal up`` (manager and agent on one machine) and the client commands must
agree on one directory without being told: the manager writes its endpoint
file there, and a bare ``shoal get services`` reads it to find the manager's
address. The lookup follows the XDG base-directory convention so nothing lands
in the home directory's top level, and ``$SHOAL_STATE_DIR`` overrides it for
tests and for running several clusters side by side.

Layout under the state directory (the daemons own it; the CLI only reads):

    manager.json           the endpoint of a manager started with this directory
    manager/manager.json   the same when ``shoal up`` gives the manager a subdirectory

This module imports nothing heavy: every CLI invocation goes through it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

# The manager writes its endpoint here; this module stays light so the CLI does not
# import the manager (store, reconcilers, prometheus) just to find an address.
ENDPOINT_FILE = "manager.json"
MANAGER_SUBDIR = "manager"


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$SHOAL_STATE_DIR``, else ``$XDG_STATE_HOME/shoal``, else ``~/.local/state/shoal``."""
    env = os.environ if env is None else env
    explicit = env.get("SHOAL_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.get("XDG_STATE_HOME")
    if xdg and Path(xdg).is_absolute():  # the spec says to ignore relative values
        return Path(xdg) / "shoal"
    return Path.home() / ".local" / "state" / "shoal"


def endpoint_candidates(state_dir: Path) -> list[Path]:
    """The endpoint files a local manager may have written, most specific first."""
    return [state_dir / ENDPOINT_FILE, state_dir / MANAGER_SUBDIR / ENDPOINT_FILE]
