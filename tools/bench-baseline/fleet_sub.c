/* fleet_sub: one scheduler subscribed to a controller's fleet event stream
 * (issue #12's scale benchmark), in C with libuv and protobuf-c.
 *
 *   fleet_sub --unix PATH [--seconds 10] [--warmup 1] [--credit 4096] [--all-kinds] [--versions 1-3]
 *   fleet_sub --unix PATH --count-hosts [--prefix P]
 *   fleet_sub --tcp HOST:PORT --ca CA.pem --cert CERT.pem --key KEY.pem [the options above]
 *
 * Connects to the controller's Unix socket (the peer-credentials hello,
 * docs/PROTOCOL.md section 3), or with --tcp to its TCP client port
 * (tcp_address) over TLS 1.3 with a client certificate (section 3.1: the
 * same OFFER/ACCEPTED hello inside TLS; the controller's certificate must
 * chain to --ca and name HOST; OpenSSL driven through memory BIOs from the
 * libuv callbacks, tls_wire.h), and calls `Subscribe` with no host (the
 * fleet's log, section 9), kinds [STATS] (--all-kinds: every kind), live
 * events only (no resume point). With protocol version 3 the stream is
 * flow-controlled: --credit responses to begin with, and a CREDIT of what
 * was taken each time half of that has been taken (section 4.4); with an
 * older version no credit is asked. For every event received in the
 * measured window (after --warmup) it records CLOCK_REALTIME now minus the
 * event's timestamp_ns (the simulated agent's CLOCK_REALTIME when it
 * recorded the sample: both clocks are this machine's). It checks that each
 * event carries `host` and that the fleet log's sequence increases, counts
 * the distinct hosts seen, and counts host_seq_skips: an event whose
 * host_sequence is not its host's previous one + 1 (legal when an agent
 * coalesced STATS samples for lack of credit, otherwise an event lost on the
 * way). Prints
 *   RESULT events=.. secs=.. rate=.. p50_us=.. p90_us=.. p99_us=.. max_us=.. hosts_seen=..
 *          events_total=.. host_seq_skips=.. negative=.. errors=..
 * (a stream that ends, e.g. RESOURCE_EXHAUSTED "lagged", is an error).
 *
 * --count-hosts calls `ListHosts` instead and prints
 *   HOSTS known=.. connected=.. [prefix_connected=..]
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdarg.h>
#include <unistd.h>
#include <uv.h>
#include "fleet_wire.h"
#include "tls_wire.h"

typedef Containers__Lmctfy__Agent__SubscribeRequest SubscribeRequest;
typedef Containers__Lmctfy__Agent__SubscribeResponse SubscribeResponse;

#define MAX_IN_FRAME (64u << 20)

static uv_loop_t *loop;
static uv_pipe_t pipe_h;
static uv_tcp_t tcp_h;
static uv_stream_t *stream;
static uv_connect_t creq;
static buf_t in, out, cout, raw;
static const char *path, *prefix, *tcp_s, *ca_file, *cert_file, *key_file;
static char tcp_host[256];
static tlsw_t tls;
static uint32_t ver_lo = 1, ver_hi = 3, version;
static int count_hosts, all_kinds, established, phase, done;
static uint32_t credit = 4096, taken;
static double seconds = 10, warmup = 1;
static uint64_t errors, events_total, last_seq, win_start, win_end;
static uint32_t *lat;
static size_t nlat, caplat;
static uint64_t negative;
static int rc_hosts = -1;

static void report(const char *fmt, ...) {
    errors++;
    if (errors > 20) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("fleet_sub: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n", stderr);
    va_end(ap);
}

/* ---- distinct host names (open addressing) ---- */

typedef struct { char *name; uint64_t last; } host_t;
static host_t *hset;
static size_t hcap, hcount;
static uint64_t host_seq_skips;

