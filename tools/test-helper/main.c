/* lmctfy-test-helper: workloads for the integration tests, in C so they
 * behave the same on the host and in the v2 guest (no python there).
 *   alloc MB [HOLD_S]  touch MB MiB of memory page by page, then sleep HOLD_S
 *                      (default 300): an OOM kill or a threshold crossing.
 *   forkloop           fork as fast as possible, every child too, forever:
 *                      only ever run inside a container with a pids limit.
 *   oscillate MB MS N  N times: map and touch MB MiB, hold MS ms, unmap,
 *                      hold MS ms (memory usage crosses thresholds both ways).
 *   stat PATH          stat(2) PATH once; exit 0 if it exists, 1 if not.
 *   fuse-hang DIR      a FUSE mount at DIR that never answers (fusehang.c). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int netns_main(void);
int fusehang_main(const char *dir);

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "alloc") == 0) {
        long mb = atol(argv[2]);
        int hold = argc >= 4 ? atoi(argv[3]) : 300;
        long page = sysconf(_SC_PAGESIZE);
        for (long i = 0; i < mb; i++) {
            /* volatile: the optimizer may otherwise drop a malloc whose
             * memory is never read (the release build allocated nothing,
             * and tools/bench-policy saw no memory use). */
            volatile char *p = malloc(1 << 20);
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
    if (argc >= 5 && strcmp(argv[1], "oscillate") == 0) {
        size_t bytes = (size_t)atol(argv[2]) << 20;
        useconds_t hold = (useconds_t)atoi(argv[3]) * 1000;
        int n = atoi(argv[4]);
        for (int i = 0; i < n; i++) {
            char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) return 2;
            memset(p, 1, bytes);
            usleep(hold);
            munmap(p, bytes);
            usleep(hold);
        }
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "netns") == 0) return netns_main();
    if (argc >= 3 && strcmp(argv[1], "stat") == 0) {
        struct stat st;
        return stat(argv[2], &st) == 0 ? 0 : 1;
    }
    if (argc >= 3 && strcmp(argv[1], "fuse-hang") == 0) return fusehang_main(argv[2]);
    fprintf(stderr, "usage: lmctfy-test-helper alloc MB [HOLD_S] | forkloop | oscillate MB MS N | netns | stat PATH | fuse-hang DIR\n");
    return 64;
}
