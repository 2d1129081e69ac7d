/* The timer of tools/bench-startup: whole-process wall time (posix_spawn to
 * waitpid, stdout to /dev/null) of the same command run by several
 * binaries, alternating between them: ROUNDS rounds, each running every
 * binary BATCH times, the order rotated every round so that none always
 * goes first. Prints, per binary, the median, the 10th-90th percentile
 * range, and the median's ratio to the binary labelled "c".
 *   startup_timer version ROUNDS BATCH LABEL=BIN...        BIN --version
 *   startup_timer create  ROUNDS BATCH PREFIX LABEL=BIN... BIN create PREFIX<i> SPEC
 *                         (timed), then BIN destroy PREFIX<i> (not timed)
 *   startup_timer pause   ROUNDS BATCH NAME LABEL=BIN...   BIN pause NAME (timed),
 *                         then BIN resume NAME (timed, reported as "resume")
 * Any run that fails (exit status not 0) stops the benchmark with status 1;
 * SIGTERM or SIGINT stops it with status 2 once the running child is reaped,
 * so the caller can clean up knowing no child of ours is still at work. */
#define _GNU_SOURCE
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
#include "spawn_timer.h"

extern char **environ;
static const char *SPEC = "cpu:{limit:500} memory:{limit:100000000}";

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

typedef struct { const char *label, *bin; double *s[2]; int n[2]; } Variant;

/* Runs argv to completion and returns its wall time in microseconds. */
static double run(char *const argv[]) { return time_process("startup_timer", argv, &stop); }

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *s, int n, double p) { return s[(int)(p * (n - 1) + 0.5)]; }

static void report(const char *what, Variant *v, int nv, int k) {
    double cmed = 0;
    for (int i = 0; i < nv; i++) {
        qsort(v[i].s[k], v[i].n[k], sizeof(double), cmp);
        if (strcmp(v[i].label, "c") == 0) cmed = pct(v[i].s[k], v[i].n[k], 0.5);
    }
    for (int i = 0; i < nv; i++) {
        double *s = v[i].s[k];
        int n = v[i].n[k];
        double med = pct(s, n, 0.5);
        printf("%-10s %-8s median %7.0f us  p10-p90 %6.0f-%-6.0f us  n=%d", what, v[i].label, med,
               pct(s, n, 0.1), pct(s, n, 0.9), n);
        if (cmed > 0) printf("  x%.2f of c", med / cmed);
        printf("\n");
    }
}

int main(int argc, char **argv) {
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (argc < 5) { fprintf(stderr, "usage: see the comment in startup_timer.c\n"); return 3; }
    const char *op = argv[1];
    int rounds = atoi(argv[2]), batch = atoi(argv[3]);
    int first = 4;
    const char *name = NULL;
    if (strcmp(op, "version") != 0) name = argv[first++];
    int nv = argc - first;
    Variant *v = calloc(nv, sizeof *v);
    for (int i = 0; i < nv; i++) {
        char *eq = strchr(argv[first + i], '=');
        if (!eq) { fprintf(stderr, "startup_timer: expected LABEL=BIN, got %s\n", argv[first + i]); return 3; }
        *eq = 0;
        v[i].label = argv[first + i];
        v[i].bin = eq + 1;
        v[i].s[0] = calloc(rounds * batch, sizeof(double));
        v[i].s[1] = calloc(rounds * batch, sizeof(double));
    }
    int seq = 0;
    for (int r = 0; r < rounds; r++) {
        for (int j = 0; j < nv; j++) {
            Variant *x = &v[(r + j) % nv];
            for (int b = 0; b < batch; b++) {
                if (strcmp(op, "version") == 0) {
                    char *a[] = {(char *)x->bin, "--version", NULL};
                    x->s[0][x->n[0]++] = run(a);
                } else if (strcmp(op, "create") == 0) {
                    char c[256];
                    snprintf(c, sizeof c, "%s%d", name, seq++);
                    char *a[] = {(char *)x->bin, "create", c, (char *)SPEC, NULL};
                    x->s[0][x->n[0]++] = run(a);
                    char *d[] = {(char *)x->bin, "destroy", c, NULL};
                    run(d);
                } else if (strcmp(op, "pause") == 0) {
                    char *p[] = {(char *)x->bin, "pause", (char *)name, NULL};
                    x->s[0][x->n[0]++] = run(p);
                    char *q[] = {(char *)x->bin, "resume", (char *)name, NULL};
                    x->s[1][x->n[1]++] = run(q);
                } else {
                    fprintf(stderr, "startup_timer: unknown op %s\n", op);
                    return 3;
                }
            }
        }
    }
    report(strcmp(op, "version") == 0 ? "--version" : op, v, nv, 0);
    if (strcmp(op, "pause") == 0) report("resume", v, nv, 1);
    return 0;
}
