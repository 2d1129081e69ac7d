/* event_latency: how much the lmctfy agent adds to an OOM notification
 * (issue #11: "OOM -> subscriber, Unix socket").
 *
 *   event_latency --unix SOCKET --cgroup NAME --rounds N [--limit-mb 32] [--notify] [--no-rt] [--verbose]
 *
 * NAME is an existing container with a memory limit (run-bench makes it with
 * `lmctfy create NAME "memory:{limit:33554432}"`); --limit-mb only bounds
 * how much a child allocates before it gives up (it should be killed long
 * before). The program
 *   - connects to the agent's Unix socket, does the hello (OFFER/ACCEPTED,
 *     versions 1-2), calls Subscribe{name: NAME, kinds: [OOM]} and reads up
 *     to its `caught_up` response (docs/PROTOCOL.md sections 1-4 and 6.2);
 *   - then registers its own eventfd for OOM on /sys/fs/cgroup/memory/NAME
 *     (memory.oom_control through cgroup.event_control), the same kernel
 *     notification the agent registers: the kernel signals every eventfd on
 *     that list in one call, before it kills anything, newest registration
 *     first: registered after the agent's watch exists, the raw side is
 *     woken first and is the earliest moment anyone in user space can know
 *     of the OOM;
 *   - per round forks a child that joins the memory cgroup (its pid to
 *     cgroup.procs) and mallocs and memsets 1 MiB chunks until the kernel's
 *     OOM killer kills it. One poll loop waits on the eventfd and the socket
 *     and takes CLOCK_MONOTONIC when each becomes readable: the raw side when
 *     the eventfd read succeeds, the agent side when a RESPONSE frame that
 *     carries an OOM event for NAME has been read whole and decoded (the
 *     time of the poll wake-up that completed it). Only the first of each
 *     side counts; after waitpid the loop drains both until 20 ms pass
 *     quietly (one OOM can signal more than once). An agent event stamped
 *     (timestamp_ns, CLOCK_REALTIME) before the round began is a leftover of
 *     an earlier round and is not counted.
 * The round's figure is agent_time - raw_time, negative if the agent's
 * frame came first (printed as it is). A round whose agent event did not
 * come within 2 s of the raw one is missed. Prints
 *   RESULT rounds=N p50_us=.. p90_us=.. max_us=.. missed=..
 * (percentiles over the rounds not missed) and exits non-zero if any round
 * was missed, the raw eventfd stayed silent, or a child was not killed.
 *
 * Why it is a fair baseline: both sides wait for the same kernel signal in
 * the same process, the same poll, with the same clock; the difference is
 * exactly what lies between the kernel's notification and a subscriber
 * holding the event: the agent's wake-up, recording the event in its log,
 * its event hub, the frame's write and our read and protobuf-c decode of it.
 * The measuring process runs its rounds at the lowest real-time priority
 * (SCHED_FIFO 1, not inherited by the children; --no-rt: normal priority):
 * on a 2-CPU machine one CPU is busy with the dying child for milliseconds
 * after an OOM, and at normal priority our own wake-up often waited behind
 * it or behind the agent, so both sides looked ready in the same wake-up, a
 * 0 that hid the agent's cost. It wakes for microseconds and sleeps again,
 * so it takes nothing measurable from the agent, which runs as it always
 * does.
 *
 * --notify also opens a second connection with a Notify{NAME, oom} call that
 * is read and discarded: an agent that only watches a container's OOM while
 * a Notify listens (before issue #11's always-on watch) then records the
 * event. --verbose prints each round on stderr. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "agent.pb-c.h"
#include "lmctfy.pb-c.h"

typedef Containers__Lmctfy__Agent__Frame Frame;
typedef Containers__Lmctfy__Agent__Hello Hello;
typedef Containers__Lmctfy__Agent__SubscribeRequest SubscribeRequest;
typedef Containers__Lmctfy__Agent__SubscribeResponse SubscribeResponse;
typedef Containers__Lmctfy__Agent__NotifyRequest NotifyRequest;
typedef Containers__Lmctfy__EventSpec EventSpec;
typedef Containers__Lmctfy__EventSpec__Oom EventSpecOom;
#define K(x) CONTAINERS__LMCTFY__AGENT__FRAME_KIND__FRAME_##x
#define S(x) CONTAINERS__LMCTFY__AGENT__HELLO_STAGE__HELLO_##x
#define EV_OOM CONTAINERS__LMCTFY__AGENT__CONTAINER_EVENT_KIND__CONTAINER_EVENT_OOM

#define HELLO_MAX_FRAME 65536u  /* before the handshake (PROTOCOL.md section 1) */
#define MAX_FRAME 4194304u      /* what we announce */
#define CHUNK (1u << 20)
#define AGENT_WAIT_NS 2000000000LL  /* an agent event later than this after the raw one is missed */
#define RAW_WAIT_NS 10000000000LL   /* no raw notification this long after the fork: the setup is broken */
#define QUIET_MS 20

