/* agent_load: a single-threaded libuv C load generator for the lmctfy agent,
 * modelled on the RPC floor's uv_client.c (../shared/bench/rpc-floor): the
 * same loop structure, options and RESULT line, but speaking the agent
 * protocol (docs/PROTOCOL.md) so the agent can be measured with no Swift
 * runtime on the client side.
 *
 *   agent_load (--unix PATH | --port P [--host 127.0.0.1] --key-file F [--key-id ID])
 *              --conns C --depth D --seconds T [--warmup W] [--payload 16]
 *              [--versions 1-2] [--server-pid PID] [--route-host NAME]
 *   agent_load --self-test        checks the HMAC proofs against PROTOCOL.md's golden vectors
 *   agent_load --lifecycle N --unix PATH [--server-pid PID]
 *
 * Each of C connections does the handshake (Unix: OFFER/ACCEPTED; TCP:
 * OFFER/CHALLENGE/PROOF/ACCEPTED with HMAC-SHA256, the acceptor's proof
 * verified), then keeps D unary `Ping` calls in flight, stream ids 1, 3, 5,
 * ... increasing. Every frame produced by one read callback goes out in one
 * uv_write. Each answer is decoded with protobuf-c (into a per-frame arena)
 * and checked: PingResponse.data equal to the request's, status OK. Version
 * 1: RESPONSE then STATUS ends a call. Version 2 also lets a RESPONSE carry
 * `status`, which then ends the call by itself. Answers are matched by
 * stream id, in any order. Anything else (wrong data, a non-OK status,
 * GOAWAY, an unknown stream, a closed connection) is an error. Calls whose
 * end arrives inside [warmup, warmup+T] count. Prints
 *   RESULT rps=.. n=.. secs=.. p50_us=.. p99_us=.. srv_cpu_s=.. cli_cpu_s=.. errors=.. max_us=..
 * and exits non-zero if there were errors or nothing completed.
 *
 * --route-host NAME sets Frame.host on every request: pointed at a
 * lmctfy-controller's socket, each Ping is routed to the agent registered
 * as NAME (PROTOCOL.md section 9), so the same client measures a direct and
 * a routed Ping. (--host is the TCP address to connect to.)
 *
 * --lifecycle N is tools/bench/main.swift's agent-lifecycle without the
 * Swift client: N times, on one Unix-socket connection with blocking
 * reads and writes (one write per request, nothing else in the way),
 * Create /PREFIX_<i> (--prefix, default lmctfy_bench_cagent_<pid>) with
 * "cpu { limit: 500 max_limit: 1000 } memory { limit: 104857600 }", Run
 * /bin/true attached (RUN_STARTED with a pid, RUN_EXITED with exit code 0,
 * then an OK status), Destroy with force. Every answer is decoded and
 * checked; a round that went wrong still asks for its container's destroy,
 * then the exit status is 1 (if the connection itself fails, nothing more
 * can be asked: run-bench passes its own prefix, and its cleanup removes
 * what is left). Prints
 *   agent lifecycle, C client (...) create=.. run=.. destroy=.. us=..
 * (mean microseconds per phase and per round) and, with --server-pid, the
 * server's CPU per round. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include "fleet_wire.h" /* framing, buffers, the unpack arena, the hello MAC, the key file */

typedef Containers__Lmctfy__Agent__PingRequest PingRequest;
typedef Containers__Lmctfy__Agent__PingResponse PingResponse;
typedef Containers__Lmctfy__Agent__RunResponse RunResponse;
#define RUN_EVENT(x) CONTAINERS__LMCTFY__AGENT__RUN_EVENT_KIND__RUN_##x

#define READ_CHUNK 65536

/* ---- small helpers ---- */

static double self_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* The CPU time of all threads of pid (those that have exited included),
 * from its process CPU clock: nanosecond resolution, where utime+stime in
 * /proc/<pid>/stat count whole clock ticks (10 ms here, 100 us a lifecycle
 * over 100 rounds). The /proc figures if the clock is refused; -1 if unknown. */
