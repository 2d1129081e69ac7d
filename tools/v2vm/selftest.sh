#!/bin/bash
# Demo/self-test of the harness: build probe.c statically, run it in the cgroup v2 VM via run.sh.
# Exits 0 only if the guest booted, mounted cgroup2 and every probe check passed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v gcc >/dev/null || { echo "selftest: error: gcc not found (apt-get install gcc libc6-dev)" >&2; exit 1; }
P=$(mktemp -d)
trap 'rm -rf "$P"' EXIT
gcc -static -O2 -Wall -o "$P/probe" "$HERE/probe.c"
printf '#!/bin/sh\nexec ./probe\n' > "$P/run"
chmod +x "$P/run"
if "$HERE/run.sh" "$P"; then
    echo "selftest: PASS"
else
    rc=$?; echo "selftest: FAIL (rc=$rc)" >&2; exit "$rc"
fi
