"""Session-wide test setup.

Hypothesis is imported here, at collection, on purpose: its pytest plugin
otherwise imports it lazily in ``pytest_terminal_summary``, where pytest's
assertion rewriting parses it at the end of a long session, and CPython 3.11.7
can fail that parse with ``SystemError: AST constructor recursion depth
mismatch`` (CPython gh-106905), turning a green run red after the last test.
"""

import hypothesis  # noqa: F401
