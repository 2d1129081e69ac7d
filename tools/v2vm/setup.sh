#!/bin/bash
# Idempotent: make sure qemu + busybox-static are installed and a Debian cloud kernel (cgroup v2, all
# controllers built in) is unpacked in the cache. Prints the vmlinuz path on stdout; everything else on stderr.
# env: V2VM_CACHE (default <repo>/.build-v2vm; the name must stay .build* so git ignores it)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${V2VM_CACHE:-$(cd "$HERE/../.." && pwd)/.build-v2vm}
META=linux-image-cloud-amd64
log() { echo "v2vm-setup: $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$CACHE/kernel"
# Parallel test runs may call us at once: serialise downloads/unpacking.
exec 9>"$CACHE/setup.lock"
flock 9

UPDATED=0
apt_update() {  # at most once per call, and only when something is actually missing/stale
    [ "$UPDATED" = 1 ] && return 0
    [ "$(id -u)" = 0 ] || { log "need root for apt-get (or pre-install: qemu-system-x86 busybox-static)"; return 1; }
    log "apt-get update"
    apt-get update -qq >&2 || { log "apt-get update failed (no network to the Debian mirror?)"; return 1; }
    UPDATED=1
}

# --- host tools -------------------------------------------------------------------------------------
missing=()
for p in qemu-system-x86 busybox-static; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt_update || die "cannot install ${missing[*]}"
    log "installing ${missing[*]}"
    # no recommends: qemu-system-x86 would otherwise pull in a GTK GUI we never use
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >"$CACHE/apt-install.log" 2>&1 || { tail -20 "$CACHE/apt-install.log" >&2; die "apt-get install failed"; }
fi

# --- kernel: resolve the versioned package behind the metapackage --------------------------------------
resolve() {
    KPKG=$(apt-cache depends "$META" 2>/dev/null | awk '$1=="Depends:" && $2 ~ /^linux-image-/ {print $2; exit}')
    [ -n "$KPKG" ] || return 1
    KVER=$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null | awk '$1=="Version:" {print $2; exit}')
    [ -n "$KVER" ]
}
cached_vmlinuz() { ls -1t "$CACHE"/kernel/*/boot/vmlinuz-* 2>/dev/null | head -1 || true; }

if ! resolve; then
    # fresh machine (empty apt lists) or offline: try an update; fall back to any kernel already cached
    if ! { apt_update && resolve; }; then
        V=$(cached_vmlinuz); [ -n "$V" ] || die "cannot resolve $META with apt-cache and nothing cached"
        log "warning: cannot resolve $META; using cached $V"; echo "$V"; exit 0
    fi
fi

DEST="$CACHE/kernel/${KPKG}_${KVER//:/%}"
if ! ls "$DEST"/boot/vmlinuz-* >/dev/null 2>&1; then
    TMP=$(mktemp -d "$CACHE/kernel/.dl.XXXXXX")
    trap 'rm -rf "$TMP"' EXIT
    # (sandbox user root: the _apt user cannot write into a root-owned cache dir anyway)
    log "downloading $KPKG=$KVER"
    if ! (cd "$TMP" && apt-get download -qq -o APT::Sandbox::User=root "$KPKG=$KVER" >&2); then
        # lists older than the mirror (the versioned .deb was superseded): refresh and re-resolve once
        apt_update && resolve || die "cannot resolve $META after apt-get update"
        DEST="$CACHE/kernel/${KPKG}_${KVER//:/%}"
        (cd "$TMP" && apt-get download -qq -o APT::Sandbox::User=root "$KPKG=$KVER" >&2) || die "apt-get download $KPKG=$KVER failed"
    fi
    # unpack only into our cache: never install a kernel into the host's /boot
    dpkg-deb -x "$TMP"/*.deb "$TMP/root" || die "dpkg-deb -x failed"
    ls "$TMP"/root/boot/vmlinuz-* >/dev/null 2>&1 || die "$KPKG contains no /boot/vmlinuz-*"
    rm -rf "$DEST"; mv "$TMP/root" "$DEST"   # rename = atomic: a half-unpacked tree is never seen as cached
    log "unpacked into $DEST"
fi
ls "$DEST"/boot/vmlinuz-* | head -1
