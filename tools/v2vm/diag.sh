#!/bin/sh
# In the guest (busybox sh), when the tests have run past their deadline:
# what every process is waiting for, so that a hang in the log can be
# explained rather than only timed out. Prints the flock and POSIX locks
# (/proc/locks: "->" marks a waiter), every process's state, kernel wait
# channel and command line, the kernel stack of each thread of the test
# runner and of every lmctfy or shell process, memory, and the kernel's
# last messages. Read-only.
echo "=== v2vm diagnostics at uptime $(cut -d' ' -f1 /proc/uptime)s"
echo "--- /proc/locks"
cat /proc/locks
echo "--- processes: pid ppid state wchan command"
for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    # (a process may end while this runs: its files are then gone, quietly)
    cmd=$(cat "$p/cmdline" 2>/dev/null | tr '\0' ' ' | cut -c1-160)
    [ -n "$cmd" ] || continue
    set -- $(sed 's/.*) //' "$p/stat" 2>/dev/null)
    echo "$pid ${2:-?} ${1:-?} $(cat "$p/wchan" 2>/dev/null) $cmd"
done
echo "--- kernel stacks (test runner threads, lmctfy and sh processes)"
for p in /proc/[0-9]*; do
    case "$(cat "$p/comm" 2>/dev/null)" in
        lmctfy*|sh) ;;
        *) continue ;;
    esac
    for t in "$p"/task/*; do
        echo "$p ${t##*/} $(cat "$t/comm" 2>/dev/null) $(sed 's/.*) //' "$t/stat" 2>/dev/null | cut -d' ' -f1) $(cat "$t/wchan" 2>/dev/null)"
        cat "$t/stack" 2>/dev/null | sed 's/^/    /'
    done
done
echo "--- memory"
free
echo "--- kernel messages (last 30)"
dmesg | tail -30
echo "=== end of v2vm diagnostics"
