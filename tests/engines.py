"""Container engines for tests: reach them, build the test image, clean up.

No registry is reachable, so the test image is built locally on each engine:
``FROM scratch`` plus the static ``/bin/busybox`` of Debian's ``busybox-static``
with its applets linked into ``/bin``. ``deploy/engines.sh`` builds the same
image; building here too keeps a test run self-contained.

``SHOAL_REQUIRE_ENGINES=1`` (set by ``.ci/run``) turns "engine missing" from a
skip into a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

TEST_IMAGE = "shoal-test/busybox:latest"
BUSYBOX = Path("/bin/busybox")
DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
CMD ["/bin/sh"]
"""
ENGINES = ("docker", "podman")
DOCKER_URL = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
PODMAN_URL = os.environ.get("CONTAINER_HOST", "unix:///run/podman/podman.sock")


def engines_required() -> bool:
    return os.environ.get("SHOAL_REQUIRE_ENGINES", "") not in ("", "0")


def missing(engine: str, reason: str) -> None:
    """Skip the test, or fail it when engines are required (CI)."""
    message = f"{engine} engine not usable here: {reason}"
    if engines_required():
        pytest.fail(f"{message} (SHOAL_REQUIRE_ENGINES is set)", pytrace=False)
    pytest.skip(message)


def client(engine: str) -> Any:
    """A connected SDK client for ``engine``; skips or fails when unreachable."""
    try:
        if engine == "docker":
            import docker

            docker_client = docker.DockerClient(base_url=DOCKER_URL, version="1.41", timeout=60)
            docker_client.ping()
            return docker_client
        import podman

        podman_client = podman.PodmanClient(base_url=PODMAN_URL, timeout=60)
        if not podman_client.ping():
            raise ConnectionError(f"no answer from {PODMAN_URL}")
        return podman_client
    except Exception as exc:
        missing(engine, f"{type(exc).__name__}: {exc}")
        raise  # not reached


def ensure_test_image(engine: str) -> str:
    """Build ``TEST_IMAGE`` on ``engine`` unless it is there; return its name."""
    sdk = client(engine)
    try:
        sdk.images.get(TEST_IMAGE)
        return TEST_IMAGE
    except Exception:  # not found: build it below
        pass
    if not BUSYBOX.exists():
        missing(engine, f"{BUSYBOX} is missing (apt-get install busybox-static)")
    with tempfile.TemporaryDirectory() as context:
        shutil.copy(BUSYBOX, Path(context) / "busybox")
        (Path(context) / "Dockerfile").write_text(DOCKERFILE)
        result = sdk.images.build(path=context, tag=TEST_IMAGE)
        # docker returns (image, logs); podman returns (image, log generator): drain both.
        for _ in result[1]:
            pass
    return TEST_IMAGE


def remove_node_containers(engine: str, node: str) -> None:
    """Remove every container a test's runtime made (labelled with its node)."""
    sdk = client(engine)
    for container in sdk.containers.list(all=True, filters={"label": f"io.shoal.node={node}"}):
        with contextlib.suppress(Exception):  # already gone
            container.remove(force=True)


def template_extras(runtime_name: str, shared_dir: Path) -> dict[str, Any]:
    """What a template needs to run the conformance scripts in a container.

    The test image, and ``shared_dir`` bind-mounted at the same path so that
    workdirs and files the tests create on the host are there inside too.
    """
    if runtime_name not in ENGINES:
        return {}
    return {
        "runtime": runtime_name,
        "image": TEST_IMAGE,
        "mounts": [{"type": "bind", "source": str(shared_dir), "target": str(shared_dir)}],
    }