static uint64_t fnv(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* The host's entry (made on first sight). */
static host_t *hset_get(const char *name) {
    if (hcount * 2 >= hcap) {
        size_t ncap = hcap ? hcap * 2 : 4096;
        host_t *n = calloc(ncap, sizeof *n);
        if (!n) { perror("calloc"); exit(3); }
        for (size_t i = 0; i < hcap; i++) {
            if (!hset[i].name) continue;
            size_t j = fnv(hset[i].name) & (ncap - 1);
            while (n[j].name) j = (j + 1) & (ncap - 1);
            n[j] = hset[i];
        }
        free(hset);
        hset = n;
        hcap = ncap;
    }
    size_t j = fnv(name) & (hcap - 1);
    while (hset[j].name) {
        if (!strcmp(hset[j].name, name)) return &hset[j];
        j = (j + 1) & (hcap - 1);
    }
    hset[j].name = strdup(name);
    hcount++;
    return &hset[j];
}

/* ---- the connection ---- */

static void finish(void) {
    if (done) return;
    done = 1;
    win_end = uv_hrtime();
    if (phase == 0) win_start = win_end;
    uv_stop(loop);
}

static void on_write(uv_write_t *r, int status) {
    if (status < 0 && !done) report("write: %s", uv_strerror(status));
    free(r);
}

/* Writes o's bytes to the socket, empties o. */
static void write_raw(buf_t *o) {
    if (!o->len) return;
    uv_write_t *w = malloc(sizeof *w + o->len);
    if (!w) { perror("malloc"); exit(3); }
    char *data = (char *)(w + 1);
    memcpy(data, o->p, o->len);
    uv_buf_t b = uv_buf_init(data, (unsigned)o->len);
    int r = uv_write(w, stream, &b, 1, on_write);
    if (r < 0) { free(w); report("uv_write: %s", uv_strerror(r)); finish(); }
    o->len = 0;
}

/* Sends the frames in out (encrypted first over TLS). */
static void flush(void) {
    if (!out.len) return;
    if (!tls.ssl) { write_raw(&out); return; }
    char err[512];
    if (tlsw_encrypt(&tls, out.p, out.len, &cout, err, sizeof err) < 0) { report("%s", err); finish(); }
    out.len = 0;
    write_raw(&cout);
}

static void call(const char *method, const uint8_t *payload, size_t n) {
    Frame f = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
    f.has_kind = 1; f.kind = K(REQUEST);
    f.has_stream_id = 1; f.stream_id = 1;
    f.method = (char *)method;
    f.has_payload = 1; f.payload.data = (uint8_t *)payload; f.payload.len = n;
    append_frame(&out, &f);
}

static void start_call(void) {
    uint8_t body[256];
    if (count_hosts) {
        Containers__Lmctfy__Agent__ListHostsRequest r = CONTAINERS__LMCTFY__AGENT__LIST_HOSTS_REQUEST__INIT;
        size_t n = containers__lmctfy__agent__list_hosts_request__pack(&r, body);
        call("ListHosts", body, n);
        return;
    }
    SubscribeRequest r = CONTAINERS__LMCTFY__AGENT__SUBSCRIBE_REQUEST__INIT;
    Containers__Lmctfy__Agent__ContainerEventKind stats = CONTAINERS__LMCTFY__AGENT__CONTAINER_EVENT_KIND__CONTAINER_EVENT_STATS;
    if (!all_kinds) { r.n_kinds = 1; r.kinds = &stats; }
    if (version >= 3) { r.has_credit = 1; r.credit = credit; }
    size_t n = containers__lmctfy__agent__subscribe_request__pack(&r, body);
    call("Subscribe", body, n);
    fprintf(stderr, "fleet_sub: protocol version %u; Subscribe kinds %s%s\n", version, all_kinds ? "all" : "STATS",
            version >= 3 ? ", flow-controlled" : ", no credit (version < 3)");
}

static void on_list(const Frame *f) {
    Containers__Lmctfy__Agent__ListHostsResponse *r = containers__lmctfy__agent__list_hosts_response__unpack(
        &arena_allocator, f->has_payload ? f->payload.len : 0, f->has_payload ? f->payload.data : NULL);
    if (!r) { report("undecodable ListHostsResponse"); finish(); return; }
    size_t connected = 0, pc = 0, pl = prefix ? strlen(prefix) : 0;
    for (size_t i = 0; i < r->n_hosts; i++) {
        const Containers__Lmctfy__Agent__HostInfo *h = r->hosts[i];
        if (!h->has_state || h->state != CONTAINERS__LMCTFY__AGENT__HOST_STATE__HOST_CONNECTED) continue;
        connected++;
        const char *name = h->identity && h->identity->host_name ? h->identity->host_name : "";
        if (prefix && !strncmp(name, prefix, pl) && name[pl] == '-') pc++;
    }
    if (prefix) printf("HOSTS known=%zu connected=%zu prefix_connected=%zu\n", r->n_hosts, connected, pc);
    else printf("HOSTS known=%zu connected=%zu\n", r->n_hosts, connected);
    rc_hosts = 0;
}

static void on_event(const Frame *f, uint64_t now_ns) {
    SubscribeResponse *r = containers__lmctfy__agent__subscribe_response__unpack(
        &arena_allocator, f->has_payload ? f->payload.len : 0, f->has_payload ? f->payload.data : NULL);
    if (!r) { report("undecodable SubscribeResponse"); return; }
    if (version >= 3 && ++taken >= credit / 2) {
        append_credit(&out, 1, taken);
        taken = 0;
    }
    if (r->has_caught_up) {
        fprintf(stderr, "fleet_sub: caught_up %llu\n", (unsigned long long)r->caught_up);
        return;
    }
    if (r->gap) { report("unexpected EventGap on a live subscription"); return; }
    const Containers__Lmctfy__Agent__ContainerEvent *e = r->event;
    if (!e) { report("SubscribeResponse without event, gap or caught_up"); return; }
    events_total++;
    if (!e->host || !*e->host) report("event %llu without host", (unsigned long long)e->sequence);
    else if (e->has_host_sequence) {
        host_t *h = hset_get(e->host);
        if (h->last && e->host_sequence != h->last + 1) host_seq_skips++;
        h->last = e->host_sequence;
    }
    if (e->has_sequence) {
        if (e->sequence <= last_seq) report("fleet sequence %llu after %llu", (unsigned long long)e->sequence,
                                            (unsigned long long)last_seq);
        last_seq = e->sequence;
    }
    if (phase != 1 || !e->has_timestamp_ns) return;
    int64_t d = (int64_t)(now_ns - e->timestamp_ns) / 1000;
    if (d < 0) { negative++; d = 0; }
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 1 << 16;
        lat = xrealloc(lat, caplat * sizeof *lat);
    }
    lat[nlat++] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
}

