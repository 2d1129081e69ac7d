#!/usr/bin/env bash
# Installs the Debian packages lmctfy needs to build and test, if missing.
# Sourced or run by tools/setup and tools/test; safe to run again.
set -euo pipefail
PKGS=(pkg-config libuv1-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler libarchive-dev busybox-static
      libmicrohttpd-dev prometheus  # the metrics endpoint and its scrape tests (issue #16)
      mandoc zsh tmux  # the man page lint, the zsh completion and lmctl top tests (issue #16)
      python3 python3-protobuf)  # the protoc-generated Python client's test (tools/test)
missing=()
for p in "${PKGS[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "deps: swift is not on PATH (expected at /opt/swift/usr/bin)" >&2; exit 1; }
