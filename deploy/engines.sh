#!/usr/bin/env bash
# Container engines for shoal's docker and podman runtimes (and their tests), on Debian, as root:
#   install docker.io, podman, busybox-static and catatonit (podman's init) when missing;
#   give podman the rlimits it needs as root here; start dockerd and the Podman API
#   service unless they already answer; build the local test image on both engines.
# Idempotent: run it as often as you like. Fails loudly when an engine does not come up.
# Logs: /var/log/shoal-engines/{dockerd,podman}.log
set -euo pipefail

IMAGE=shoal-test/busybox:latest
PODMAN_SOCKET=/run/podman/podman.sock
LOGS=/var/log/shoal-engines
# The daemons' working directory: conmon writes files (an "oom" marker) into
# its cwd, which must not be whatever directory this script was run from.
HOME_DIR=/var/lib/shoal-engines
mkdir -p "$LOGS" "$HOME_DIR"

say() { printf 'engines: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (installs packages and starts dockerd)"

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v podman >/dev/null 2>&1 || missing+=(podman)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' \
    || missing+=(busybox-static)
[ -x /usr/libexec/podman/catatonit ] || missing+=(catatonit)
command -v file >/dev/null 2>&1 || missing+=(file)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Podman as root fails to start containers here with its default rlimits.
conf=/etc/containers/containers.conf
mkdir -p /etc/containers
if ! grep -q '^default_ulimits' "$conf" 2>/dev/null; then
    say "setting default_ulimits in $conf"
    if grep -q '^\[containers\]' "$conf" 2>/dev/null; then
        sed -i '/^\[containers\]/a default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]' "$conf"
    else
        printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n' >>"$conf"
    fi
fi

wait_for() {  # wait_for WHAT SECONDS COMMAND...
    local what=$1 seconds=$2
    shift 2
    for _ in $(seq $((seconds * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    return 1
}

if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (log: $LOGS/dockerd.log)"
    (cd "$HOME_DIR" && nohup dockerd >>"$LOGS/dockerd.log" 2>&1 </dev/null &)
    wait_for dockerd 60 docker info \
        || { tail -20 "$LOGS/dockerd.log" >&2; die "dockerd did not come up"; }
fi

podman_up() { curl -sf --unix-socket "$PODMAN_SOCKET" http://d/v4.0.0/libpod/_ping; }
if ! podman_up >/dev/null 2>&1; then
    say "starting the Podman API service on $PODMAN_SOCKET (log: $LOGS/podman.log)"
    mkdir -p "$(dirname "$PODMAN_SOCKET")"
    (cd "$HOME_DIR" &&
        nohup podman system service --time=0 "unix://$PODMAN_SOCKET" >>"$LOGS/podman.log" 2>&1 </dev/null &)
    wait_for podman 30 podman_up \
        || { tail -20 "$LOGS/podman.log" >&2; die "the Podman API service did not come up"; }
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp /bin/busybox "$context/busybox"
cat >"$context/Dockerfile" <<'EOF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
CMD ["/bin/sh"]
EOF
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "building $IMAGE for docker"
    docker build -q -t "$IMAGE" "$context" >/dev/null || die "docker build failed"
fi
if ! podman image exists "$IMAGE"; then
    say "building $IMAGE for podman"
    podman build -q -t "$IMAGE" "$context" >/dev/null || die "podman build failed"
fi
docker run --rm "$IMAGE" true || die "docker cannot run $IMAGE"
podman run --rm "$IMAGE" true || die "podman cannot run $IMAGE"
say "docker $(docker version --format '{{.Server.Version}}'), podman $(podman version --format '{{.Server.Version}}' 2>/dev/null || podman --version), image $IMAGE: ready"