static const char *sock_path, *name;
static int verbose;
static uint32_t ver_lo = 1, ver_hi = 2;

static int64_t mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static uint64_t real_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("event_latency: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static uint32_t get_be32(const unsigned char *u) {
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | (uint32_t)u[3];
}

/* ---- one agent connection: a blocking socket read only after poll says so ---- */

typedef struct {
    int fd;
    const char *what;      /* "Subscribe" or "Notify", for messages */
    unsigned char *in;
    size_t len, cap;
    int open;              /* handshake done */
    uint32_t version;
} conn_t;

static void send_frame(conn_t *c, const Frame *f) {
    size_t n = containers__lmctfy__agent__frame__get_packed_size(f);
    unsigned char *b = malloc(4 + n);
    if (!b) die("malloc");
    b[0] = (unsigned char)(n >> 24); b[1] = (unsigned char)(n >> 16);
    b[2] = (unsigned char)(n >> 8); b[3] = (unsigned char)n;
    containers__lmctfy__agent__frame__pack(f, b + 4);
    for (size_t off = 0; off < 4 + n;) {
        ssize_t w = write(c->fd, b + off, 4 + n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) die("%s: write: %s", c->what, strerror(errno));
        off += (size_t)w;
    }
    free(b);
}

/* Reads what the socket has (call after poll said POLLIN); 0 at end of stream. */
static ssize_t fill(conn_t *c) {
    if (c->cap - c->len < 65536) {
        c->cap = c->cap ? c->cap * 2 : 131072;
        c->in = realloc(c->in, c->cap);
        if (!c->in) die("realloc");
    }
    ssize_t r;
    do r = read(c->fd, c->in + c->len, c->cap - c->len); while (r < 0 && errno == EINTR);
    if (r < 0) die("%s: read: %s", c->what, strerror(errno));
    c->len += (size_t)r;
    return r;
}

/* The next whole frame in the buffer, decoded (free with frame__free_unpacked), or NULL. */
static Frame *next_frame(conn_t *c, size_t *consumed) {
    if (c->len - *consumed < 4) return NULL;
    uint32_t n = get_be32(c->in + *consumed);
    if (n > (c->open ? MAX_FRAME : HELLO_MAX_FRAME)) die("%s: frame of %u bytes, above our maximum", c->what, n);
    if (c->len - *consumed - 4 < n) return NULL;
    Frame *f = containers__lmctfy__agent__frame__unpack(NULL, n, c->in + *consumed + 4);
    *consumed += 4 + (size_t)n;
    if (!f || !f->has_kind) die("%s: undecodable frame or frame without kind", c->what);
    return f;
}

static void compact(conn_t *c, size_t consumed) {
    memmove(c->in, c->in + consumed, c->len - consumed);
    c->len -= consumed;
}

