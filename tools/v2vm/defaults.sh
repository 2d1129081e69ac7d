# Sourced by tools/v2vm/run.sh and tools/test-v2: the defaults both need.
# V2VM_TIMEOUT: seconds the VM may run in all (test-v2 puts the tests' own
# deadline 90 s before it, so that a hang is explained before the VM ends);
# anything but whole seconds is refused here, for both. 900: the guest suite
# takes 190-210 s on an idle host, but 320-400 s has been seen (a busy or
# slow host under TCG), too close to a 510 s deadline for a test of
# correctness; a hang costs five more minutes of CI than it did.
: "${V2VM_TIMEOUT:=900}"
[[ "$V2VM_TIMEOUT" =~ ^[0-9]+$ ]] || { echo "v2vm: V2VM_TIMEOUT must be whole seconds, got '$V2VM_TIMEOUT'" >&2; exit 1; }
