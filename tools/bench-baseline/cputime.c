/* cputime PID: prints the CPU time of process PID in microseconds, all of
 * its threads (those that have exited included) from its process CPU clock,
 * to nanosecond resolution. tools/run-bench reads it before and after a
 * row to get the agent's own CPU per lifecycle; utime+stime in
 * /proc/PID/stat count whole clock ticks (10 ms, i.e. 100 us a lifecycle
 * over 100 rounds). Exit status 1 if the clock cannot be read. */
#define _GNU_SOURCE
#include <stdio.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: cputime PID\n"); return 64; }
    clockid_t clock;
    struct timespec t;
    int e = clock_getcpuclockid((pid_t)atol(argv[1]), &clock);
    if (e == 0 && clock_gettime(clock, &t) != 0) e = errno;
    if (e != 0) {
        fprintf(stderr, "cputime: process %s: %s\n", argv[1], strerror(e));
        return 1;
    }
    printf("%.1f\n", t.tv_sec * 1e6 + t.tv_nsec / 1e3);
    return 0;
}
