/* lmctfy-test-helper: workloads for the integration tests, in C so they
 * behave the same on the host and in the v2 guest (no python there).
 *   alloc MB [HOLD_S]  touch MB MiB of memory page by page, then sleep HOLD_S
 *                      (default 300): an OOM kill or a threshold crossing.
 *   forkloop           fork as fast as possible, every child too, forever:
 *                      only ever run inside a container with a pids limit. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "alloc") == 0) {
        long mb = atol(argv[2]);
        int hold = argc >= 4 ? atoi(argv[3]) : 300;
        long page = sysconf(_SC_PAGESIZE);
        for (long i = 0; i < mb; i++) {
            char *p = malloc(1 << 20);
            if (!p) return 2;
            for (long off = 0; off < (1 << 20); off += page) p[off] = 1;
        }
        sleep((unsigned)hold);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "forkloop") == 0) {
        signal(SIGCHLD, SIG_IGN);   /* children are reaped by the kernel */
        for (;;) {
            if (fork() < 0) usleep(100);
        }
    }
    fprintf(stderr, "usage: lmctfy-test-helper alloc MB [HOLD_S] | forkloop\n");
    return 64;
}
