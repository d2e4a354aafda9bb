"""Shell completion: ``shoal completion bash|zsh|fish`` and the live names it offers.

Completion is argcomplete's: the script ``shoal completion SHELL`` prints is
argcomplete's shell code for the ``shoal`` command. On every Tab the shell runs
``shoal`` with ``_ARGCOMPLETE`` set; ``shoal.cli.main`` then hands the command
line to ``complete`` here instead of running a verb. argcomplete walks the same
parser a command is parsed with (verbs, sub-verbs, options, choices), so the
names it offers cannot drift from what parses. It reads the line as plain argparse
does, though, not with the options-anywhere rule of ``shoal.cli.options.Parser``:
after an option written between two positionals it may offer the names of the
wrong positional. argcomplete was picked over a static
generator (shtab) because resource names come from the live cluster: an
argument declared with ``options.completes(action, kind)`` calls ``live_names``
here, which asks the manager (the ``--server``/``--context`` already on the
line, else the usual resolution) for the services, nodes, tasks, syncs, secrets
or configs, and reads contexts from the local config file.

Completion must never get in a user's way: it has ``DEADLINE`` seconds for the
whole answer, and any failure (no cluster, bad credentials, a timeout) completes
nothing, silently. The shell scripts send the command's stderr to /dev/null;
no traceback reaches the terminal either way.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shoal.cli.options import command

SHELLS = ("bash", "zsh", "fish")
# Seconds a Tab may wait for the manager before completing nothing.
DEADLINE = 2.0


def cmd_completion(args: argparse.Namespace) -> int:
    from argcomplete.shell_integration import shellcode

    sys.stdout.write(shellcode(["shoal"], shell=args.shell))
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    command(parser, cmd_completion)
    parser.epilog = (
        "install (then start a new shell):\n"
        "  bash: shoal completion bash > ~/.local/share/bash-completion/completions/shoal\n"
        "  zsh:  shoal completion zsh > ~/.zfunc/_shoal   (with fpath+=(~/.zfunc) before\n"
        "        compinit in ~/.zshrc)\n"
        "  fish: shoal completion fish > ~/.config/fish/completions/shoal.fish\n"
        'or for this shell only: eval "$(shoal completion bash)" (zsh: the same;\n'
        "fish: shoal completion fish | source)\n\n"
        "Names of services, nodes, tasks, syncs, secrets and configs are completed\n"
        "from the cluster the command line points at; when none answers within\n"
        f"{DEADLINE:g}s nothing is completed."
    )
    parser.add_argument("shell", choices=SHELLS, help="the shell to print the script for")


# ------------------------------------------------------------- completing


def complete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request (argcomplete exits the process)."""
    import argcomplete

    # Only the verb's own options and arguments, as argparse parses them.
    argcomplete.autocomplete(parser, always_complete_options=False)


def words_of(line: str) -> list[str]:
    """The words of the command line being completed, without the program name."""
    import shlex

    try:
        words = shlex.split(line)
    except ValueError:  # an open quote: the word being typed
        words = line.split()
    return words[1:]


# ------------------------------------------------------------- live names

# Secrets and configs have Get methods of their own.
_FILE_KINDS = {"secrets": "secret", "configs": "config"}


def live_names(kind: str, prefix: str, parsed_args: argparse.Namespace) -> list[str]:
    """Names of ``kind`` starting with ``prefix``; ``[]`` on any failure."""
    try:
        if kind == "contexts":
            names = _contexts()
        else:
            names = _fetch(kind, getattr(parsed_args, "server", None), parsed_args)
    except Exception:  # completion completes nothing rather than fail
        return []
    return sorted(n for n in set(names) if n.startswith(prefix))


def _contexts() -> list[str]:
    from shoal.security.contexts import Config, config_path

    return list(Config.load(config_path()).contexts)


def _fetch(kind: str, server: str | None, parsed_args: argparse.Namespace) -> list[str]:
    import asyncio

    from shoal.api.client import open_control

    context = getattr(parsed_args, "context", None)

    async def names() -> list[str]:
        async with open_control(server, context) as control:
            if kind in _FILE_KINDS:
                items = await control.get_files(_FILE_KINDS[kind])
                return [str(i["metadata"]["name"]) for i in items]
            items = await control.get(kind)
            return [_name(kind, item) for item in items]

    async def bounded() -> list[str]:
        async with asyncio.timeout(DEADLINE):
            return await names()

    return asyncio.run(bounded())


def _name(kind: str, item: dict[str, Any]) -> str:
    if kind in ("services", "syncs"):
        return str(item["metadata"]["name"])
    if kind == "tasks":
        return str(item.get("name") or item["id"])
    return str(item["id"])
