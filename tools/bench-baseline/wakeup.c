/* What waking a sleeping thread or process costs on this machine: the
 * price of each hand-off in the agent's call path (loop thread -> pool
 * thread -> loop thread, client -> agent -> client), which lifecycle.c's
 * single process pays far less often. tools/run-bench prints it beside
 * the lifecycle rows' context switches.
 *
 * threads: two threads of one process ping-pong a counter through two
 *   eventfds, each blocking in read(2) until the other writes (the way a
 *   libuv loop and its pool hand work back and forth), pinned to the same
 *   CPU (same_cpu) and to two CPUs (cross_cpu: the sleeper's CPU is idle
 *   and must be woken, as when the agent's threads run on both CPUs).
 * processes: two processes ping-pong one byte over a Unix socketpair, each
 *   blocking in read(2) (the way a client and the agent do), on two CPUs.
 * Each prints the microseconds of one hand-off (a round trip is two), the
 * median of ROUNDS rounds of N round trips. With one CPU the cross-CPU
 * figures are "n/a".
 * usage: wakeup [N [ROUNDS]]   (default 2000 and 5) */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void get(int fd, void *buf, size_t len) {
    ssize_t r;
    while ((r = read(fd, buf, len)) < 0 && errno == EINTR) {}
    if (r != (ssize_t)len) die("read");
}

static void put(int fd, const void *buf, size_t len) {
    ssize_t r;
    while ((r = write(fd, buf, len)) < 0 && errno == EINTR) {}
    if (r != (ssize_t)len) die("write");
}

static int n = 2000;
static int ping, pong; /* eventfds: main -> echo, echo -> main */
static int main_cpu, echo_cpu;

/* Pins the calling thread (and what it forks) to one CPU. */
static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) die("sched_setaffinity");
}

static void *echo(void *arg) {
    (void)arg;
    uint64_t v;
    pin(echo_cpu);
    for (int i = 0; i < n; i++) {
        get(ping, &v, sizeof v);
        put(pong, &v, sizeof v);
    }
    return NULL;
}

static double threads_round(void) {
    pthread_t t;
    uint64_t one = 1, v;
    pin(main_cpu);
    if (pthread_create(&t, NULL, echo, NULL) != 0) die("pthread_create");
    usleep(1000); /* the echo thread asleep in its read */
    double t0 = now_us();
    for (int i = 0; i < n; i++) {
        put(ping, &one, sizeof one);
        get(pong, &v, sizeof v);
    }
    double us = (now_us() - t0) / n / 2;
    pthread_join(t, NULL);
    return us;
}

static double processes_round(void) {
    int sv[2];
    char c = 'x';
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) die("socketpair");
    pin(main_cpu);
    fflush(stdout); /* the child's die() would print what is buffered again */
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        pin(echo_cpu);
        close(sv[0]);
        for (int i = 0; i < n; i++) {
            get(sv[1], &c, 1);
            put(sv[1], &c, 1);
        }
        _exit(0);
    }
    close(sv[1]);
    usleep(1000);
    double t0 = now_us();
    for (int i = 0; i < n; i++) {
        put(sv[0], &c, 1);
        get(sv[0], &c, 1);
    }
    double us = (now_us() - t0) / n / 2;
    close(sv[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    return us;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double (*round)(void), int rounds) {
    double v[64];
    for (int i = 0; i < rounds; i++) v[i] = round();
    qsort(v, rounds, sizeof v[0], cmp);
    return rounds % 2 ? v[rounds / 2] : (v[rounds / 2 - 1] + v[rounds / 2]) / 2;
}

int main(int argc, char **argv) {
    int rounds = 5;
    if (argc > 1) n = atoi(argv[1]);
    if (argc > 2) rounds = atoi(argv[2]);
    if (argc > 3 || n < 1 || rounds < 1 || rounds > 64) {
        fprintf(stderr, "usage: wakeup [N [ROUNDS]]   (N >= 1, 1 <= ROUNDS <= 64)\n");
        return 64;
    }
    ping = eventfd(0, EFD_CLOEXEC);
    pong = eventfd(0, EFD_CLOEXEC);
    if (ping < 0 || pong < 0) die("eventfd");
    /* Two CPUs this process may use (the first two of its affinity mask). */
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) die("sched_getaffinity");
    int cpus[2], found = 0;
    for (int c = 0; c < CPU_SETSIZE && found < 2; c++)
        if (CPU_ISSET(c, &allowed)) cpus[found++] = c;
    main_cpu = echo_cpu = cpus[0];
    double same = median(threads_round, rounds);
    printf("wakeup (one hand-off to a sleeping peer, median of %d x %d round trips): threads_same_cpu_us=%.1f", rounds, n, same);
    if (found < 2) {
        printf(" threads_cross_cpu_us=n/a processes_cross_cpu_us=n/a (one CPU)\n");
        return 0;
    }
    echo_cpu = cpus[1];
    double cross = median(threads_round, rounds);
    printf(" threads_cross_cpu_us=%.1f processes_cross_cpu_us=%.1f\n", cross, median(processes_round, rounds));
    return 0;
}
