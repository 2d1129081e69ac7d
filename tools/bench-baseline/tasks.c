/* Baselines for the task benchmarks of lmctfy-bench, in plain C:
 *   freeze N DIR      N x (write FROZEN to DIR/freezer.state, read it until
 *                     FROZEN; write THAWED, read until THAWED) -- v1 freezer
 *   run N FILE...     N x (fork; child writes 0 to each join FILE (tasks on v1) and
 *                     execs /bin/true; parent waits)
 * Prints microseconds per operation. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void put(const char *path, const char *v) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, v, strlen(v)) < 0) { perror(path); exit(1); }
    close(fd);
}

static int is(const char *path, const char *v) {
    char buf[64];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    if (n < 0) { perror(path); exit(1); }
    close(fd);
    buf[n] = 0;
    return strncmp(buf, v, strlen(v)) == 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "freeze") == 0) {
        int n = atoi(argv[2]);
        char state[512];
        snprintf(state, sizeof state, "%s/freezer.state", argv[3]);
        double t0 = now_us();
        for (int i = 0; i < n; i++) {
            put(state, "FROZEN");
            while (!is(state, "FROZEN")) { put(state, "FROZEN"); usleep(50); }
            put(state, "THAWED");
            while (!is(state, "THAWED")) usleep(50);
        }
        printf("c     freeze_thaw_us=%.1f\n", (now_us() - t0) / n);
        return 0;
    }
    if (argc >= 4 && strcmp(argv[1], "run") == 0) {
        int n = atoi(argv[2]);
        double t0 = now_us();
        for (int i = 0; i < n; i++) {
            pid_t pid = fork();
            if (pid == 0) {
                for (int f = 3; f < argc; f++) {
                    int fd = open(argv[f], O_WRONLY | O_CLOEXEC);
                    if (fd < 0 || write(fd, "0", 1) < 0) _exit(126);
                    close(fd);
                }
                execl("/bin/true", "true", (char *)NULL);
                _exit(127);
            }
            int status;
            waitpid(pid, &status, 0);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { fprintf(stderr, "child failed\n"); return 1; }
        }
        printf("c     run_true_us=%.1f\n", (now_us() - t0) / n);
        return 0;
    }
    fprintf(stderr, "usage: tasks freeze N DIR | run N JOIN_FILE...\n");
    return 64;
}