/* Frames every connection answers the same way: PING, GOAWAY, STATUS (our one call ended). */
static int common_frame(conn_t *c, const Frame *f) {
    if (f->kind == K(PING)) {
        Frame pong = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
        pong.has_kind = 1; pong.kind = K(PONG);
        pong.has_stream_id = 1; pong.stream_id = 0;
        pong.has_payload = f->has_payload; pong.payload = f->payload;
        send_frame(c, &pong);
        return 1;
    }
    if (f->kind == K(PONG)) return 1;
    if (f->kind == K(GOAWAY))
        die("%s: GOAWAY reason %d: %s", c->what, f->goaway && f->goaway->has_reason ? (int)f->goaway->reason : 0,
            f->goaway && f->goaway->message ? f->goaway->message : "(no message)");
    if (f->kind == K(STATUS) || (f->kind == K(RESPONSE) && f->status))
        die("%s call ended: status %d: %s", c->what, f->status && f->status->has_code ? f->status->code : -1,
            f->status && f->status->message ? f->status->message : "");
    return 0;
}

/* Waits up to timeout_ms for one whole frame (handshake and setup only). */
static Frame *wait_frame(conn_t *c, int timeout_ms) {
    int64_t end = mono_ns() + (int64_t)timeout_ms * 1000000;
    for (;;) {
        size_t used = 0;
        Frame *f = next_frame(c, &used);
        if (f) { compact(c, used); return f; }
        int64_t left = (end - mono_ns()) / 1000000;
        if (left <= 0) die("%s: no answer from the agent within %d ms", c->what, timeout_ms);
        struct pollfd p = {c->fd, POLLIN, 0};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno != EINTR) die("poll: %s", strerror(errno));
        if (r > 0 && fill(c) == 0) die("%s: the agent closed the connection", c->what);
    }
}

/* Connects, does the Unix-socket hello and opens stream 1 with method/payload. */
static void dial(conn_t *c, const char *what, const char *method, const uint8_t *payload, size_t plen) {
    memset(c, 0, sizeof *c);
    c->what = what;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(sock_path) >= sizeof a.sun_path) die("socket path too long");
    strcpy(a.sun_path, sock_path);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0)
        die("%s: connect %s: %s", what, sock_path, strerror(errno));
    Hello h = CONTAINERS__LMCTFY__AGENT__HELLO__INIT;
    h.has_stage = 1; h.stage = S(OFFER);
    h.has_min_version = 1; h.min_version = ver_lo;
    h.has_max_version = 1; h.max_version = ver_hi;
    h.peer_name = (char *)"event_latency";
    h.has_max_frame_bytes = 1; h.max_frame_bytes = MAX_FRAME;
    h.has_max_streams = 1; h.max_streams = 16;
    Frame f = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
    f.has_kind = 1; f.kind = K(HELLO);
    f.has_stream_id = 1; f.stream_id = 0;
    f.hello = &h;
    send_frame(c, &f);
    Frame *a2 = wait_frame(c, 5000);
    if (a2->kind == K(GOAWAY)) common_frame(c, a2);
    if (a2->kind != K(HELLO) || !a2->hello || !a2->hello->has_stage || a2->hello->stage != S(ACCEPTED) ||
        !a2->hello->has_version || a2->hello->version < ver_lo || a2->hello->version > ver_hi)
        die("%s: expected HELLO_ACCEPTED with a version in %u-%u", what, ver_lo, ver_hi);
    c->version = a2->hello->version;
    c->open = 1;
    containers__lmctfy__agent__frame__free_unpacked(a2, NULL);
    Frame r = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
    r.has_kind = 1; r.kind = K(REQUEST);
    r.has_stream_id = 1; r.stream_id = 1;
    r.method = (char *)method;
    r.has_payload = 1; r.payload.data = (uint8_t *)payload; r.payload.len = plen;
    send_frame(c, &r);
}

/* 1 if f is a RESPONSE on stream 1 carrying an OOM event for NAME recorded
 * at or after not_before (CLOCK_REALTIME ns); sets *caught_up for that response. */
