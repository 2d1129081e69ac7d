#!/bin/bash
# Run PAYLOAD_DIR/run inside a real cgroup v2 kernel under qemu and exit with its exit code.
# usage: tools/v2vm/run.sh PAYLOAD_DIR
#   PAYLOAD_DIR holds an executable `run` (started in the guest with cwd /tests, as root, cgroup2 mounted at
#   /sys/fs/cgroup with every controller enabled in the root) plus whatever it uses; shared libraries of
#   ELF files in it are added automatically.
# env: V2VM_TIMEOUT (s, default 900, tools/v2vm/defaults.sh)  V2VM_MEM (MiB, default 1024)  V2VM_CACHE  V2VM_LOG (console log file)
#      V2VM_LOCKUP_S (s, default 120: a guest CPU stuck that long in its kernel ends the run early, exit 75)
#      V2VM_STALL_S (s, default 120: that long without a V2VM_HEARTBEAT line, once one was seen: the same)
# The guest console goes to stdout and to the log; harness messages go to stderr.
set -euo pipefail
die() { echo "v2vm: error: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: $0 PAYLOAD_DIR   (PAYLOAD_DIR/run is executed inside the VM)"
[ -d "$1" ] || die "payload '$1' is not a directory"
PAYLOAD=$(cd "$1" && pwd)
[ -f "$PAYLOAD/run" ] && [ -x "$PAYLOAD/run" ] || die "$PAYLOAD/run missing or not executable"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export V2VM_CACHE=${V2VM_CACHE:-$(cd "$HERE/../.." && pwd)/.build-v2vm}
. "$HERE/defaults.sh"
TIMEOUT=$V2VM_TIMEOUT

VMLINUZ=$("$HERE/setup.sh") || die "setup.sh failed"
mkdir -p "$V2VM_CACHE/logs"
ls -1t "$V2VM_CACHE"/logs/*.log 2>/dev/null | tail -n +50 | xargs -r rm -f || true   # keep the newest 49 logs
WORK=$(mktemp -d "$V2VM_CACHE/run.XXXXXX")   # per-run: parallel runs must not share an initramfs
LOG=${V2VM_LOG:-$V2VM_CACHE/logs/$(date +%Y%m%d-%H%M%S)-$$.log}
QEMU_DONE=0
# `timeout` put qemu in its own process group, so it does not get the terminal's signals itself.
stop_qemu() { if [ -s "$WORK/qemu.pid" ]; then kill "$(cat "$WORK/qemu.pid")" 2>/dev/null || true; fi; }
cleanup() {
    # Killed while qemu runs (Ctrl-C, a test runner's timeout): take qemu down with us.
    if [ "$QEMU_DONE" = 0 ]; then stop_qemu; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT; trap 'exit 143' TERM; trap 'exit 129' HUP

"$HERE/mkinitrd.sh" "$WORK/initrd.gz" "$VMLINUZ" "$PAYLOAD" || die "initramfs build failed"

echo "v2vm: booting $(basename "$VMLINUZ") (timeout ${TIMEOUT}s, log $LOG)" >&2
T0=${EPOCHREALTIME//[!0-9]/}
# Run in the background and `wait`: bash runs traps only after a *foreground* pipeline ends, which would
# leave qemu running until the timeout if we get killed. sed (unbuffered) drops the serial console's CRs
# and SeaBIOS's terminal escape sequences.
{ q=0; timeout -k 10 "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m "${V2VM_MEM:-1024}" -smp 2 \
      -nographic -no-reboot -nic none -pidfile "$WORK/qemu.pid" \
      -kernel "$VMLINUZ" -initrd "$WORK/initrd.gz" -append "console=ttyS0 panic=-1 quiet" \
      </dev/null 2>&1 || q=$?; echo $q 2>/dev/null > "$WORK/qemu.rc"; } | sed -u 's/\r$//; s/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g' | tee "$LOG" &
PIPE=$!
# A guest whose CPUs stay stuck in its kernel (the watchdog's "soft lockup ... stuck for Ns", repeated
# every ~28 s while it lasts) runs nothing any more, not even the tests' own deadline: it is ended once
# one has been stuck LOCKUP_S seconds (a host too busy to run a vCPU for a while gives a report or two
# that end by themselves), 10 s later so that the stack traces the init asked for reach the log.
# A payload may also print V2VM_HEARTBEAT lines (tools/test-v2 does, every 10 s): once one has been
# seen, STALL_S seconds without a new one mean the guest stopped running anything (a kernel frozen
# with no watchdog report at all has been seen too), and the VM is ended the same way.
LOCKUP_S=${V2VM_LOCKUP_S:-120}
[[ "$LOCKUP_S" =~ ^[0-9]+$ ]] || die "V2VM_LOCKUP_S must be whole seconds, got '$LOCKUP_S'"
STALL_S=${V2VM_STALL_S:-120}
[[ "$STALL_S" =~ ^[0-9]+$ ]] || die "V2VM_STALL_S must be whole seconds, got '$STALL_S'"
LOCKED=
BEATS=0
BEAT_AT=$SECONDS
while kill -0 "$PIPE" 2>/dev/null; do
    if [ -z "$LOCKED" ]; then
        LOCKED=$(grep -ao 'soft lockup - CPU#[0-9]* stuck for [0-9]*s' "$LOG" 2>/dev/null |
                 awk -v s="$LOCKUP_S" '{ n = $NF; sub(/s$/, "", n) } n + 0 >= s { print "kernel reports a " $0; exit }' || true)
        n=$(grep -ac 'V2VM_HEARTBEAT' "$LOG" 2>/dev/null || true)
        if [ "${n:-0}" != "$BEATS" ]; then
            BEATS=${n:-0}
            BEAT_AT=$SECONDS
        elif [ -z "$LOCKED" ] && [ "$BEATS" -gt 0 ] && [ $((SECONDS - BEAT_AT)) -ge "$STALL_S" ]; then
            LOCKED="printed no V2VM_HEARTBEAT for ${STALL_S}s after $BEATS of them"
        fi
        if [ -n "$LOCKED" ]; then
            echo "v2vm: the guest $LOCKED: ending the VM in 10 s" >&2
            { sleep 10; stop_qemu; } &
        fi
    fi
    sleep 2
done
wait "$PIPE" || true
QEMU_DONE=1
QRC=$(cat "$WORK/qemu.rc" 2>/dev/null || echo "?")
US=$(( ${EPOCHREALTIME//[!0-9]/} - T0 )); ELAPSED=$((US / 1000000)).$(printf %03d $((US % 1000000 / 1000)))

# Take the last match: the init prints it last, after everything the payload wrote.
RESULT=$(grep -ao 'V2VM_RESULT rc=[0-9]*' "$LOG" | tail -1 || true)
if [ -z "$RESULT" ]; then
    if [ -n "$LOCKED" ]; then
        echo "v2vm: FAIL: the guest stopped running (${LOCKED}); the kernel's stack traces, if it printed any, are in the log: $LOG" >&2
        exit 75   # EX_TEMPFAIL: the emulated machine failed, not the payload (tools/test-v2 boots once more)
    elif [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
        echo "v2vm: FAIL: guest timed out after ${TIMEOUT}s (V2VM_TIMEOUT) without a result; log: $LOG" >&2
    else
        echo "v2vm: FAIL: no 'V2VM_RESULT rc=N' line (guest crashed or qemu failed, qemu rc=$QRC); log: $LOG" >&2
    fi
    exit 1
fi
RC=${RESULT#V2VM_RESULT rc=}
[ "$QRC" = 0 ] || echo "v2vm: note: qemu exited with $QRC after the result line" >&2
echo "v2vm: guest rc=$RC after ${ELAPSED}s; log: $LOG" >&2
exit "$RC"
