/* stats_sweep: the C floor for the agent's stats sampler (issue #11): one
 * sweep reads, for every container, the numbers a periodic sample needs
 * and nothing else.
 *
 *   stats_sweep --containers N --sweeps S --prefix /lmctfy_bench_stats [--reopen]
 *
 * Containers PREFIX_0 .. PREFIX_{N-1} must exist in the cpuacct, memory and
 * pids v1 hierarchies (run-bench makes them with lmctfy create). For each
 * container these files are opened once, up front, and kept open:
 *   cpuacct/NAME/cpuacct.usage        CPU ns
 *   memory/NAME/memory.usage_in_bytes usage
 *   memory/NAME/memory.stat           its total_inactive_file line
 *   pids/NAME/pids.current            tasks
 *   memory/NAME/memory.failcnt        times the limit was hit (issue #16)
 *   cpu/NAME/cpu.stat                 nr_periods, nr_throttled, throttled_time (issue #16)
 * A sweep preads (offset 0, one call each, into a stack buffer) all six of
 * every container and parses them: the integers, and working set = usage -
 * total_inactive_file (0 if negative), as lmctfy's v1 stats do. Each sweep is
 * timed with CLOCK_MONOTONIC; prints
 *   RESULT containers=N sweeps=S us_per_container_p50=.. us_per_container_min=..
 * (sweep time / N; median and fastest of the S sweeps). With --reopen every
 * file is opened, read and closed in every sweep instead (what a sampler that
 * keeps no descriptors pays; context only), printed as
 *   RESULT mode=reopen containers=N sweeps=S us_per_container_p50=.. us_per_container_min=..
 *
 * Why it is a fair floor: it does the kernel work any sampler of these
 * numbers must do (one read of each cgroup file; the kernel formats
 * memory.stat whole, whoever asks for one line), with no allocation, no
 * container lookup and no copying past the parse; a sampler in any language
 * can at best match it. Any failure (a missing file, a short or unparsable
 * read) ends the program with status 1. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NFILES 6
static const char *files[NFILES][2] = {
    {"cpuacct", "cpuacct.usage"},
    {"memory", "memory.usage_in_bytes"},
    {"memory", "memory.stat"},
    {"pids", "pids.current"},
    {"memory", "memory.failcnt"},
    {"cpu", "cpu.stat"},
};

typedef struct {
    char *path[NFILES];
    int fd[NFILES];
} ctr_t;

static volatile uint64_t sink; /* keeps the parsed numbers alive */

static int64_t mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void fail(const char *path, const char *what) {
    fprintf(stderr, "stats_sweep: %s: %s\n", path, what);
    exit(1);
}

static uint64_t parse_u64(const char *s, const char *path) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s) fail(path, "not an integer");
    return v;
}

/* One read of file i of c into buf (NUL-terminated): pread on the kept
 * descriptor, or open/read/close with reopen. */
static void read_file(ctr_t *c, int i, int reopen, char *buf, size_t cap) {
    ssize_t n;
    if (reopen) {
        int fd = open(c->path[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0) fail(c->path[i], strerror(errno));
        n = read(fd, buf, cap - 1);
        close(fd);
    } else {
        n = pread(c->fd[i], buf, cap - 1, 0);
    }
    if (n < 0) fail(c->path[i], strerror(errno));
    if ((size_t)n == cap - 1) fail(c->path[i], "larger than the read buffer");
    buf[n] = 0;
}

static void sample(ctr_t *c, int reopen) {
    char buf[8192];
    read_file(c, 0, reopen, buf, sizeof buf);
    uint64_t cpu = parse_u64(buf, c->path[0]);
    read_file(c, 1, reopen, buf, sizeof buf);
    uint64_t usage = parse_u64(buf, c->path[1]);
    read_file(c, 2, reopen, buf, sizeof buf);
    static const char key[] = "total_inactive_file ";
    char *p = strstr(buf, key);
    while (p && p != buf && p[-1] != '\n') p = strstr(p + 1, key);
    if (!p) fail(c->path[2], "no total_inactive_file line");
    uint64_t inactive = parse_u64(p + sizeof key - 1, c->path[2]);
    uint64_t working_set = usage > inactive ? usage - inactive : 0;
    read_file(c, 3, reopen, buf, sizeof buf);
    uint64_t pids = parse_u64(buf, c->path[3]);
    read_file(c, 4, reopen, buf, sizeof buf);
    uint64_t failcnt = parse_u64(buf, c->path[4]);
    read_file(c, 5, reopen, buf, sizeof buf);
    uint64_t cfs = 0;
    static const char *keys[] = {"nr_periods ", "nr_throttled ", "throttled_time "};
    for (int k = 0; k < 3; k++) {
        char *q = strstr(buf, keys[k]);
        while (q && q != buf && q[-1] != '\n') q = strstr(q + 1, keys[k]);
        if (!q) fail(c->path[5], keys[k]);
        cfs += parse_u64(q + strlen(keys[k]), c->path[5]);
    }
    sink += cpu + working_set + pids + failcnt + cfs;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void usage(void) {
    fprintf(stderr, "usage: stats_sweep --containers N --sweeps S --prefix /lmctfy_bench_stats [--reopen]\n");
    exit(2);
}

int main(int argc, char **argv) {
    long n = 0, sweeps = 0;
    const char *prefix = NULL;
    int reopen = 0;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (!strcmp(k, "--reopen")) { reopen = 1; continue; }
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(k, "--containers")) n = atol(v);
        else if (!strcmp(k, "--sweeps")) sweeps = atol(v);
        else if (!strcmp(k, "--prefix")) prefix = v;
        else { fprintf(stderr, "stats_sweep: unknown option %s\n", k); usage(); }
    }
    if (n <= 0 || sweeps <= 0 || !prefix || !*prefix) usage();

    ctr_t *cs = calloc((size_t)n, sizeof *cs);
    if (!cs) { perror("calloc"); return 1; }
    for (long c = 0; c < n; c++) {
        for (int i = 0; i < NFILES; i++) {
            if (asprintf(&cs[c].path[i], "/sys/fs/cgroup/%s%s%s_%ld/%s", files[i][0], prefix[0] == '/' ? "" : "/",
                         prefix, c, files[i][1]) < 0) {
                perror("asprintf");
                return 1;
            }
            cs[c].fd[i] = -1;
            if (!reopen) {
                cs[c].fd[i] = open(cs[c].path[i], O_RDONLY | O_CLOEXEC);
                if (cs[c].fd[i] < 0) fail(cs[c].path[i], strerror(errno));
            }
        }
    }

    int64_t *t = calloc((size_t)sweeps, sizeof *t);
    for (long s = 0; s < sweeps; s++) {
        int64_t t0 = mono_ns();
        for (long c = 0; c < n; c++) sample(&cs[c], reopen);
        t[s] = mono_ns() - t0;
    }
    qsort(t, (size_t)sweeps, sizeof *t, cmp_i64);
    printf("RESULT %scontainers=%ld sweeps=%ld us_per_container_p50=%.2f us_per_container_min=%.2f\n",
           reopen ? "mode=reopen " : "", n, sweeps, t[sweeps / 2] / 1e3 / (double)n, t[0] / 1e3 / (double)n);
    return 0;
}