static int is_our_oom(conn_t *c, const Frame *f, uint64_t not_before, int *caught_up, int *stray) {
    if (common_frame(c, f)) return 0;
    if (f->kind != K(RESPONSE) || f->stream_id != 1) die("%s: unexpected frame kind %d on stream %u", c->what, (int)f->kind, f->stream_id);
    SubscribeResponse *r = containers__lmctfy__agent__subscribe_response__unpack(
        NULL, f->has_payload ? f->payload.len : 0, f->has_payload ? f->payload.data : NULL);
    if (!r) die("Subscribe: undecodable SubscribeResponse");
    int ours = 0;
    if (r->has_caught_up) *caught_up = 1;
    else if (r->gap) fprintf(stderr, "event_latency: Subscribe sent a gap (not expected without a resume point)\n");
    else if (r->event) {
        const Containers__Lmctfy__Agent__ContainerEvent *e = r->event;
        const char *cn = e->container ? e->container : "";
        int same = !strcmp(cn, name) || (name[0] == '/' && !strcmp(cn, name + 1));
        if (e->has_kind && e->kind == EV_OOM && same) {
            if (!e->has_timestamp_ns || e->timestamp_ns >= not_before) ours = 1;
            else ++*stray;
        } else {
            fprintf(stderr, "event_latency: Subscribe sent an event of kind %d for '%s' (filtered on OOM of %s)\n",
                    e->has_kind ? (int)e->kind : -1, cn, name);
        }
    }
    containers__lmctfy__agent__subscribe_response__free_unpacked(r, NULL);
    return ours;
}

/* Reads and discards the Notify connection's frames. */
static void discard(conn_t *c) {
    if (fill(c) == 0) die("Notify: the agent closed the connection");
    size_t used = 0;
    Frame *f;
    while ((f = next_frame(c, &used))) {
        if (!common_frame(c, f) && f->kind != K(RESPONSE))
            die("Notify: unexpected frame kind %d", (int)f->kind);
        containers__lmctfy__agent__frame__free_unpacked(f, NULL);
    }
    compact(c, used);
}

/* ---- the child: join the memory cgroup, allocate until killed ---- */

static void child(const char *procs, long limit_mb) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%d", (int)getpid());
    int fd = open(procs, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, pid, (size_t)n) != n) _exit(2);
    close(fd);
    /* Far more than the limit: if this ends, the limit was not enforced. */
    for (long i = 0; i < 4 * limit_mb + 64; i++) {
        char *p = malloc(CHUNK);
        if (!p) _exit(3);
        memset(p, (int)(i & 0x7f) + 1, CHUNK);
    }
    _exit(4);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void usage(void) {
    fprintf(stderr, "usage: event_latency --unix SOCKET --cgroup NAME --rounds N [--limit-mb 32] [--notify] [--no-rt] [--verbose]\n");
    exit(2);
}