static void on_frame(const uint8_t *p, uint32_t len, uint64_t now_ns) {
    arena_reset();
    Frame *f = containers__lmctfy__agent__frame__unpack(&arena_allocator, len, p);
    if (!f || !f->has_kind) { report("undecodable frame"); finish(); return; }
    switch ((int)f->kind) {
    case K(HELLO):
        if (established || !f->hello || !f->hello->has_stage || f->hello->stage != S(ACCEPTED) ||
            !f->hello->has_version || f->hello->version < ver_lo || f->hello->version > ver_hi) {
            report("unexpected hello");
            finish();
            return;
        }
        established = 1;
        version = f->hello->version;
        start_call();
        return;
    case K(GOAWAY):
        report("GOAWAY reason %d: %s", f->goaway && f->goaway->has_reason ? (int)f->goaway->reason : 0,
               f->goaway && f->goaway->message ? f->goaway->message : "");
        finish();
        return;
    case K(RESPONSE):
        if (f->stream_id != 1) { report("RESPONSE on stream %u", f->stream_id); return; }
        if (count_hosts) on_list(f);
        else on_event(f, now_ns);
        if (f->status) {
            if (f->status->code != 0) report("status %d: %s", f->status->code, f->status->message ? f->status->message : "");
            finish();
        }
        return;
    case K(STATUS):
        if (f->status && f->status->code != 0)
            report("the stream ended: status %d: %s", f->status->code, f->status->message ? f->status->message : "");
        else if (!count_hosts) report("the stream ended (status OK)");
        finish();
        return;
    case K(PING): {
        Frame pong = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
        pong.has_kind = 1; pong.kind = K(PONG);
        pong.has_stream_id = 1; pong.stream_id = 0;
        pong.has_payload = f->has_payload; pong.payload = f->payload;
        append_frame(&out, &pong);
        return;
    }
    default:
        return;
    }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
    (void)h; (void)hint;
    buf_t *t = tls.ssl ? &raw : &in;
    if (tls.ssl) raw.len = 0;
    char *p = buf_reserve(t, 65536);
    *b = uv_buf_init(p, (unsigned)(t->cap - t->len));
}

