"""The HTTP API and web UI every manager serves on ``--http-listen`` (docs/ui.md)."""
