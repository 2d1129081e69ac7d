/* The timer of tools/bench-process: whole-process wall time (posix_spawn to
 * waitpid, stdout to /dev/null, stderr inherited) of command sequences, in
 * interleaved rounds.
 *   process_timer ROUNDS PLAN REF
 * PLAN is a file of groups separated by blank lines. Each line of a group is
 *   LABEL<TAB>ARG0<TAB>ARG1...
 * one command (ARG0 an absolute path); a group's commands run in order, and
 * every command with the same LABEL adds to that row's sample of the round
 * ("lmctfy 3 calls" is create + run + destroy; "crun pause" and "crun
 * resume" are two rows of one group, so a resume always follows its pause).
 * LABEL "-" runs the command untimed. A line "@ref<TAB>ROW<TAB>REF" (outside
 * any group) compares ROW with row REF instead of the default.
 *   process_timer ROUNDS PLAN REF [SETTLE_MS]
 * Every round runs every group once, in an order shuffled each round (fixed
 * seed), so that no group always goes first or always follows the same
 * other; and before each group the timer sleeps SETTLE_MS (default 50), so
 * every group starts from an idle kernel: on cgroup v1 the first migration
 * of a task into a cgroup waits for an RCU grace period (the cgroup
 * threadgroup rwsem), and one that follows another within a grace period or
 * two waits less, which a fixed order would hand to the same runtime every
 * round. A line per round gives each row's time. At the end, per row: the median,
 * the 10th-90th percentile range, and the median's ratio to row REF.
 * Any command that fails (exit status not 0) stops the benchmark with
 * status 1; SIGTERM or SIGINT stops it with status 2 once the running child
 * is reaped, so the caller can clean up knowing no child of ours is at work. */
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

enum { MAX_ROWS = 32, MAX_GROUPS = 32, MAX_STEPS = 16, MAX_ARGS = 32 };

typedef struct { int row; char *argv[MAX_ARGS]; } Step;          /* row -1: untimed */
typedef struct { Step steps[MAX_STEPS]; int n; } Group;

static const char *rows[MAX_ROWS];
static const char *refs[MAX_ROWS];   /* NULL: the default reference */
static int nrows;
static Group groups[MAX_GROUPS];
static int ngroups;

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

/* Runs argv to completion and returns its wall time in microseconds. */
static double run(char *const argv[]) { return time_process("process_timer", argv, &stop); }

static int row_index(const char *label) {
    if (strcmp(label, "-") == 0) return -1;
    for (int i = 0; i < nrows; i++)
        if (strcmp(rows[i], label) == 0) return i;
    if (nrows == MAX_ROWS) { fprintf(stderr, "process_timer: too many rows\n"); exit(3); }
    rows[nrows] = strdup(label);
    return nrows++;
}

static void parse(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) { perror(path); exit(3); }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    Group *g = NULL;
    while ((len = getline(&line, &cap, f)) >= 0) {
        if (len > 0 && line[len - 1] == '\n') line[--len] = 0;
        if (len == 0) { g = NULL; continue; }
        if (strncmp(line, "@ref\t", 5) == 0) {
            char *save = NULL, *copy = strdup(line + 5);
            char *row = strtok_r(copy, "\t", &save), *ref = strtok_r(NULL, "\t", &save);
            if (!row || !ref) { fprintf(stderr, "process_timer: bad line: %s\n", line); exit(3); }
            refs[row_index(row)] = ref;
            continue;
        }
        if (!g) {
            if (ngroups == MAX_GROUPS) { fprintf(stderr, "process_timer: too many groups\n"); exit(3); }
            g = &groups[ngroups++];
        }
        if (g->n == MAX_STEPS) { fprintf(stderr, "process_timer: too many commands in a group\n"); exit(3); }
        Step *s = &g->steps[g->n++];
        char *copy = strdup(line), *save = NULL;
        char *label = strtok_r(copy, "\t", &save);
        s->row = row_index(label);
        int a = 0;
        for (char *w; (w = strtok_r(NULL, "\t", &save));) {
            if (a == MAX_ARGS - 1) { fprintf(stderr, "process_timer: too many arguments\n"); exit(3); }
            s->argv[a++] = w;
        }
        if (a == 0) { fprintf(stderr, "process_timer: no command for %s\n", label); exit(3); }
        s->argv[a] = NULL;
    }
    free(line);
    fclose(f);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *s, int n, double p) { return s[(int)(p * (n - 1) + 0.5)]; }

int main(int argc, char **argv) {
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (argc != 4 && argc != 5) { fprintf(stderr, "usage: process_timer ROUNDS PLAN REF [SETTLE_MS] (see the comment in process_timer.c)\n"); return 3; }
    int settle_ms = argc == 5 ? atoi(argv[4]) : 50;
    int rounds = atoi(argv[1]);
    parse(argv[2]);
    const char *ref = argv[3];
    for (int i = 0; i < nrows; i++) if (!refs[i]) refs[i] = ref;
    if (rounds < 1 || ngroups == 0) { fprintf(stderr, "process_timer: nothing to run\n"); return 3; }
    double *samples[MAX_ROWS];
    for (int i = 0; i < nrows; i++) samples[i] = calloc(rounds, sizeof(double));
    setvbuf(stdout, NULL, _IOLBF, 0);
    int order[MAX_GROUPS];
    for (int j = 0; j < ngroups; j++) order[j] = j;
    unsigned long long seed = 0x9E3779B97F4A7C15ull;
    for (int r = 0; r < rounds; r++) {
        for (int j = ngroups - 1; j > 0; j--) {   /* Fisher-Yates, xorshift64 */
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
            int k = (int)(seed % (unsigned long long)(j + 1)), t = order[j];
            order[j] = order[k]; order[k] = t;
        }
        for (int j = 0; j < ngroups; j++) {
            Group *g = &groups[order[j]];
            if (settle_ms > 0) {
                struct timespec ts = {settle_ms / 1000, (settle_ms % 1000) * 1000000L};
                while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !stop) {}
            }
            for (int k = 0; k < g->n; k++) {
                double t = run(g->steps[k].argv);
                if (g->steps[k].row >= 0) samples[g->steps[k].row][r] += t;
            }
        }
        printf("round %2d:", r + 1);
        for (int i = 0; i < nrows; i++) printf("  %s %.2f", rows[i], samples[i][r] / 1000);
        printf("  (ms)\n");
    }
    int width = 0;
    for (int i = 0; i < nrows; i++) if ((int)strlen(rows[i]) > width) width = (int)strlen(rows[i]);
    for (int i = 0; i < nrows; i++) qsort(samples[i], rounds, sizeof(double), cmp);
    printf("%-*s  %9s  %19s  ratio of medians\n", width, "row", "median", "p10-p90");
    for (int i = 0; i < nrows; i++) {
        double med = pct(samples[i], rounds, 0.5), rmed = 0;
        for (int j = 0; j < nrows; j++)
            if (strcmp(rows[j], refs[i]) == 0) rmed = pct(samples[j], rounds, 0.5);
        printf("%-*s  %6.2f ms  %6.2f-%-6.2f ms", width, rows[i], med / 1000,
               pct(samples[i], rounds, 0.1) / 1000, pct(samples[i], rounds, 0.9) / 1000);
        if (rmed > 0) printf("  x%.2f of %s", med / rmed, refs[i]);
        printf("\n");
    }
    return 0;
}