static void send_offer(void);

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    (void)s; (void)b;
    if (nread < 0) {
        if (!done) { report("read: %s (the controller closed the connection)", uv_strerror((int)nread)); finish(); }
        return;
    }
    uint64_t now_ns = realtime_ns();
    if (tls.ssl) {
        char err[512];
        int r = tlsw_input(&tls, b->base, (size_t)nread, &in, &cout, err, sizeof err);
        write_raw(&cout);
        if (r < 0) { if (!done) { report("%s", err); finish(); } return; }
        if (r == 1) send_offer();
    } else {
        in.len += (size_t)nread;
    }
    size_t off = 0;
    while (in.len - off >= 4 && !done) {
        uint32_t len = get_be32(in.p + off);
        uint32_t max = established ? MAX_IN_FRAME : HELLO_MAX_FRAME;
        if (len > max) { report("frame of %u bytes, above %u", len, max); finish(); break; }
        if (in.len - off - 4 < len) break;
        on_frame((const uint8_t *)in.p + off + 4, len, now_ns);
        off += 4 + (size_t)len;
    }
    memmove(in.p, in.p + off, in.len - off);
    in.len -= off;
    flush();
}

static void on_connect(uv_connect_t *r, int status) {
    (void)r;
    if (status < 0) { report("connect %s: %s", path ? path : tcp_s, uv_strerror(status)); finish(); return; }
    uv_read_start(stream, on_alloc, on_read);
    if (tcp_s) {
        /* TLS first; the OFFER once the handshake is done (on_read) */
        SSL_CTX *ctx = tlsw_client_ctx("fleet_sub", ca_file, cert_file, key_file);
        char err[512];
        if (tlsw_start(&tls, ctx, tcp_host, &cout, err, sizeof err) < 0) { report("%s", err); finish(); return; }
        SSL_CTX_free(ctx); /* the SSL holds a reference */
        write_raw(&cout);
        return;
    }
    send_offer();
}

static void send_offer(void) {
    Hello h = CONTAINERS__LMCTFY__AGENT__HELLO__INIT;
    h.has_stage = 1; h.stage = S(OFFER);
    h.has_min_version = 1; h.min_version = ver_lo;
    h.has_max_version = 1; h.max_version = ver_hi;
    h.peer_name = (char *)"fleet_sub";
    h.has_max_frame_bytes = 1; h.max_frame_bytes = MAX_IN_FRAME;
    h.has_max_streams = 1; h.max_streams = 16;
    append_hello(&out, &h);
    flush();
}

static void on_warm(uv_timer_t *t) { (void)t; phase = 1; win_start = uv_hrtime(); }
static void on_end(uv_timer_t *t) { (void)t; finish(); }

