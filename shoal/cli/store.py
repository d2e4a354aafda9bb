"""``shoal store backup`` and ``shoal store restore``: the cluster's state to a file and back.

``backup`` asks a manager (any of them: it reads the store at one revision,
online, while the cluster runs) and writes the file (mode 0600, written aside
then renamed, then read back and checked). ``restore`` is offline: it opens
the store itself, refuses unless the store is empty and the data key opens
the backup's key check value, and writes every key. Start the managers
afterwards; agents reconnect and their running tasks are adopted, since the
task records they run are back. The format and the reasons are in
``shoal.store.backup`` and docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from shoal.cli.options import (
    UsageError,
    add_subcommand,
    server_option,
    subcommands,
)

DATA_KEY_FILE = "datakey"  # as shoal.manager.server names it in a state dir


def configure(parser: argparse.ArgumentParser) -> None:
    group = subcommands(parser, "store_command")
    backup = add_subcommand(
        group,
        "backup",
        cmd_backup,
        "write a consistent snapshot of the store, taken online, to a file",
        epilog="example:\n  shoal store backup -o shoal-$(date +%F).backup",
    )
    backup.add_argument("-o", "--output", required=True, metavar="FILE", help="the backup file")
    server_option(backup)
    restore = add_subcommand(
        group,
        "restore",
        cmd_restore,
        "write a backup into an empty store (offline: no manager may run on it)",
        epilog=(
            "examples:\n"
            "  shoal store restore -i FILE --state-dir /var/lib/shoal --data-key-file KEY\n"
            "  shoal store restore -i FILE --store etcd://10.0.0.1:2379/shoal "
            "--data-key-file /etc/shoal/datakey"
        ),
    )
    restore.add_argument("-i", "--input", required=True, metavar="FILE", help="the backup file")
    restore.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="a single manager's state dir: restores into DIR/state.db (SQLite)",
    )
    restore.add_argument(
        "--store", metavar="URL", help="the store to restore into (sqlite:///… or etcd://…)"
    )
    restore.add_argument(
        "--data-key-file",
        type=Path,
        metavar="FILE",
        help="the data key the backup's secrets are sealed with (default DIR/datakey); with "
        "--state-dir it is copied there if DIR has none",
    )


def cmd_backup(args: argparse.Namespace) -> int:
    from shoal.api.client import open_control
    from shoal.store.backup import read

    path = Path(args.output)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")

    async def fetch() -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            async with open_control(args.server) as control:
                async for item in control.stream("Backup", {}):
                    out.writelines(item.get("lines", []))
            out.flush()
            os.fsync(out.fileno())

    try:
        asyncio.run(fetch())
        with tmp.open(encoding="utf-8") as stream:
            backup = read(stream, str(path))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    header = backup.header
    print(
        f"backed up {header['keys']} keys of {header['source']} at revision "
        f"{header['revision']} to {path}"
        + (f" (data key {header['dataKey']['keyId']})" if "dataKey" in header else "")
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from shoal.security.datakey import DataKey
    from shoal.store import open_store
    from shoal.store.backup import check_key, read, restore

    if bool(args.state_dir) == bool(args.store):
        raise UsageError("restore needs --state-dir DIR or --store URL (one of them)")
    state_dir: Path | None = args.state_dir.resolve() if args.state_dir else None
    url = args.store or f"sqlite:///{state_dir / 'state.db'}"  # type: ignore[operator]
    key_path: Path | None = args.data_key_file
    own_key = state_dir / DATA_KEY_FILE if state_dir else None
    if key_path is None:
        if own_key is None or not own_key.exists():
            raise UsageError(
                "restore needs the data key the backup was sealed with: --data-key-file FILE"
            )
        key_path = own_key
    key = DataKey.load(key_path)
    if (
        own_key is not None
        and own_key.exists()
        and own_key.resolve() != key_path.resolve()
        and DataKey.load(own_key).key_id != key.key_id
    ):
        raise UsageError(f"{own_key} holds another data key than {key_path}: remove it or pass it")
    with open(args.input, encoding="utf-8") as stream:
        backup = read(stream, args.input)
    check_key(backup, key)  # before anything is created

    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)

    async def write() -> int:
        store = await open_store(url)
        try:
            return await restore(store, backup, key)
        finally:
            await store.aclose()

    count = asyncio.run(write())
    if own_key is not None and not own_key.exists():
        fd = os.open(own_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key_path.read_text())
    header = backup.header
    print(
        f"restored {count} keys into {url} (a backup of {header.get('source')} at revision "
        f"{header.get('revision')}, taken {header.get('createdAt')}); start the managers on it",
        file=sys.stderr,
    )
    return 0