int main(int argc, char **argv) {
    long rounds = 0, limit_mb = 32;
    int with_notify = 0, rt = 1;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (!strcmp(k, "--notify")) { with_notify = 1; continue; }
        if (!strcmp(k, "--verbose")) { verbose = 1; continue; }
        if (!strcmp(k, "--no-rt")) { rt = 0; continue; }
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(k, "--unix")) sock_path = v;
        else if (!strcmp(k, "--cgroup")) name = v;
        else if (!strcmp(k, "--rounds")) rounds = atol(v);
        else if (!strcmp(k, "--limit-mb")) limit_mb = atol(v);
        else { fprintf(stderr, "event_latency: unknown option %s\n", k); usage(); }
    }
    if (!sock_path || !name || rounds <= 0 || limit_mb <= 0) usage();
    signal(SIGPIPE, SIG_IGN);

    /* (a) the raw eventfd on memory.oom_control: opened here, registered after (b) */
    char dir[512], path[600], reg[64];
    snprintf(dir, sizeof dir, "/sys/fs/cgroup/memory%s%s", name[0] == '/' ? "" : "/", name);
    snprintf(path, sizeof path, "%s/memory.oom_control", dir);
    int ofd = open(path, O_RDONLY | O_CLOEXEC);
    if (ofd < 0) die("%s: %s", path, strerror(errno));
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0) die("eventfd: %s", strerror(errno));
    snprintf(path, sizeof path, "%s/cgroup.event_control", dir);
    int cfd = open(path, O_WRONLY | O_CLOEXEC);
    if (cfd < 0) die("%s: %s", path, strerror(errno));
    char procs[600];
    snprintf(procs, sizeof procs, "%s/cgroup.procs", dir);

    /* (b) Subscribe{name, kinds: [OOM]}, up to its caught_up */
    conn_t notify, sub;
    if (with_notify) {
        EventSpecOom oom = CONTAINERS__LMCTFY__EVENT_SPEC__OOM__INIT;
        EventSpec spec = CONTAINERS__LMCTFY__EVENT_SPEC__INIT;
        spec.oom = &oom;
        NotifyRequest nr = CONTAINERS__LMCTFY__AGENT__NOTIFY_REQUEST__INIT;
        nr.name = (char *)name;
        nr.spec = &spec;
        uint8_t buf[1024];
        size_t len = containers__lmctfy__agent__notify_request__pack(&nr, buf);
        dial(&notify, "Notify", "Notify", buf, len);
    }
    Containers__Lmctfy__Agent__ContainerEventKind kinds[1] = {EV_OOM};
    SubscribeRequest sr = CONTAINERS__LMCTFY__AGENT__SUBSCRIBE_REQUEST__INIT;
    sr.name = (char *)name;
    sr.n_kinds = 1; sr.kinds = kinds;
    uint8_t sbuf[1024];
    size_t slen = containers__lmctfy__agent__subscribe_request__pack(&sr, sbuf);
    dial(&sub, "Subscribe", "Subscribe", sbuf, slen);
    fprintf(stderr, "event_latency: negotiated protocol version %u\n", sub.version);
    for (int caught = 0, stray = 0; !caught;) {
        Frame *f = wait_frame(&sub, 5000);
        if (is_our_oom(&sub, f, UINT64_MAX, &caught, &stray))
            die("Subscribe: an OOM event before caught_up");
        containers__lmctfy__agent__frame__free_unpacked(f, NULL);
    }
    if (with_notify) usleep(300000); /* the Notify call starts its kernel watch on a thread of its own */
    if (rt) {
        /* Lowest real-time priority, not inherited by the children. */
        struct sched_param sp = {.sched_priority = 1};
        if (sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, &sp) < 0) {
            fprintf(stderr, "event_latency: SCHED_FIFO: %s; timing at normal priority\n", strerror(errno));
            rt = 0;
        }
    }
    /* Registered now, after the agent's watch: the kernel signals the newest
     * registration first, so the raw side is never woken after the agent. */
    int n = snprintf(reg, sizeof reg, "%d %d", efd, ofd);
    if (write(cfd, reg, (size_t)n) != n) die("%s: %s", path, strerror(errno));
    close(cfd);

    /* (c) the rounds */
    int64_t *lat = calloc((size_t)rounds, sizeof *lat);
    long nlat = 0, missed = 0, raw_silent = 0, not_killed = 0, extra_raw = 0, extra_agent = 0;
    int stray = 0;
    for (long round = 1; round <= rounds; round++) {
        uint64_t not_before = real_ns();
        int64_t t0 = mono_ns(), t_raw = 0, t_agent = 0;
        int got_raw = 0, got_agent = 0;
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) die("fork: %s", strerror(errno));
        if (pid == 0) child(procs, limit_mb);
        while (!(got_raw && got_agent)) {
            int64_t now = mono_ns();
            int64_t end = got_raw ? t_raw + AGENT_WAIT_NS : t0 + RAW_WAIT_NS;
            if (now >= end) break;
            struct pollfd p[3] = {{efd, POLLIN, 0}, {sub.fd, POLLIN, 0}, {with_notify ? notify.fd : -1, POLLIN, 0}};
            int r = poll(p, 3, (int)((end - now + 999999) / 1000000));
            int64_t t = mono_ns();
            if (r < 0 && errno != EINTR) die("poll: %s", strerror(errno));
            if (r <= 0) continue;
            if (p[0].revents & POLLIN) {
                uint64_t v;
                if (read(efd, &v, sizeof v) == (ssize_t)sizeof v) {
                    if (!got_raw) { got_raw = 1; t_raw = t; } else extra_raw++;
                }
            }
            if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
                if (fill(&sub) == 0) die("Subscribe: the agent closed the connection");
                size_t used = 0;
                Frame *f;
                int caught = 0;
                while ((f = next_frame(&sub, &used))) {
                    if (is_our_oom(&sub, f, not_before, &caught, &stray)) {
                        if (!got_agent) { got_agent = 1; t_agent = t; } else extra_agent++;
                    }
                    containers__lmctfy__agent__frame__free_unpacked(f, NULL);
                }
                compact(&sub, used);
            }
            if (with_notify && (p[2].revents & (POLLIN | POLLHUP | POLLERR))) discard(&notify);
        }
        if (!got_raw) kill(pid, SIGKILL); /* the kernel never said OOM: do not leave it allocating */
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
        if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) || !got_raw) {
            not_killed += got_raw;
            fprintf(stderr, "event_latency: round %ld: child %s (%s %d)%s\n", round,
                    got_raw ? "not killed by SIGKILL" : "no OOM notification within 10 s",
                    WIFSIGNALED(st) ? "signal" : "exit", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st),
                    WIFEXITED(st) && WEXITSTATUS(st) == 2 ? ": could not join the memory cgroup" :
                    WIFEXITED(st) && WEXITSTATUS(st) == 4 ? ": allocated past the limit (no memory limit?)" : "");
        }
        if (!got_raw) { raw_silent++; continue; }
        if (got_agent) lat[nlat++] = t_agent - t_raw;
        else missed++;
        if (verbose && got_agent)
            fprintf(stderr, "event_latency: round %ld: agent - raw = %.1f us\n", round, (t_agent - t_raw) / 1e3);
        else if (verbose)
            fprintf(stderr, "event_latency: round %ld: agent event MISSED (none within 2 s)\n", round);
        /* drain: whatever else this OOM signals, until QUIET_MS pass with nothing */
        for (;;) {
            struct pollfd p[3] = {{efd, POLLIN, 0}, {sub.fd, POLLIN, 0}, {with_notify ? notify.fd : -1, POLLIN, 0}};
            int r = poll(p, 3, QUIET_MS);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) die("poll: %s", strerror(errno));
            if (r == 0) break;
            if (p[0].revents & POLLIN) {
                uint64_t v;
                if (read(efd, &v, sizeof v) == (ssize_t)sizeof v) extra_raw++;
            }
            if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
                if (fill(&sub) == 0) die("Subscribe: the agent closed the connection");
                size_t used = 0;
                Frame *f;
                int caught = 0;
                while ((f = next_frame(&sub, &used))) {
                    if (is_our_oom(&sub, f, not_before, &caught, &stray)) extra_agent++;
                    containers__lmctfy__agent__frame__free_unpacked(f, NULL);
                }
                compact(&sub, used);
            }
            if (with_notify && (p[2].revents & (POLLIN | POLLHUP | POLLERR))) discard(&notify);
        }
    }
    qsort(lat, (size_t)nlat, sizeof *lat, cmp_i64);
    double p50 = nlat ? lat[nlat / 2] / 1e3 : 0, max = nlat ? lat[nlat - 1] / 1e3 : 0;
    double p90 = nlat ? lat[(nlat * 9 / 10) < nlat ? nlat * 9 / 10 : nlat - 1] / 1e3 : 0;
    if (extra_raw || extra_agent || stray || raw_silent)
        fprintf(stderr, "event_latency: not counted: %ld more raw notifications, %ld more agent OOM events, "
                        "%d agent events from earlier rounds; %ld rounds without a raw notification\n",
                extra_raw, extra_agent, stray, raw_silent);
    printf("RESULT rounds=%ld p50_us=%.1f p90_us=%.1f max_us=%.1f missed=%ld\n", rounds, p50, p90, max,
           missed + raw_silent);
    fflush(stdout);
    return missed == 0 && raw_silent == 0 && not_killed == 0 ? 0 : 1;
}