static void usage(void) {
    fprintf(stderr, "usage: fleet_sub --unix PATH [--seconds 10] [--warmup 1] [--credit 4096] [--all-kinds] [--versions 1-3]\n"
                    "       fleet_sub --unix PATH --count-hosts [--prefix P]\n"
                    "       (instead of --unix: --tcp HOST:PORT --ca CA.pem --cert CERT.pem --key KEY.pem, TLS 1.3)\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (!strcmp(k, "--count-hosts")) { count_hosts = 1; continue; }
        if (!strcmp(k, "--all-kinds")) { all_kinds = 1; continue; }
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(k, "--unix")) path = v;
        else if (!strcmp(k, "--tcp")) tcp_s = v;
        else if (!strcmp(k, "--ca")) ca_file = v;
        else if (!strcmp(k, "--cert")) cert_file = v;
        else if (!strcmp(k, "--key")) key_file = v;
        else if (!strcmp(k, "--seconds")) seconds = atof(v);
        else if (!strcmp(k, "--warmup")) warmup = atof(v);
        else if (!strcmp(k, "--credit")) credit = (uint32_t)atoi(v);
        else if (!strcmp(k, "--prefix")) prefix = v;
        else if (!strcmp(k, "--versions")) {
            if (sscanf(v, "%u-%u", &ver_lo, &ver_hi) != 2) {
                if (sscanf(v, "%u", &ver_lo) != 1) usage();
                ver_hi = ver_lo;
            }
        } else { fprintf(stderr, "fleet_sub: unknown option %s\n", k); usage(); }
    }
    if (!path == !tcp_s || (tcp_s && (!ca_file || !cert_file || !key_file)) || seconds <= 0 || warmup < 0 || credit < 2 || !ver_lo || ver_lo > ver_hi) usage();
    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();
    if (path) {
        uv_pipe_init(loop, &pipe_h, 0);
        stream = (uv_stream_t *)&pipe_h;
        uv_pipe_connect(&creq, &pipe_h, path, on_connect);
    } else {
        const char *colon = strrchr(tcp_s, ':');
        struct sockaddr_in sa;
        if (!colon || (size_t)(colon - tcp_s) >= sizeof tcp_host) usage();
        memcpy(tcp_host, tcp_s, (size_t)(colon - tcp_s));
        tcp_host[colon - tcp_s] = 0;
        if (uv_ip4_addr(tcp_host, atoi(colon + 1), &sa)) { fprintf(stderr, "fleet_sub: bad address %s (IPv4 HOST:PORT)\n", tcp_s); return 2; }
        uv_tcp_init(loop, &tcp_h);
        uv_tcp_nodelay(&tcp_h, 1);
        stream = (uv_stream_t *)&tcp_h;
        uv_tcp_connect(&creq, &tcp_h, (const struct sockaddr *)&sa, on_connect);
    }
    uv_timer_t tw, te;
    if (!count_hosts) {
        uv_timer_init(loop, &tw);
        uv_timer_init(loop, &te);
        uv_timer_start(&tw, on_warm, (uint64_t)(warmup * 1000), 0);
        uv_timer_start(&te, on_end, (uint64_t)((warmup + seconds) * 1000), 0);
    } else {
        uv_timer_init(loop, &te);
        uv_timer_start(&te, on_end, 120000, 0);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    if (count_hosts) {
        if (rc_hosts != 0) printf("HOSTS failed errors=%llu\n", (unsigned long long)errors);
        return rc_hosts == 0 && !errors ? 0 : 1;
    }
    double secs = (double)(win_end - win_start) / 1e9;
    qsort(lat, nlat, sizeof *lat, cmp_u32);
#define PCT(p) (nlat ? lat[(size_t)((double)nlat * (p)) < nlat ? (size_t)((double)nlat * (p)) : nlat - 1] : 0)
    printf("RESULT events=%zu secs=%.3f rate=%.1f p50_us=%u p90_us=%u p99_us=%u max_us=%u hosts_seen=%zu "
           "events_total=%llu host_seq_skips=%llu negative=%llu errors=%llu\n",
           nlat, secs, secs > 0 ? nlat / secs : 0.0, PCT(0.50), PCT(0.90), PCT(0.99), nlat ? lat[nlat - 1] : 0,
           hcount, (unsigned long long)events_total, (unsigned long long)host_seq_skips, (unsigned long long)negative, (unsigned long long)errors);
    fflush(stdout);
    return errors == 0 && nlat > 0 ? 0 : 1;
}
