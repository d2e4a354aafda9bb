"""Fetching a Sync's source: a directory on the manager host, or a git repository.

``SourceFetcher.fetch`` returns the directory to load and the revision it
holds. A directory source is read where it is; its revision is a digest of
the YAML files' names and bytes, so an edit is a new revision and a touch is
not. A git source is fetched with the ``git`` program (the standard client,
present wherever git is; no library reimplements its transports and
credential handling as well) into a checkout of its own under the manager's
state directory (``STATE_DIR/sync/<name>``): a shallow fetch of the ref, a
forced detached checkout of the commit, and a clean, so the checkout holds
exactly that commit. Its revision is ``<ref>@sha1:<commit>``.

Every git call has a deadline (``GitSettings.timeout``), runs without a
terminal prompt or the host's credential helpers (a password prompt on a
manager would hang the controller), and its failure becomes a
``SourceError`` carrying the last lines git printed.

A git source with ``secretRef`` names a shoal secret holding one line,
``USERNAME:PASSWORD`` (a token goes where the password goes). Its bytes are
asked for at each fetch (``SecretLookup``) and reach git only through the
environment of that one ``git fetch``, answered by an inline credential
helper: nothing is written to disk, nothing shows in ``ps``, and git's
messages never carry the password. The helper is configured for the
source's own URL only, and that fetch follows no redirect, so the login is
never offered to another host.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import SourceError
from shoal.manifest import yaml_files
from shoal.models.sync import SyncSource

GIT_TIMEOUT = 60.0

# A secret's bytes by name, None when there is no such secret.
SecretLookup = Callable[[str], bytes | None]

# Git's credential protocol, answered from the fetch's own environment.
CREDENTIAL_HELPER = (
    "!f() { test \"$1\" = get && printf 'username=%s\\npassword=%s\\n' "
    '"$SHOAL_GIT_USERNAME" "$SHOAL_GIT_PASSWORD"; }; f'
)


@dataclass(frozen=True, slots=True)
class Fetched:
    revision: str
    # The directory whose YAML files are applied.
    root: Path
    # Files are named relative to this in messages (the checkout), or absolute.
    relative_to: Path | None


class SourceFetcher:
    """Fetches sources into ``cache_dir`` (one checkout per Sync)."""

    def __init__(
        self,
        cache_dir: Path,
        git_timeout: float = GIT_TIMEOUT,
        secrets: SecretLookup | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.git_timeout = git_timeout
        self.secrets = secrets

    async def fetch(self, name: str, source: SyncSource) -> Fetched:
        if source.git is not None:
            git = source.git
            login = self._credentials(git.secret_ref) if git.secret_ref is not None else {}
            return await self._git(name, git.url, git.ref, git.path, login)
        assert source.path is not None
        return await asyncio.to_thread(_directory, Path(source.path))

    def _credentials(self, secret: str) -> dict[str, str]:
        """The environment that answers git's credential helper (see the module docstring)."""
        data = self.secrets(secret) if self.secrets is not None else None
        if data is None:
            raise SourceError(
                f"secretRef: no secret named {secret!r} (create it: shoal secret create "
                f"{secret} -f FILE, holding USERNAME:PASSWORD)"
            )
        try:
            text = data.decode()
        except UnicodeDecodeError:
            text = ""
        line = text.removesuffix("\n").removesuffix("\r")
        username, colon, password = line.partition(":")
        if not colon or not username or not password or any(c in line for c in "\r\n\0"):
            # Never quote the bytes: they are a secret, whatever their shape.
            raise SourceError(
                f"secretRef: secret {secret!r} is not one line USERNAME:PASSWORD "
                f"({len(data)} bytes; a token goes where the password goes)"
            )
        return {"SHOAL_GIT_USERNAME": username, "SHOAL_GIT_PASSWORD": password}

    def forget(self, name: str) -> None:
        """Remove the checkout of a Sync that was deleted."""
        shutil.rmtree(self.cache_dir / name, ignore_errors=True)

    async def _git(
        self, name: str, url: str, ref: str, path: str, login: dict[str, str]
    ) -> Fetched:
        checkout = self.cache_dir / name
        if not (checkout / ".git").is_dir():
            shutil.rmtree(checkout, ignore_errors=True)
            checkout.mkdir(parents=True)
            await self._run(checkout, "init", "--quiet")
        # The fetched ref is overwritten each time: a changed URL or ref simply moves it.
        await self._run(
            checkout,
            "fetch",
            "--quiet",
            "--no-tags",
            "--depth=1",
            "--force",
            url,
            f"+{ref}:refs/shoal/fetched",
            what=f"git fetch {url} {ref}",
            login=login,
            scope=url,
        )
        commit = (
            await self._run(checkout, "rev-parse", "--verify", "refs/shoal/fetched^{commit}")
        ).strip()
        await self._run(checkout, "checkout", "--quiet", "--force", "--detach", commit)
        await self._run(checkout, "clean", "-ffdxq")
        root = checkout / path if path != "." else checkout
        revision = f"{ref}@sha1:{commit}"
        if not root.is_dir():
            raise SourceError(
                f"path {path!r} is not a directory in {url} at {revision}", revision=revision
            )
        return Fetched(revision, root, checkout)

    async def _run(
        self,
        cwd: Path,
        *args: str,
        what: str = "",
        login: dict[str, str] | None = None,
        scope: str = "",
    ) -> str:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "SHOAL_GIT_"))},
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
            **(login or {}),
        }
        # An empty helper first clears the host's helpers; ours answers only with a login.
        helpers = ["-c", "credential.helper="]
        if login:
            # Only for the source's URL, and no redirect to take the login elsewhere.
            helpers += ["-c", f"credential.{scope}.helper={CREDENTIAL_HELPER}"]
            helpers += ["-c", "http.followRedirects=false"]
        command = ["git", *helpers, "-c", "core.hooksPath=/dev/null", *args]
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise SourceError(f"cannot run git: {exc.strerror or exc}") from exc
        try:
            async with asyncio.timeout(self.git_timeout):
                out, err = await proc.communicate()
        except TimeoutError as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise SourceError(
                f"{what or 'git ' + args[0]}: no answer within {self.git_timeout:g}s"
            ) from exc
        if proc.returncode != 0:
            lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
            detail = "; ".join(lines[-3:]) or f"exit code {proc.returncode}"
            raise SourceError(f"{what or 'git ' + args[0]}: {detail}")
        return out.decode(errors="replace")


def _directory(root: Path) -> Fetched:
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "no such directory"
        raise SourceError(f"{root}: {what} on this manager")
    return Fetched(directory_digest(root), root, None)


def directory_digest(root: Path) -> str:
    """A digest of the YAML files under ``root``: their relative names and bytes."""
    digest = hashlib.sha256()
    for path in yaml_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()[:16]
