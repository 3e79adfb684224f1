#!/usr/bin/env bash
# Build the gateway's container image from Debian packages, without pulling a base image:
#   1. two roots with mmdebstrap: the build stage's (Debian's python3, gcc and headers) and
#      the final one (--variant=extract: python3, bubblewrap, libseccomp2, coreutils,
#      ca-certificates unpacked, no package manager run, no shell), both imported as images;
#   2. a wheelhouse of the pinned dependencies (and the build backend) in .tools/image/wheels,
#      downloaded by the host's pip, so the build stage installs with PIP_NO_INDEX=1;
#   3. the image from Dockerfile.distroless;
#   4. with --falco-plugin, also the Falco plugin's image (falco/Containerfile.plugin,
#      localhost/mcp-gateway-falco-plugin:<version>) after building the plugin with Go.
# Needs root (mmdebstrap unpacks as root), mmdebstrap and podman (or docker / buildah).
# Usage: scripts/image.sh [--engine podman|docker|buildah] [--tag TAG] [--suite bookworm] [--falco-plugin]
set -euo pipefail
cd "$(dirname "$0")/.."

engine=podman
tag=localhost/mcp-gateway:dev
suite=bookworm
falco_plugin=no
while [ $# -gt 0 ]; do
  case "$1" in
    --falco-plugin) falco_plugin=yes; shift ;;
    --engine) engine=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --suite) suite=$2; shift 2 ;;
    *) echo "usage: $0 [--engine podman|docker|buildah] [--tag TAG] [--suite SUITE] [--falco-plugin]" >&2; exit 2 ;;
  esac
done
out=.tools/image
mkdir -p "$out/wheels"
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3

# What the final root holds. libstdc++6 and libatomic1: grpcio's and regopy's extensions.
# libc-bin: ldconfig and its cache, through which ctypes finds libseccomp for pyseccomp.
# coreutils: the commands tasks run (echo, cat, ls, ...). No shell comes with any of these.
runtime=python3,libc-bin,libstdc++6,libatomic1,bubblewrap,libseccomp2,libcap2,coreutils,ca-certificates
builder=python3,python3-venv,python3-dev,gcc,libc6-dev,libcap-dev

# The final root's own files, made by hooks on the unpacked tree ("$1"; the extract variant
# runs only extract hooks): users (root and nonroot 65532, as in distroless), the CA bundle
# update-ca-certificates would have made, the directories the gateway writes, the dynamic
# linker's cache, and no package-manager programs.
hooks=(
  --extract-hook='printf "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" > "$1/etc/passwd"'
  --extract-hook='printf "root:x:0:\nnonroot:x:65532:\n" > "$1/etc/group"'
  --extract-hook='mkdir -p "$1/etc/ssl/certs" && cat "$1"/usr/share/ca-certificates/mozilla/*.crt > "$1/etc/ssl/certs/ca-certificates.crt"'
  --extract-hook='rm -rf "$1"/usr/bin/dpkg* "$1"/usr/sbin/dpkg* "$1"/usr/bin/debconf* "$1"/usr/share/debconf "$1"/var/lib/dpkg "$1"/var/cache/debconf'
  --extract-hook='ldconfig -r "$1"'
  --extract-hook='install -d -m 1777 "$1/tmp" && install -d -m 0700 -o 65532 -g 65532 "$1/home/nonroot" "$1/var/lib/mcp-gateway"'
)
echo "image: final root ($runtime)" >&2
mmdebstrap --quiet --variant=extract --include="$runtime" "${hooks[@]}" "$suite" "$out/base.tar"
echo "image: build-stage root ($builder)" >&2
mmdebstrap --quiet --variant=minbase --include="$builder" "$suite" "$out/builder.tar"

import() {  # import TAR IMAGE
  if [ "$engine" = buildah ]; then
    buildah rmi -f "$2" >/dev/null 2>&1 || true
    buildah from --name "import-$$" scratch >/dev/null
    buildah add "import-$$" "$1" / >/dev/null
    buildah config --env PATH=/usr/bin:/bin "import-$$"
    buildah commit --rm "import-$$" "$2" >/dev/null
  else
    "$engine" import --change 'ENV PATH=/usr/bin:/bin' "$1" "$2" >/dev/null
  fi
}
import "$out/base.tar" "localhost/mcp-gateway-base:$suite"
import "$out/builder.tar" "localhost/mcp-gateway-builder:$suite"

echo "image: wheelhouse" >&2
"$python" - > "$out/requirements.txt" <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"]))
PY
"$python" -m pip download --quiet --dest "$out/wheels" -r "$out/requirements.txt"

revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
version=$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
build_args=(--build-arg "BUILDER_IMAGE=localhost/mcp-gateway-builder:$suite"
            --build-arg "BASE_IMAGE=localhost/mcp-gateway-base:$suite"
            --build-arg PIP_NO_INDEX=1 --build-arg "VERSION=$version" --build-arg "REVISION=$revision"
            --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)")
build() {  # build FILE TAG
  case "$engine" in
    buildah) buildah bud --layers -f "$1" "${build_args[@]}" -t "$2" . ;;
    *) "$engine" build --network none -f "$1" "${build_args[@]}" -t "$2" . ;;
  esac
}
echo "image: $tag" >&2
build Dockerfile.distroless "$tag"
if [ "$falco_plugin" = yes ]; then
  echo "image: the Falco plugin" >&2
  "$python" -c 'import sys; from tests.falco.plugin_build import build_plugin; sys.exit(build_plugin() is None)'
  build falco/Containerfile.plugin "localhost/mcp-gateway-falco-plugin:$version"
fi
