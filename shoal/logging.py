"""structlog set-up: readable lines on a terminal, JSON lines everywhere else.

Log to stderr so stdout stays for command output. ``SHOAL_LOG_LEVEL`` (debug,
info, warning, error) sets the level; ``SHOAL_LOG_FORMAT`` (json, console)
overrides the terminal detection.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging() -> None:
    level_name = os.environ.get("SHOAL_LOG_LEVEL", "info").upper()
    level = getattr(logging, level_name, logging.INFO)
    fmt = os.environ.get("SHOAL_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
