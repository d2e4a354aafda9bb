"""``shoal ui``: a single-use link that signs a browser in to the web UI.

The link is minted by the manager the CLI reaches (Control ``UiLogin``), for
the CLI's own identity and role; it works once, for two minutes, on that
manager's ``--http-listen`` (docs/ui.md).
"""

from __future__ import annotations

import argparse
import sys

from shoal.cli.options import command, server_option


def cmd_ui(args: argparse.Namespace) -> int:
    from shoal.cli import remote

    reply = remote.call(args, "UiLogin", {})
    print(reply["url"], flush=True)
    print(
        f"open it in a browser and press Sign in, to sign in as {reply['user']} "
        f"({reply['role']}); it works once, until {reply['expiresAt']}",
        file=sys.stderr,
    )
    if args.open:
        import webbrowser

        webbrowser.open(str(reply["url"]))
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    command(parser, cmd_ui)
    parser.epilog = (
        "Prints a login link for the web UI of the manager it reaches, signing in as\n"
        "the user (and with the role) of the credentials in use. Opening it shows a\n"
        "Sign in button (a link previewer uses nothing up); pressing it signs in. The\n"
        "link works once, within two minutes; the session it opens lasts 8 hours (never\n"
        "past the user's certificate) or until the manager restarts. The manager needs\n"
        "--http-listen (`shoal up` turns it on)."
    )
    server_option(parser)
    parser.add_argument("--open", action="store_true", help="also open it in a browser")
