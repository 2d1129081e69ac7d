/* Timing one whole process, shared by startup_timer.c and process_timer.c:
 * posix_spawn (stdout to /dev/null) to waitpid, in microseconds on
 * CLOCK_MONOTONIC. A failure to spawn or a non-zero exit stops the caller
 * (exit 1), naming `who` and the command; a signal that set `*stop` while
 * the command ran stops it with exit 2. */
#ifndef SPAWN_TIMER_H
#define SPAWN_TIMER_H
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static inline double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static inline double time_process(const char *who, char *const argv[], volatile sig_atomic_t *stop) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    double t0 = now_us();
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    if (rc != 0) { fprintf(stderr, "%s: posix_spawn %s: %s\n", who, argv[0], strerror(rc)); exit(1); }
    int status;
    pid_t w;
    while ((w = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {}
    if (w != pid) { perror("waitpid"); exit(1); }
    double t = now_us() - t0;
    posix_spawn_file_actions_destroy(&fa);
    if (*stop) { fprintf(stderr, "%s: stopped by a signal\n", who); exit(2); }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "%s: failed (status 0x%x):", who, status);
        for (int i = 0; argv[i]; i++) fprintf(stderr, " %s", argv[i]);
        fprintf(stderr, "\n");
        exit(1);
    }
    return t;
}
#endif
