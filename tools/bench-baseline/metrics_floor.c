// tools/bench-metrics' C floor: the same job as the agent's /metrics, in
// plain C on the same HTTP library (libmicrohttpd, external epoll mode,
// driven by an epoll loop as libuv drives the agent's): per request, copy
// the latest samples of N containers (as the agent copies the event log's
// dictionary), sort them by name, and write the same families (the agent's
// own ~60 lines of counters stand in as a fixed block of the same size)
// with the same labels into one buffer. What the agent takes beyond this is
// the cost of doing it in Swift on libuv.
// usage: metrics_floor PORT N PREFIX_BYTES
#define _GNU_SOURCE
#include <microhttpd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

struct sample {
    char name[64];
    uint64_t cpu_ns;
    int64_t usage, working_set, failcnt, pids, periods, throttled, throttled_ns;
    uint64_t ooms;
};

static struct sample *samples;
static int count;
static char *prefix;
static size_t prefix_bytes;

static int by_name(const void *a, const void *b) { return strcmp(((const struct sample *)a)->name, ((const struct sample *)b)->name); }

struct out { char *p; size_t n, cap; };
static void put(struct out *o, const char *s, size_t n) {
    if (o->n + n > o->cap) { o->cap = (o->cap + n) * 2; o->p = realloc(o->p, o->cap); }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}
#define PUTS(o, s) put(o, s, strlen(s))

static void family(struct out *o, const char *name, const char *type, const char *help) {
    char line[512];
    int n = snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    put(o, line, n);
}

static char *render(size_t *length) {
    struct sample *copy = malloc(sizeof *copy * count);
    memcpy(copy, samples, sizeof *copy * count);
    qsort(copy, count, sizeof *copy, by_name);
    struct out o = {malloc(4096 + count * 1400), 0, 4096 + count * 1400};
    put(&o, prefix, prefix_bytes);
    char line[512];
#define INT_FAMILY(metric, type, help, field)                                                                \
    family(&o, metric, type, help);                                                                          \
    for (int i = 0; i < count; i++) {                                                                        \
        int n = snprintf(line, sizeof line, metric "{id=\"%s\",name=\"%s\"} %lld\n", copy[i].name,          \
                         copy[i].name, (long long)copy[i].field);                                            \
        put(&o, line, n);                                                                                    \
    }
    family(&o, "container_cpu_usage_seconds_total", "counter", "Cumulative CPU time consumed, in seconds.");
    for (int i = 0; i < count; i++) {
        int n = snprintf(line, sizeof line, "container_cpu_usage_seconds_total{id=\"%s\",name=\"%s\"} %.9g\n",
                         copy[i].name, copy[i].name, copy[i].cpu_ns / 1e9);
        put(&o, line, n);
    }
    INT_FAMILY("container_memory_usage_bytes", "gauge", "Current memory usage, in bytes (page cache included).", usage)
    INT_FAMILY("container_memory_working_set_bytes", "gauge", "Current working set, in bytes (usage less inactive file pages).", working_set)
    INT_FAMILY("container_memory_failcnt", "counter", "Times memory usage hit the limit.", failcnt)
    INT_FAMILY("container_oom_events_total", "counter", "OOM kills the agent saw in the container since it saw the container.", ooms)
    INT_FAMILY("container_processes", "gauge", "Processes (tasks counted by pids.current) in the container.", pids)
    INT_FAMILY("container_cpu_cfs_periods_total", "counter", "Elapsed CFS enforcement periods.", periods)
    INT_FAMILY("container_cpu_cfs_throttled_periods_total", "counter", "CFS periods in which the container was throttled.", throttled)
    family(&o, "container_cpu_cfs_throttled_seconds_total", "counter", "Total time the container was throttled, in seconds.");
    for (int i = 0; i < count; i++) {
        int n = snprintf(line, sizeof line, "container_cpu_cfs_throttled_seconds_total{id=\"%s\",name=\"%s\"} %.9g\n",
                         copy[i].name, copy[i].name, copy[i].throttled_ns / 1e9);
        put(&o, line, n);
    }
    free(copy);
    *length = o.n;
    return o.p;
}

static int seen;
static enum MHD_Result answer(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *data, size_t *size, void **state) {
    (void)cls; (void)version; (void)data;
    // As the agent does: answered on the second call, so keep-alive holds.
    if (*state == NULL) { *state = &seen; return MHD_YES; }
    if (*size) { *size = 0; return MHD_YES; }
    if (strcmp(method, "GET") != 0 || strcmp(url, "/metrics") != 0) {
        struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        enum MHD_Result q = MHD_queue_response(c, 404, r);
        MHD_destroy_response(r);
        return q;
    }
    size_t n;
    char *body = render(&n);
    struct MHD_Response *r = MHD_create_response_from_buffer(n, body, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result q = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return q;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: metrics_floor PORT N PREFIX_BYTES\n"); return 2; }
    int port = atoi(argv[1]);
    count = atoi(argv[2]);
    prefix_bytes = strtoul(argv[3], NULL, 10);
    prefix = malloc(prefix_bytes + 1);
    for (size_t i = 0; i < prefix_bytes; i++) prefix[i] = (i % 80 == 79) ? '\n' : '#';
    if (prefix_bytes) prefix[prefix_bytes - 1] = '\n';
    samples = calloc(count, sizeof *samples);
    srand(1);
    for (int i = 0; i < count; i++) {
        // The bench's names, in an order that is not sorted (a hash map's).
        snprintf(samples[i].name, sizeof samples[i].name, "/lmctfy_bench_metrics_%d", (i * 7919) % count);
        samples[i].cpu_ns = (uint64_t)rand() * 1000;
        samples[i].usage = rand();
        samples[i].working_set = rand();
        samples[i].failcnt = rand() % 10;
        samples[i].pids = rand() % 100;
        samples[i].periods = rand();
        samples[i].throttled = rand() % 1000;
        samples[i].throttled_ns = (int64_t)rand() * 1000;
    }
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_EPOLL, port, NULL, NULL, answer, NULL,
                                            MHD_OPTION_CONNECTION_LIMIT, 64u, MHD_OPTION_CONNECTION_TIMEOUT, 30u,
                                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)16384, MHD_OPTION_END);
    if (!d) { fprintf(stderr, "metrics_floor: MHD_start_daemon failed\n"); return 1; }
    int mhd = MHD_get_daemon_info(d, MHD_DAEMON_INFO_EPOLL_FD)->epoll_fd;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN};
    epoll_ctl(ep, EPOLL_CTL_ADD, mhd, &ev);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        MHD_UNSIGNED_LONG_LONG ms;
        int timeout = MHD_get_timeout(d, &ms) == MHD_YES ? (int)(ms > 1000 ? 1000 : ms) : 1000;
        epoll_wait(ep, &ev, 1, timeout);
        MHD_run(d);
    }
}
