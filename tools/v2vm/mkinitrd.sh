#!/bin/bash
# Build a gzip'd newc initramfs: busybox-static + applet links, our /init, loop.ko from the unpacked kernel,
# and PAYLOAD_DIR copied to /tests. The guest has no disk or 9p, so every shared library the payload's ELF
# files need (per ldd, including the dynamic loader and the Swift runtime) is copied to the same absolute path.
# usage: mkinitrd.sh OUT.cpio.gz VMLINUZ [PAYLOAD_DIR]    (VMLINUZ as printed by setup.sh)
set -euo pipefail
die() { echo "v2vm-mkinitrd: error: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: $0 OUT.cpio.gz VMLINUZ [PAYLOAD_DIR]"
OUT=$(realpath -m "$1") VMLINUZ=$2 PAYLOAD=${3:-}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BB=/bin/busybox
[ -x $BB ] || die "$BB missing (apt-get install busybox-static, or run setup.sh)"
ldd $BB >/dev/null 2>&1 && die "$BB is dynamically linked; the guest needs busybox-static"
[ -f "$VMLINUZ" ] || die "no kernel at '$VMLINUZ'"
[ -z "$PAYLOAD" ] || [ -d "$PAYLOAD" ] || die "payload '$PAYLOAD' is not a directory"

R=$(mktemp -d "$(dirname "$OUT")/.rootfs.XXXXXX")
trap 'rm -rf "$R" "$OUT.tmp"' EXIT
# mktemp -d makes 0700: the guest's / must let other users (uid 65534 in
# the permission and delegation tests) reach /tmp and /bin.
chmod 755 "$R"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,lib/modules,etc,root}
cp $BB "$R/bin/busybox"
for a in $("$R/bin/busybox" --list-full); do   # e.g. sbin/poweroff, usr/bin/timeout
    [ -e "$R/$a" ] || ln -s /bin/busybox "$R/$a"
done
install -m755 "$HERE/init" "$R/init"
# Some libc/Foundation calls (getpwuid, NSHomeDirectory) want a user database.
echo 'root:x:0:0:root:/root:/bin/sh' > "$R/etc/passwd"
echo 'root:x:0:' > "$R/etc/group"

KROOT=$(dirname "$(dirname "$VMLINUZ")") KVER=$(basename "$VMLINUZ"); KVER=${KVER#vmlinuz-}
# loop.ko: a block device for the io.max tests; fuse.ko: a task no freezer
# can freeze, for the pause tests (UnfreezableTaskIntegrationTests), /dev/fuse then
# coming from devtmpfs.
for mod in loop fuse; do
    KO=$(find "$KROOT/lib/modules/$KVER" -name "$mod.ko*" 2>/dev/null | head -1 || true)
    case "$KO" in
        "") echo "v2vm-mkinitrd: note: no $mod.ko in $KROOT, the tests that need it will say so and skip" >&2 ;;
        *.xz) xz -dc "$KO" > "$R/lib/modules/$mod.ko" ;;   # busybox insmod cannot read compressed modules
        *.zst) zstd -dcq "$KO" > "$R/lib/modules/$mod.ko" ;;
        *) cp "$KO" "$R/lib/modules/$mod.ko" ;;
    esac
done

if [ -n "$PAYLOAD" ]; then
    # -L: a symlink into the host's build tree would dangle in the guest, so copy what it points to
    cp -RL --preserve=mode,timestamps "$PAYLOAD/." "$R/tests"
    declare -A LIBS=()
    missing=""
    # every ELF file, not just executables: a payload may carry its own .so files
    while IFS= read -r -d '' f; do
        [ "$(od -An -tx1 -N4 "$f")" = " 7f 45 4c 46" ] || continue
        out=$(ldd "$f" 2>/dev/null) || continue          # static binary: nothing to copy
        while read -r lib; do
            case "$lib" in
                MISSING:*) missing+=" ${f#"$R"/}:${lib#MISSING:}" ;;
                /*) LIBS[$lib]=1 ;;
            esac
        done < <(awk '/=> not found/ {print "MISSING:" $1; next}
                      /=>/ && $3 ~ /^\// {print $3; next}
                      $1 ~ /^\// {print $1}' <<<"$out")   # the last rule catches the loader itself
    done < <(find "$R/tests" -type f -print0)
    [ -z "$missing" ] || die "ldd cannot resolve:$missing (set LD_LIBRARY_PATH?)"
    # What the payload dlopens rather than links, which ldd cannot see: OpenSSL
    # (Sources/CLmctfyOpenSSL loads libssl.so.<OPENSSL_VERSION_MAJOR> at its
    # first call), with what it links. (libarchive, dlopened by the image
    # store, is left out: it brings libxml2 and ICU, and no guest suite uses it.)
    major=$(sed -n 's/^# *define  *OPENSSL_VERSION_MAJOR  *\([0-9][0-9]*\).*/\1/p' /usr/include/openssl/opensslv.h 2>/dev/null || true)
    for soname in ${V2VM_DLOPEN-libssl.so.${major:-3}}; do
        # awk reads to the end: one that exits at the first match made
        # ldconfig die of SIGPIPE on a long cache, which pipefail and set -e
        # turned into a silent "initramfs build failed" (a fresh machine).
        lib=$(ldconfig -p | awk -v s="$soname" '$1 == s && lib == "" { lib = $NF } END { print lib }')
        [ -n "$lib" ] || die "$soname is not installed (the payload dlopens it; apt-get install libssl3)"
        LIBS[$lib]=1
        while read -r dep; do LIBS[$dep]=1; done < <(ldd "$lib" | awk '/=>/ && $3 ~ /^\// {print $3; next} $1 ~ /^\// {print $1}')
    done
    for lib in "${!LIBS[@]}"; do
        [ -e "$R$lib" ] && continue
        mkdir -p "$R$(dirname "$lib")"
        cp -L "$lib" "$R$lib"   # -L: the guest gets the real file under the name ldd asked for
    done
    echo "v2vm-mkinitrd: payload $(du -sh "$R/tests" | cut -f1), ${#LIBS[@]} shared libraries" >&2
fi

mkdir -p "$(dirname "$OUT")"
# -R 0:0: files owned by root in the guest no matter who built the image
(cd "$R" && find . | "$R/bin/busybox" cpio -o -H newc -R 0:0 2>/dev/null) | gzip -1 > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "v2vm-mkinitrd: $OUT $(du -h "$OUT" | cut -f1)" >&2
