"""shoal: a cluster orchestrator with declarative services and pluggable runtimes."""

__version__ = "0.1.0"
