#!/usr/bin/env bash
# Build vecq's images on a host that cannot reach an image registry, and run `vecq embed` in the
# worker image on CPU.  Everything comes from Debian's packages and PyPI:
#
#   apt-get install -y docker.io debootstrap
#   dockerd --data-root /tmp/dockerd-root --storage-driver=overlay2 \
#           --iptables=false --ip6tables=false --bridge=none &      # if no daemon runs yet
#   deploy/build_local.sh                                           # from the repository root
#
# 1. A local base image: `debootstrap bookworm` (+ python3, python3-venv, python3-pip,
#    python-is-python3, ca-certificates, and the host's CAs in /usr/local/share/ca-certificates),
#    imported as vecq-local-base:bookworm.  It stands in for
#    nvidia/cuda (CUDA_IMAGE) and python:3.12-slim (PYTHON_IMAGE), which cannot be pulled here.
# 2. The worker image, deploy/Dockerfile unchanged but for the base, tagged vecq-worker:local-cpu.
#    Its `pip install ".[gpu]"` would pull PyPI's default torch, the multi-GB CUDA build; when a
#    local CPU torch wheel exists (TORCH_WHEEL, default /opt/wheels/torch-*+cpu-cp311-*.whl) it is
#    served on 127.0.0.1 and pip is pointed at it and pinned to it (build args PIP_FIND_LINKS,
#    PIP_CONSTRAINT).  onnxruntime-gpu and the rest come from PyPI (`--network host`).
# 3. The gateway image, deploy/Dockerfile.gateway on the same base, tagged vecq-gateway:local.
# 4. `vecq embed` of a 200-line corpus in the worker image, --device cpu, with no network at all
#    (--network none: the packaged model, the embedded Valkey); the vectors are checked for shape
#    and unit norm.
#
# The legacy builder is used (DOCKER_BUILDKIT=0): BuildKit would fetch the `# syntax=` frontend
# from Docker Hub.  The context is staged with the Dockerfile's own .dockerignore applied.
# Env: ROOTFS (default /tmp/vecq-rootfs), MIRROR, TORCH_WHEEL, KEEP_ROOTFS=1 to keep the rootfs.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOTFS=${ROOTFS:-/tmp/vecq-rootfs}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BASE=vecq-local-base:bookworm
export DOCKER_BUILDKIT=0

docker info >/dev/null || { echo "no docker daemon: start dockerd first (see the header)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/vecq-build.XXXXXX)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
  [ "${KEEP_ROOTFS:-0}" = 1 ] || rm -rf "$ROOTFS"
}
trap cleanup EXIT

# --- 1. local base image -----------------------------------------------------------------------
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR"
  # The host's own CAs (a TLS-inspecting proxy's, say) so that pip in the build reaches PyPI as the
  # host does; Debian's pip in a venv reads certifi's bundle unless told: /etc/pip.conf.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
  fi
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOTFS/etc/pip.conf"
  chroot "$ROOTFS" sh -c 'update-ca-certificates >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*'
  tar -C "$ROOTFS" -c . | docker import - "$BASE"
fi

# --- build context: the files the Dockerfiles COPY, minus their .dockerignore --------------------
stage() {  # stage DOCKERFILE -> context dir
  local ctx="$WORK/ctx-$(basename "$1")"
  mkdir -p "$ctx"
  cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/engines" "$REPO/producer" "$REPO/worker" "$ctx/"
  cp "$REPO/$1" "$ctx/Dockerfile"
  cp "$REPO/$1.dockerignore" "$ctx/.dockerignore"
  echo "$ctx"
}

# --- 2. worker image, CPU torch ------------------------------------------------------------------
TORCH_WHEEL=${TORCH_WHEEL:-$(ls /opt/wheels/torch-*+cpu-cp311-*.whl 2>/dev/null | head -n1 || true)}
TORCH_ARGS=()
if [ -n "$TORCH_WHEEL" ] && [ -f "$TORCH_WHEEL" ]; then
  mkdir -p "$WORK/wheels"
  ln -s "$TORCH_WHEEL" "$WORK/wheels/"
  version=$(basename "$TORCH_WHEEL" | cut -d- -f2)  # e.g. 2.13.0+cpu
  echo "torch==$version" >"$WORK/wheels/constraints.txt"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 -m http.server --bind 127.0.0.1 --directory "$WORK/wheels" "$port" >/dev/null 2>&1 &
  SERVER_PID=$!
  sleep 1
  TORCH_ARGS=(--build-arg "PIP_FIND_LINKS=http://127.0.0.1:$port/"
              --build-arg "PIP_CONSTRAINT=http://127.0.0.1:$port/constraints.txt")
  echo "torch: $(basename "$TORCH_WHEEL") (served on 127.0.0.1:$port)"
else
  echo "torch: no local CPU wheel, PyPI's default (the CUDA build, several GB)" >&2
fi
docker build --network host -f "$(stage deploy/Dockerfile)/Dockerfile" \
  --build-arg CUDA_IMAGE="$BASE" "${TORCH_ARGS[@]}" \
  -t vecq-worker:local-cpu "$WORK/ctx-Dockerfile"

# --- 3. gateway image ----------------------------------------------------------------------------
docker build --network host -f "$(stage deploy/Dockerfile.gateway)/Dockerfile" \
  --build-arg PYTHON_IMAGE="$BASE" -t vecq-gateway:local "$WORK/ctx-Dockerfile.gateway"
docker run --rm --network none vecq-gateway:local --help >/dev/null

# --- 4. vecq embed in the worker image, on CPU, offline -----------------------------------------
mkdir -p "$WORK/data" && chmod 777 "$WORK/data"
for i in $(seq 1 200); do echo "sentence number $i about embeddings, queues and containers"; done \
  >"$WORK/data/corpus.txt"
docker run --rm --network none -v "$WORK/data:/data" --entrypoint vecq vecq-worker:local-cpu \
  embed /data/corpus.txt --out /data/vectors.npy --device cpu
docker run --rm --network none -v "$WORK/data:/data" --entrypoint python vecq-worker:local-cpu -c '
import numpy as np, torch, onnxruntime
v = np.load("/data/vectors.npy")
n = np.linalg.norm(v, axis=1)
assert v.shape == (200, 384) and np.isfinite(v).all() and np.allclose(n, 1, atol=1e-3), (v.shape, n)
print(f"vecq embed in vecq-worker:local-cpu: {v.shape} float32 vectors, unit norm;"
      f" torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
      f" {onnxruntime.get_available_providers()}")
'
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^vecq-'