static double proc_cpu_s(long pid) {
    char path[64], text[4096];
    if (pid <= 0) return -1;
    clockid_t clock;
    struct timespec t;
    if (clock_getcpuclockid((pid_t)pid, &clock) == 0 && clock_gettime(clock, &t) == 0) return t.tv_sec + t.tv_nsec / 1e9;
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    char *p = strrchr(text, ')');
    unsigned long ut, st;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* ---- configuration and results ---- */

static uv_loop_t *loop;
static const char *unix_path, *host = "127.0.0.1", *key_file, *key_id;
static const char *route_host; /* Frame.host of every request (a controller routes it) */
static int port;
static unsigned char key[256];
static size_t key_len;
static unsigned conns_n = 1, depth = 1;
static uint32_t ver_lo = 1, ver_hi = 2, negotiated;
static size_t psize = 16;
static unsigned char *ping_data;          /* PingRequest.data */
static uint8_t *ping_req;                 /* the serialized PingRequest */
static size_t ping_req_len;
static uint32_t max_in_frame;             /* what we announce and accept after the handshake */
static int phase;                         /* 0 warm-up, 1 measuring, 2 done */
static uint64_t win_start, win_end, errors;
static double srv0, srv1, cli0, cli1;
static long server_pid;
static uint32_t *lat;
static size_t nlat, caplat;
static unsigned live;

static void report(const char *fmt, ...) {
    errors++;
    if (errors > 20) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("agent_load: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(errors == 20 ? " (further errors are only counted)\n" : "\n", stderr);
    va_end(ap);
}

/* ---- connections ---- */

enum { C_CONNECTING, C_OFFERED, C_PROVED, C_OPEN, C_CLOSED };
enum { CALL_FREE, CALL_WAIT_RESPONSE, CALL_WAIT_STATUS };

typedef struct {
    uint64_t sent_ns;
    uint32_t id;
    uint8_t state, bad;
} call_t;

typedef struct wbuf {
    uv_write_t req;
    struct wbuf *next;
    struct conn *c;
    buf_t b;
} wbuf_t;

typedef struct conn {
    union { uv_tcp_t tcp; uv_pipe_t pipe; } h; /* first: the handle is the connection */
    uv_connect_t creq;
    buf_t in;
    int state;
    unsigned char nc[NONCE];
    uint32_t version, peer_max_frame;
    call_t *calls;                             /* ring indexed by (id - 1) / 2 & mask */
    uint32_t mask;
    uint64_t next_k;                           /* the next id is 2k+1 */
    unsigned open;
    wbuf_t *free_w;
} conn_t;

static void close_conn(conn_t *c);

static wbuf_t *wbuf_get(conn_t *c) {
    wbuf_t *w = c->free_w;
    if (w) c->free_w = w->next;
    else {
        w = calloc(1, sizeof *w);
        if (!w) { perror("calloc"); exit(3); }
        w->c = c;
    }
    w->b.len = 0;
    return w;
}

static void wbuf_put(conn_t *c, wbuf_t *w) {
    w->next = c->free_w;
    c->free_w = w;
}

static void on_write(uv_write_t *r, int status) {
    wbuf_t *w = (wbuf_t *)r;
    conn_t *c = w->c;
    wbuf_put(c, w);
    if (status < 0 && phase < 2 && c->state != C_CLOSED) {
        report("write: %s", uv_strerror(status));
        close_conn(c);
    }
}

static void flush(conn_t *c, wbuf_t *w) {
    if (!w->b.len || c->state == C_CLOSED) { wbuf_put(c, w); return; }
    uv_buf_t b = uv_buf_init(w->b.p, (unsigned)w->b.len);
    int r = uv_write(&w->req, (uv_stream_t *)&c->h, &b, 1, on_write);
    if (r < 0) {
        wbuf_put(c, w);
        report("uv_write: %s", uv_strerror(r));
        close_conn(c);
    }
}

/* Opens one Ping call: the lowest increasing odd id whose ring slot is free. */
static void enqueue(conn_t *c, buf_t *out, uint64_t now) {
    uint64_t k = c->next_k;
    while (c->calls[k & c->mask].state != CALL_FREE) k++;
    c->next_k = k + 1;
    if (k >= 0x7fffffffu) { report("stream ids exhausted"); close_conn(c); return; }
    call_t *call = &c->calls[k & c->mask];
    call->id = (uint32_t)(2 * k + 1);
    call->state = CALL_WAIT_RESPONSE;
    call->bad = 0;
    call->sent_ns = now;
    c->open++;
    Frame f = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
    f.has_kind = 1; f.kind = K(REQUEST);
    f.has_stream_id = 1; f.stream_id = call->id;
    f.method = (char *)"Ping";
    f.host = (char *)route_host;
    f.has_payload = 1; f.payload.data = ping_req; f.payload.len = ping_req_len;
    size_t before = out->len;
    append_frame(out, &f);
    if (out->len - before - 4 > c->peer_max_frame) {
        report("a Ping request of %zu bytes exceeds the agent's max_frame_bytes %u", out->len - before - 4,
              c->peer_max_frame);
        close_conn(c);
    }
}

static call_t *find_call(conn_t *c, uint32_t id) {
    if (id == 0 || !(id & 1)) return NULL;
    call_t *call = &c->calls[((id - 1) / 2) & c->mask];
    return call->state != CALL_FREE && call->id == id ? call : NULL;
}

/* The call has ended (ok: its answer was right); records it and opens the next. */
static void finish(conn_t *c, call_t *call, int ok, buf_t *out, uint64_t now) {
    if (ok && !call->bad && phase == 1) { /* a wrong answer was counted when it was found */
        if (nlat == caplat) {
            caplat = caplat ? caplat * 2 : 1 << 20;
            lat = xrealloc(lat, caplat * sizeof *lat);
        }
        uint64_t d = now - call->sent_ns;
        lat[nlat++] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
    }
    call->state = CALL_FREE;
    c->open--;
    if (phase < 2) enqueue(c, out, now);
}

static int status_ok(const Frame *f) {
    if (!f->status || !f->status->has_code) {
        report("stream %u: status without a code", f->stream_id);
        return 0;
    }
    if (f->status->code != 0) {
        report("stream %u: status %d: %s", f->stream_id, f->status->code,
              f->status->message ? f->status->message : "");
        return 0;
    }
    return 1;
}

static void established(conn_t *c, const Hello *h, buf_t *out) {
    if (!h->has_version || h->version < ver_lo || h->version > ver_hi ||
        (c->state == C_PROVED && h->version != c->version)) {
        report("ACCEPTED names version %u, outside %u-%u or not the challenge's", h->version, ver_lo, ver_hi);
        close_conn(c);
        return;
    }
    c->version = h->version;
    c->peer_max_frame = h->has_max_frame_bytes ? h->max_frame_bytes : 65536;
    uint32_t peer_streams = h->has_max_streams ? h->max_streams : 100;
    if (!negotiated) {
        negotiated = c->version;
        fprintf(stderr, "agent_load: negotiated protocol version %u (offered %u-%u)\n", negotiated, ver_lo, ver_hi);
        if (depth > peer_streams)
            fprintf(stderr, "agent_load: depth %u exceeds the agent's max_streams %u: expect RESOURCE_EXHAUSTED\n",
                    depth, peer_streams);
    } else if (negotiated != c->version) {
        report("connections negotiated different versions (%u, %u)", negotiated, c->version);
    }
    c->state = C_OPEN;
    uint64_t now = uv_hrtime();
    for (unsigned i = 0; i < depth && c->state == C_OPEN; i++) enqueue(c, out, now);
}

static void on_hello(conn_t *c, const Hello *h, buf_t *out) {
    int stage = h->has_stage ? (int)h->stage : 0;
    if (c->state == C_OFFERED && !unix_path && stage == S(CHALLENGE)) {
        char err[128];
        uint32_t v = answer_challenge(h, c->nc, ver_lo, ver_hi, key, key_len, key_id, "agent", out, err, sizeof err);
        if (!v) {
            report("%s", err);
            close_conn(c);
            return;
        }
        c->version = v;
        c->state = C_PROVED;
        return;
    }
    if (stage == S(ACCEPTED) && ((c->state == C_OFFERED && unix_path) || c->state == C_PROVED)) {
        established(c, h, out);
        return;
    }
    report("unexpected hello stage %d", stage);
    close_conn(c);
}

/* One whole frame; appends whatever it makes us send to out. */
static void on_frame(conn_t *c, const uint8_t *p, uint32_t len, buf_t *out, uint64_t now) {
    arena_reset();
    Frame *f = containers__lmctfy__agent__frame__unpack(&arena_allocator, len, p);
    if (!f || !f->has_kind) {
        report("undecodable frame or frame without kind");
        close_conn(c);
        return;
    }
    if (f->kind == K(GOAWAY)) {
        report("GOAWAY reason %d: %s", f->goaway && f->goaway->has_reason ? (int)f->goaway->reason : 0,
              f->goaway && f->goaway->message ? f->goaway->message : "(no message)");
        close_conn(c);
        return;
    }
    if (c->state != C_OPEN) {
        if (f->kind == K(HELLO) && f->hello) on_hello(c, f->hello, out);
        else { report("frame kind %d during the handshake", (int)f->kind); close_conn(c); }
        return;
    }
    switch ((int)f->kind) {
    case K(RESPONSE): {
        call_t *call = find_call(c, f->stream_id);
        if (!call || call->state != CALL_WAIT_RESPONSE) {
            report("RESPONSE on stream %u, which is not waiting for one", f->stream_id);
            return;
        }
        PingResponse *r = containers__lmctfy__agent__ping_response__unpack(
            &arena_allocator, f->has_payload ? f->payload.len : 0, f->has_payload ? f->payload.data : NULL);
        if (!r || (psize && !r->has_data) || (r->has_data ? r->data.len : 0) != psize ||
            (psize && memcmp(r->data.data, ping_data, psize))) {
            report("stream %u: PingResponse does not echo the request's data", f->stream_id);
            call->bad = 1;
        }
        if (f->status) {
            if (c->version < 2) {
                report("stream %u: RESPONSE carries a status in protocol version %u", f->stream_id, c->version);
                call->bad = 1;
            }
            finish(c, call, status_ok(f), out, now);
        } else {
            call->state = CALL_WAIT_STATUS;
        }
        return;
    }
    case K(STATUS): {
        call_t *call = find_call(c, f->stream_id);
        if (!call) {
            report("STATUS on stream %u, which is not open", f->stream_id);
            return;
        }
        int ok = status_ok(f);
        if (ok && call->state != CALL_WAIT_STATUS) {
            report("stream %u: OK status without a response", f->stream_id);
            ok = 0;
        }
        finish(c, call, ok, out, now);
        return;
    }
    case K(PING): {
        Frame pong = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
        pong.has_kind = 1; pong.kind = K(PONG);
        pong.has_stream_id = 1; pong.stream_id = 0;
        pong.has_payload = f->has_payload; pong.payload = f->payload;
        append_frame(out, &pong);
        return;
    }
    case K(PONG):
        return; /* we never ping; ignore */
    default:
        report("unexpected frame kind %d on stream %u", (int)f->kind, f->stream_id);
    }
}

static void on_close(uv_handle_t *h) { (void)h; }

static void end_run(void) {
    if (phase == 2) return;
    win_end = uv_hrtime();
    if (phase == 0) win_start = win_end;
    srv1 = proc_cpu_s(server_pid);
    cli1 = self_cpu_s();
    phase = 2;
    uv_stop(loop);
}

static void close_conn(conn_t *c) {
    if (c->state == C_CLOSED) return;
    c->state = C_CLOSED;
    uv_close((uv_handle_t *)&c->h, on_close);
    if (--live == 0) end_run();
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out) {
    (void)hint;
    conn_t *c = (conn_t *)h;
    char *p = buf_reserve(&c->in, READ_CHUNK);
    *out = uv_buf_init(p, (unsigned)(c->in.cap - c->in.len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    (void)b;
    conn_t *c = (conn_t *)s;
    if (nread < 0) {
        if (phase < 2 && c->state != C_CLOSED) {
            report("read: %s (the agent closed the connection)", uv_strerror((int)nread));
            close_conn(c);
        }
        return;
    }
    c->in.len += (size_t)nread;
    uint64_t now = uv_hrtime();
    wbuf_t *w = wbuf_get(c);
    size_t off = 0;
    while (c->in.len - off >= 4 && c->state != C_CLOSED) {
        uint32_t len = get_be32(c->in.p + off);
        uint32_t max = c->state == C_OPEN ? max_in_frame : HELLO_MAX_FRAME;
        if (len > max) {
            report("frame of %u bytes, above our maximum %u", len, max);
            close_conn(c);
            break;
        }
        if (c->in.len - off - 4 < len) break;
        on_frame(c, (const uint8_t *)c->in.p + off + 4, len, &w->b, now);
        off += 4 + (size_t)len;
    }
    if (off) {
        memmove(c->in.p, c->in.p + off, c->in.len - off);
        c->in.len -= off;
    }
    flush(c, w);
}

/* Our OFFER: the versions, limits and name every connection announces. */
static Hello offer(void) {
    Hello h = CONTAINERS__LMCTFY__AGENT__HELLO__INIT;
    h.has_stage = 1; h.stage = S(OFFER);
    h.has_min_version = 1; h.min_version = ver_lo;
    h.has_max_version = 1; h.max_version = ver_hi;
    h.peer_name = (char *)"agent_load";
    h.has_max_frame_bytes = 1; h.max_frame_bytes = max_in_frame;
    h.has_max_streams = 1; h.max_streams = 128;
    return h;
}

static void on_connect(uv_connect_t *req, int status) {
    conn_t *c = (conn_t *)req->data;
    if (status < 0) {
        report("connect: %s", uv_strerror(status));
        close_conn(c);
        return;
    }
    if (!unix_path) uv_tcp_nodelay(&c->h.tcp, 1);
    uv_read_start((uv_stream_t *)&c->h, on_alloc, on_read);
    Hello h = offer();
    if (!unix_path) {
        if (RAND_bytes(c->nc, NONCE) != 1) { fprintf(stderr, "agent_load: RAND_bytes failed\n"); exit(3); }
        h.key_id = (char *)key_id;
        h.has_nonce = 1; h.nonce.data = c->nc; h.nonce.len = NONCE;
    }
    wbuf_t *w = wbuf_get(c);
    append_hello(&w->b, &h);
    c->state = C_OFFERED;
    flush(c, w);
}

static void on_warm(uv_timer_t *t) {
    (void)t;
    phase = 1;
    win_start = uv_hrtime();
    srv0 = proc_cpu_s(server_pid);
    cli0 = self_cpu_s();
}

static void on_end(uv_timer_t *t) {
    (void)t;
    end_run();
}

static int hexeq(const unsigned char *b, const char *hex) {
    for (int i = 0; i < MAC_LEN; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1 || v != b[i]) return 0;
    }
    return 1;
}

/* The golden proofs of PROTOCOL.md section 8. */
static int self_test(void) {
    unsigned char nc[NONCE], ns[NONCE], out[MAC_LEN];
    for (int i = 0; i < NONCE; i++) { nc[i] = (unsigned char)i; ns[i] = (unsigned char)(0x20 + i); }
    const unsigned char *k = (const unsigned char *)"lmctfy-golden-key";
    mac(k, 17, "lmctfy-v1 acceptor", 1, "ops", nc, ns, out);
    int ok = hexeq(out, "f735d89705a3f25c7797621764edc8286fdd7ee17324b7fdb3cc5e11ec6e9d1b");
    mac(k, 17, "lmctfy-v1 dialler", 1, "ops", nc, ns, out);
    ok = ok && hexeq(out, "29de9c797322f38c9dffa2bebd6a859720fd50643bfad3b0cb8f04c848f33696");
    printf("self-test: HMAC proofs %s\n", ok ? "match the golden vectors" : "DO NOT MATCH");
    return ok ? 0 : 1;
}


/* ---- --lifecycle: create -> run /bin/true -> destroy, blocking I/O ---- */

static int life_fd = -1;
static buf_t life_in, life_out;
static uint32_t life_version, life_next_id = 1;

static void life_send(void) {
    size_t off = 0;
    while (off < life_out.len) {
        ssize_t w = write(life_fd, life_out.p + off, life_out.len - off);
        if (w < 0) { perror("agent_load: write"); exit(1); }
        off += (size_t)w;
    }
    life_out.len = 0;
}

/* The next whole frame, decoded into the arena (which it resets); answers
 * the agent's keepalive PINGs on the way. Exits on EOF, GOAWAY or garbage. */
static Frame *life_frame(void) {
    for (;;) {
        while (life_in.len < 4 || life_in.len - 4 < get_be32(life_in.p)) {
            if (life_in.len >= 4 && get_be32(life_in.p) > max_in_frame) {
                fprintf(stderr, "agent_load: frame of %u bytes, above our maximum\n", get_be32(life_in.p));
                exit(1);
            }
            char *p = buf_reserve(&life_in, READ_CHUNK);
            ssize_t r = read(life_fd, p, life_in.cap - life_in.len);
            if (r <= 0) { fprintf(stderr, "agent_load: read: %s\n", r ? strerror(errno) : "the agent closed the connection"); exit(1); }
            life_in.len += (size_t)r;
        }
        /* Decoded from a copy (protobuf-c points into the bytes it
         * decodes) so that the input buffer can move on now. */
        static char *frame;
        static size_t frame_cap;
        uint32_t len = get_be32(life_in.p);
        if (frame_cap < len) { frame = xrealloc(frame, len); frame_cap = len; }
        memcpy(frame, life_in.p + 4, len);
        memmove(life_in.p, life_in.p + 4 + len, life_in.len - 4 - len);
        life_in.len -= 4 + (size_t)len;
        arena_reset();
        Frame *f = containers__lmctfy__agent__frame__unpack(&arena_allocator, len, (const uint8_t *)frame);
        if (!f || !f->has_kind) { fprintf(stderr, "agent_load: undecodable frame\n"); exit(1); }
        if (f->kind == K(GOAWAY)) {
            fprintf(stderr, "agent_load: GOAWAY: %s\n", f->goaway && f->goaway->message ? f->goaway->message : "");
            exit(1);
        }
        if (f->kind == K(PING)) {
            Frame pong = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
            pong.has_kind = 1; pong.kind = K(PONG);
            pong.has_stream_id = 1; pong.stream_id = 0;
            pong.has_payload = f->has_payload; pong.payload = f->payload;
            append_frame(&life_out, &pong);
            life_send();
            continue;
        }
        if (f->kind == K(PONG)) continue;
        return f;
    }
}

/* Sends one request; returns its stream id. */
static uint32_t life_request(const char *method, const ProtobufCMessage *m) {
    uint8_t payload[1024];
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > sizeof payload) { fprintf(stderr, "agent_load: request too big\n"); exit(2); }
    protobuf_c_message_pack(m, payload);
    Frame f = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
    f.has_kind = 1; f.kind = K(REQUEST);
    f.has_stream_id = 1; f.stream_id = life_next_id;
    f.method = (char *)method;
    f.has_payload = 1; f.payload.data = payload; f.payload.len = n;
    life_next_id += 2;
    append_frame(&life_out, &f);
    life_send();
    return f.stream_id;
}

/* Reads the answers of stream id until its status; run: also checks its
 * RUN_STARTED and RUN_EXITED. Returns 1 if all was as it should be. */
static int life_answer(uint32_t id, int run) {
    int started = 0, exited = 0, ok = 1;
    for (;;) {
        Frame *f = life_frame();
        if (f->stream_id != id || (f->kind != K(RESPONSE) && f->kind != K(STATUS))) {
            report("unexpected frame kind %d on stream %u (waiting for %u)", (int)f->kind, f->stream_id, id);
            return 0;
        }
        if (f->kind == K(RESPONSE) && run) {
            RunResponse *r = containers__lmctfy__agent__run_response__unpack(
                &arena_allocator, f->has_payload ? f->payload.len : 0, f->has_payload ? f->payload.data : NULL);
            if (r && r->kind == RUN_EVENT(STARTED) && !started && r->has_pid && r->pid > 0) started = 1;
            else if (r && r->kind == RUN_EVENT(EXITED) && started && !exited && r->has_exit_code && r->exit_code == 0) exited = 1;
            else { report("stream %u: unexpected RunResponse", id); ok = 0; }
        }
        if (f->kind == K(STATUS) || f->status) {
            if (!status_ok(f)) return 0;
            if (run && !exited) { report("stream %u: Run ended without RUN_EXITED", id); return 0; }
            return ok;
        }
    }
}

static double life_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static const char *life_prefix;

static int lifecycle_main(int n) {
    life_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(unix_path) >= sizeof sa.sun_path) { fprintf(stderr, "agent_load: socket path too long\n"); return 2; }
    strcpy(sa.sun_path, unix_path);
    if (life_fd < 0 || connect(life_fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror(unix_path); return 1; }
    Hello h = offer();
    append_hello(&life_out, &h);
    life_send();
    Frame *f = life_frame();
    if (f->kind != K(HELLO) || !f->hello || !f->hello->has_stage || f->hello->stage != S(ACCEPTED) ||
        !f->hello->has_version || f->hello->version < ver_lo || f->hello->version > ver_hi) {
        fprintf(stderr, "agent_load: the agent did not accept the hello\n");
        return 1;
    }
    life_version = f->hello->version;

    Containers__Lmctfy__CpuSpec cpu = CONTAINERS__LMCTFY__CPU_SPEC__INIT;
    cpu.has_limit = 1; cpu.limit = 500;
    cpu.has_max_limit = 1; cpu.max_limit = 1000;
    Containers__Lmctfy__MemorySpec mem = CONTAINERS__LMCTFY__MEMORY_SPEC__INIT;
    mem.has_limit = 1; mem.limit = 104857600;
    Containers__Lmctfy__ContainerSpec spec = CONTAINERS__LMCTFY__CONTAINER_SPEC__INIT;
    spec.cpu = &cpu;
    spec.memory = &mem;
    char *argv_true[] = {(char *)"/bin/true"};
    double phases[3] = {0, 0, 0};
    double srv0 = proc_cpu_s(server_pid), t0 = life_now_us();
    for (int i = 0; i < n; i++) {
        char name[160];
        if (life_prefix) snprintf(name, sizeof name, "/%s_%d", life_prefix, i);
        else snprintf(name, sizeof name, "/lmctfy_bench_cagent_%d_%d", (int)getpid(), i);
        Containers__Lmctfy__Agent__CreateRequest cr = CONTAINERS__LMCTFY__AGENT__CREATE_REQUEST__INIT;
        cr.name = name; cr.spec = &spec;
        Containers__Lmctfy__Agent__RunRequest rr = CONTAINERS__LMCTFY__AGENT__RUN_REQUEST__INIT;
        rr.name = name; rr.n_argv = 1; rr.argv = argv_true;
        Containers__Lmctfy__Agent__DestroyRequest dr = CONTAINERS__LMCTFY__AGENT__DESTROY_REQUEST__INIT;
        dr.name = name; dr.has_force = 1; dr.force = 1;
        double a = life_now_us();
        int ok = life_answer(life_request("Create", &cr.base), 0);
        double b = life_now_us();
        ok = ok && life_answer(life_request("Run", &rr.base), 1);
        double c = life_now_us();
        int destroyed = life_answer(life_request("Destroy", &dr.base), 0);
        phases[0] += b - a; phases[1] += c - b; phases[2] += life_now_us() - c;
        if (!ok || !destroyed) {
            fprintf(stderr, "agent_load: round %d failed\n", i);
            return 1;
        }
    }
    double total = (life_now_us() - t0) / n, srv1 = proc_cpu_s(server_pid);
    printf("agent lifecycle, C client (create cpu+mem, run /bin/true, exit, destroy) create=%.1f run=%.1f destroy=%.1f",
           phases[0] / n, phases[1] / n, phases[2] / n);
    if (server_pid > 0) printf(" server_cpu_us=%.0f", (srv1 - srv0) * 1e6 / n);
    printf(" us=%.1f\n", total);
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: agent_load (--unix PATH | --port P [--host H] --key-file F [--key-id ID]) --conns C "
                    "--depth D --seconds T [--warmup W] [--payload N] [--versions LO-HI] [--server-pid PID]\n"
                    "                  [--route-host NAME]\n"
                    "       agent_load --self-test\n"
                    "       agent_load --lifecycle N --unix PATH [--prefix NAME] [--server-pid PID] [--versions LO-HI]\n");
    exit(2);
}

int main(int argc, char **argv) {
    double seconds = 5, warmup = 1;
    int lifecycle = 0;
    if (argc == 2 && !strcmp(argv[1], "--self-test")) return self_test();
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc) usage();
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--unix")) unix_path = v;
        else if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--host")) host = v;
        else if (!strcmp(k, "--key-file")) key_file = v;
        else if (!strcmp(k, "--key-id")) key_id = v;
        else if (!strcmp(k, "--conns")) conns_n = (unsigned)atoi(v);
        else if (!strcmp(k, "--depth")) depth = (unsigned)atoi(v);
        else if (!strcmp(k, "--seconds")) seconds = atof(v);
        else if (!strcmp(k, "--warmup")) warmup = atof(v);
        else if (!strcmp(k, "--payload")) psize = (size_t)atol(v);
        else if (!strcmp(k, "--server-pid")) server_pid = atol(v);
        else if (!strcmp(k, "--route-host")) route_host = v;
        else if (!strcmp(k, "--lifecycle")) lifecycle = atoi(v);
        else if (!strcmp(k, "--prefix")) life_prefix = v;
        else if (!strcmp(k, "--versions")) {
            if (sscanf(v, "%u-%u", &ver_lo, &ver_hi) != 2) {
                if (sscanf(v, "%u", &ver_lo) != 1) usage();
                ver_hi = ver_lo;
            }
        } else { fprintf(stderr, "agent_load: unknown option %s\n", k); usage(); }
    }
    if (lifecycle) {
        if (!unix_path || port || lifecycle < 1 || !ver_lo || ver_lo > ver_hi ||
            (life_prefix && (strlen(life_prefix) > 100 || !*life_prefix || strchr(life_prefix, '/'))))
            usage();
        signal(SIGPIPE, SIG_IGN);
        max_in_frame = 4194304;
        fw_arena_cap = 65536;
        fw_arena = aligned_alloc(16, fw_arena_cap);
        return lifecycle_main(lifecycle);
    }
    if ((!unix_path) == (!port) || (port && !key_file) || !conns_n || !depth || !ver_lo || ver_lo > ver_hi ||
        seconds <= 0)
        usage();
    if (key_file) key_len = load_key(key_file, &key_id, key, sizeof key);
    signal(SIGPIPE, SIG_IGN);

    ping_data = malloc(psize ? psize : 1);
    for (size_t i = 0; i < psize; i++) ping_data[i] = (unsigned char)('a' + i % 26);
    PingRequest pr = CONTAINERS__LMCTFY__AGENT__PING_REQUEST__INIT;
    pr.has_data = 1; pr.data.data = ping_data; pr.data.len = psize;
    ping_req_len = containers__lmctfy__agent__ping_request__get_packed_size(&pr);
    ping_req = malloc(ping_req_len ? ping_req_len : 1);
    containers__lmctfy__agent__ping_request__pack(&pr, ping_req);
    max_in_frame = 4194304;
    if (psize + 1024 > max_in_frame) max_in_frame = (uint32_t)(psize + 1024);
    fw_arena_cap = 65536 + 2 * psize;
    fw_arena = aligned_alloc(16, (fw_arena_cap + 15) & ~(size_t)15);

    loop = uv_default_loop();
    union { struct sockaddr_in v4; struct sockaddr_in6 v6; } addr;
    if (!unix_path && uv_ip4_addr(host, port, &addr.v4) && uv_ip6_addr(host, port, &addr.v6)) {
        fprintf(stderr, "agent_load: bad host %s\n", host);
        return 2;
    }
    uint32_t ring = 16;
    while (ring < 2 * depth) ring *= 2;
    conn_t *cs = calloc(conns_n, sizeof *cs);
    for (unsigned i = 0; i < conns_n; i++) {
        conn_t *c = &cs[i];
        c->calls = calloc(ring, sizeof *c->calls);
        c->mask = ring - 1;
        c->creq.data = c;
        c->state = C_CONNECTING;
        live++;
        if (unix_path) {
            uv_pipe_init(loop, &c->h.pipe, 0);
            uv_pipe_connect(&c->creq, &c->h.pipe, unix_path, on_connect);
        } else {
            uv_tcp_init(loop, &c->h.tcp);
            int r = uv_tcp_connect(&c->creq, &c->h.tcp, (const struct sockaddr *)&addr, on_connect);
            if (r) { fprintf(stderr, "agent_load: uv_tcp_connect: %s\n", uv_strerror(r)); return 1; }
        }
    }
    uv_timer_t tw, te;
    uv_timer_init(loop, &tw);
    uv_timer_init(loop, &te);
    uv_timer_start(&tw, on_warm, (uint64_t)(warmup * 1000), 0);
    uv_timer_start(&te, on_end, (uint64_t)((warmup + seconds) * 1000), 0);
    uv_run(loop, UV_RUN_DEFAULT);

    double secs = (double)(win_end - win_start) / 1e9;
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    double p50 = nlat ? lat[nlat / 2] / 1e3 : 0;
    double p99 = nlat ? lat[(nlat * 99 / 100) < nlat ? nlat * 99 / 100 : nlat - 1] / 1e3 : 0;
    double max = nlat ? lat[nlat - 1] / 1e3 : 0;
    printf("RESULT rps=%.1f n=%zu secs=%.4f p50_us=%.2f p99_us=%.2f srv_cpu_s=%.3f cli_cpu_s=%.3f errors=%lu max_us=%.2f\n",
           secs > 0 ? nlat / secs : 0.0, nlat, secs, p50, p99, server_pid > 0 ? srv1 - srv0 : -1.0, cli1 - cli0,
           (unsigned long)errors, max);
    fflush(stdout);
    return errors == 0 && nlat > 0 ? 0 : 1;
}
