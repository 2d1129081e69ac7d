/* fleet_sim: a fleet of simulated agents dialling home to one lmctfy-controller
 * (issue #12's scale benchmark), in one single-threaded libuv process.
 *
 *   fleet_sim --port P [--addr 127.0.0.1] --key-id ID --key-file F --hosts N
 *             [--prefix sim] [--first 0] [--seconds T] [--batch 256]
 *             [--interval-ms 1000] [--keepalive-s 30] [--versions 1-3]
 *             [--ca CA.pem --cert CERT.pem --key KEY.pem [--cert-group G]]
 *
 * With --ca (issue #14) every connection runs TLS 1.3 under the framing
 * (PROTOCOL.md section 3.1): OpenSSL through two memory BIOs per
 * connection, driven from the libuv callbacks (tls_wire.h; no blocking, the
 * sockets stay libuv's). The controller's certificate must chain to CA.pem
 * and name --addr; each host shows a client certificate with its host name
 * as a subjectAltName DNS name (the controller refuses Register otherwise):
 * CERT.pem, or with --cert-group G the file CERT.pem with "%u" replaced by
 * i / G for host i (tools/make-test-pki --hosts makes such files, one key
 * KEY.pem for all). The hello is then OFFER/ACCEPTED without key or nonce,
 * and --key-id/--key-file are not needed.
 *
 * Each of N connections does what an agent with controller_address does
 * (docs/PROTOCOL.md sections 3, 4, 6.2 and 9): the TCP hello as the dialler
 * (OFFER with versions 1-3 and a fresh nonce, the controller's HMAC proof
 * checked, PROOF), then `Register` on stream 1 as host "<prefix>-<i>" (i from
 * --first, default 0, so that several processes can make one fleet) with a
 * HostIdentity (a boot id of its own, 2 cpus, 8 GiB, cgroup v1; every host
 * uses the same key id: the controller's max_hosts_per_key must allow that
 * many names, as tools/run-bench configures it). It then
 * serves the streams the controller opens (even ids, increasing):
 *
 *   - Subscribe: the host records one STATS sample of its root container
 *     every interval (default 1 s; the hosts' phases spread evenly over the
 *     interval), sequence 1, 2, 3... gap-free, timestamp_ns = CLOCK_REALTIME
 *     when recorded. A resume point of another boot id gets an EventGap
 *     first; the kept sample after the resume point (only the newest sample
 *     is kept, as an agent's coalesced STATS) comes next, then `caught_up`,
 *     then the live samples. With `credit` (version 3, section 4.4) nothing
 *     is sent beyond the credit granted (the request's, then CREDIT frames);
 *     meanwhile a newer sample replaces the waiting one. CANCEL ends it.
 *   - Ping: PingResponse echoing the data, status OK (version 2: one
 *     RESPONSE carrying the status).
 *   - anything else: STATUS UNIMPLEMENTED.
 *
 * FRAME_PING is answered with FRAME_PONG; like an agent (section 5) each
 * host sends a FRAME_PING when it has received nothing for --keepalive-s
 * (default 30 s, the agent's default) and counts the PONGs.
 *
 * Connections are opened in a ramp: at most --batch (default 256) are
 * between connect() and their Register's answer at once, below the
 * controller's listen backlog (511) and its 10 s hello timeout. The
 * process raises its RLIMIT_NOFILE soft limit to the hard limit (the
 * caller raises the hard one: ulimit -Hn, as root).
 *
 * Prints progress on stdout ("ramp done: ..." once every host has
 * registered or failed), then runs until --seconds T after the ramp (0,
 * the default: until SIGTERM or SIGINT) and prints
 *   RESULT hosts=N connected=.. registered=.. live=.. subscribed=.. events_sent=..
 *          pings_answered=.. keepalives=.. pongs=.. ramp_s=.. errors=..
 * Exits non-zero if there were errors. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdarg.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include "fleet_wire.h"
#include "tls_wire.h"

typedef Containers__Lmctfy__Agent__PingRequest PingRequest;
typedef Containers__Lmctfy__Agent__PingResponse PingResponse;
typedef Containers__Lmctfy__Agent__SubscribeRequest SubscribeRequest;
typedef Containers__Lmctfy__Agent__SubscribeResponse SubscribeResponse;
typedef Containers__Lmctfy__Agent__ContainerEvent ContainerEvent;

#define SLOTS 100 /* the interval is cut into this many phases */
#define MAX_IN_FRAME 4194304u

/* ---- configuration and counters ---- */

static uv_loop_t *loop;
static const char *addr_s = "127.0.0.1", *key_file, *key_id, *prefix = "sim";
static int port;
static unsigned char key[256];
static size_t key_len;
static unsigned hosts_n, batch = 256, first;
static uint32_t ver_lo = 1, ver_hi = 3;
static double seconds;
static unsigned interval_ms = 1000, keepalive_s = 30;
static struct sockaddr_in addr;
/* TLS (--ca): one client context per certificate file; --cert-group G: host
 * i's certificate is --cert with "%u" replaced by i / G. */
static const char *ca_file, *cert_file, *tls_key_file;
static unsigned cert_group;
static SSL_CTX **tls_ctxs;
static unsigned n_tls_ctxs;
static uint64_t n_tls_done;
static buf_t cout;                /* ciphertext being written to one connection */
static buf_t plain;               /* plaintext decrypted from one read */

static unsigned next_idx, inflight;
static uint64_t n_connected, n_established, n_registered, n_live, n_subscribed, n_closed;
static uint64_t events_sent, events_recorded, pings_answered, keepalives, pongs, errors;
static uint64_t t_start_ms, t_ramp_ms;
static int ramp_done, stopping;
static uint64_t last_events, last_report_ms;

static void report(const char *fmt, ...) {
    errors++;
    if (errors > 20) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("fleet_sim: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(errors == 20 ? " (further errors are only counted)\n" : "\n", stderr);
    va_end(ap);
}

/* ---- connections ---- */

enum { C_IDLE, C_CONNECTING, C_OFFERED, C_PROVED, C_REGISTERING, C_READY, C_CLOSED };

typedef struct conn {
    uv_tcp_t tcp;                 /* first: the handle is the connection */
    uv_connect_t creq;
    tlsw_t tls;
    buf_t in;
    unsigned idx;
    uint8_t state;
    uint8_t reg_response;         /* version 1: Register's RESPONSE came, STATUS awaited */
    uint8_t flow;                 /* the subscription is flow-controlled */
    uint8_t q_gap, q_replay, q_caught, q_sample; /* what the subscription still owes, in this order */
    uint32_t version, peer_max_frame;
    uint32_t last_peer_id;        /* the highest even id the controller opened */
    uint32_t sub;                 /* the controller's Subscribe stream; 0: none */
    uint64_t credit;              /* responses the subscription may still be sent */
    uint64_t seq;                 /* newest sequence recorded (0: none yet) */
    uint64_t sample_ts;           /* its CLOCK_REALTIME */
    uint64_t sent_seq;            /* newest sequence sent on the subscription */
    uint64_t caught_val;
    uint64_t gap_after;
    char *gap_boot;               /* the boot id the controller asked to resume */
    uint64_t last_rx_ms, last_ping_ms;
    unsigned char nc[NONCE];
    char boot[33];
} conn_t;

static conn_t *conns;
static buf_t out;                 /* frames being built for one connection */
static char rbuf[65536];          /* shared read buffer (copied out only when a frame is split) */

static void close_conn(conn_t *c);
static void start_more(void);
static void send_offer(conn_t *c);

/* The client context of host i's certificate (--cert, or its group's file). */
static SSL_CTX *host_ctx(unsigned i) {
    unsigned g = cert_group ? i / cert_group : 0;
    if (g >= n_tls_ctxs) {
        tls_ctxs = xrealloc(tls_ctxs, (g + 1) * sizeof *tls_ctxs);
        memset(tls_ctxs + n_tls_ctxs, 0, (g + 1 - n_tls_ctxs) * sizeof *tls_ctxs);
        n_tls_ctxs = g + 1;
    }
    if (!tls_ctxs[g]) {
        char path[4096];
        if (cert_group) snprintf(path, sizeof path, cert_file, g);
        else snprintf(path, sizeof path, "%s", cert_file);
        tls_ctxs[g] = tlsw_client_ctx("fleet_sim", ca_file, path, tls_key_file);
    }
    return tls_ctxs[g];
}

typedef struct { uv_write_t req; char data[]; } wreq_t;

static void on_write(uv_write_t *r, int status) {
    conn_t *c = r->data;
    free(r);
    if (status < 0 && !stopping && c->state != C_CLOSED) {
        report("%s-%u: write: %s", prefix, first + c->idx, uv_strerror(status));
        close_conn(c);
    }
}

/* Writes what `o` holds to c's socket (uv_try_write, the rest queued), empties o. */
static void write_raw(conn_t *c, buf_t *o) {
    buf_t out = *o;
    o->len = 0;
    if (!out.len || c->state == C_CLOSED) return;
    uv_buf_t b = uv_buf_init(out.p, (unsigned)out.len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == UV_EAGAIN || n == UV_ENOSYS) n = 0;
    if (n < 0) {
        report("%s-%u: write: %s", prefix, first + c->idx, uv_strerror(n));
        close_conn(c);
        return;
    }
    if ((size_t)n < out.len) {
        size_t rest = out.len - (size_t)n;
        wreq_t *w = malloc(sizeof *w + rest);
        if (!w) { perror("malloc"); exit(3); }
        memcpy(w->data, out.p + n, rest);
        w->req.data = c;
        uv_buf_t rb = uv_buf_init(w->data, (unsigned)rest);
        int r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &rb, 1, on_write);
        if (r < 0) {
            free(w);
            report("%s-%u: uv_write: %s", prefix, first + c->idx, uv_strerror(r));
            close_conn(c);
            return;
        }
    }
}

/* Sends what `out` holds to c (through TLS when c has it), empties out. */
static void send_out(conn_t *c) {
    if (!out.len) return;
    if (c->state == C_CLOSED) { out.len = 0; return; }
    if (!c->tls.ssl) { write_raw(c, &out); return; }
    char err[512];
    int r = tlsw_encrypt(&c->tls, out.p, out.len, &cout, err, sizeof err);
    out.len = 0;
    if (r < 0) { cout.len = 0; report("%s-%u: %s", prefix, first + c->idx, err); close_conn(c); return; }
    write_raw(c, &cout);
}

static void on_close(uv_handle_t *h) {
    conn_t *c = (conn_t *)h;
    buf_free(&c->in);
    tlsw_free(&c->tls);
    free(c->gap_boot);
    c->gap_boot = NULL;
}

static void close_conn(conn_t *c) {
    if (c->state == C_CLOSED) return;
    int was = c->state;
    c->state = C_CLOSED;
    n_closed++;
    if (was == C_READY) n_live--;
    if (c->sub) { c->sub = 0; n_subscribed--; }
    if (c->tls.ssl && stopping) {
        tlsw_shutdown(&c->tls, &cout); /* close_notify, best effort */
        if (cout.len) { uv_buf_t b = uv_buf_init(cout.p, (unsigned)cout.len); uv_try_write((uv_stream_t *)&c->tcp, &b, 1); }
        cout.len = 0;
    }
    uv_close((uv_handle_t *)&c->tcp, on_close);
    if (was != C_READY && was != C_IDLE) { inflight--; if (!stopping) start_more(); }
}

/* ---- the subscription ---- */

static void append_response(uint32_t stream, const SubscribeResponse *r) {
    uint8_t body[512];
    size_t n = containers__lmctfy__agent__subscribe_response__get_packed_size(r);
    uint8_t *p = n <= sizeof body ? body : malloc(n);
    if (!p) { perror("malloc"); exit(3); }
    containers__lmctfy__agent__subscribe_response__pack(r, p);
    append_simple(&out, K(RESPONSE), stream, p, n);
    if (p != body) free(p);
}

/* The newest sample as a STATS event: the root container's cpu, memory and
 * pids, as an agent's StatsSampler reads them. */
static void append_sample(conn_t *c) {
    Containers__Lmctfy__CpuStats__Usage usage = CONTAINERS__LMCTFY__CPU_STATS__USAGE__INIT;
    usage.has_total = 1; usage.total = c->seq * 12345678u;
    Containers__Lmctfy__CpuStats cpu = CONTAINERS__LMCTFY__CPU_STATS__INIT;
    cpu.usage = &usage;
    Containers__Lmctfy__MemoryStats mem = CONTAINERS__LMCTFY__MEMORY_STATS__INIT;
    mem.has_usage = 1; mem.usage = (int64_t)(512u << 20) + (int64_t)(c->idx * 4096u) + (int64_t)(c->seq % 64) * 4096;
    mem.has_working_set = 1; mem.working_set = mem.usage / 2;
    Containers__Lmctfy__PidsStats pids = CONTAINERS__LMCTFY__PIDS_STATS__INIT;
    pids.has_current = 1; pids.current = 40 + c->idx % 17;
    Containers__Lmctfy__ContainerStats st = CONTAINERS__LMCTFY__CONTAINER_STATS__INIT;
    st.cpu = &cpu; st.memory = &mem; st.pids = &pids;
    ContainerEvent e = CONTAINERS__LMCTFY__AGENT__CONTAINER_EVENT__INIT;
    e.boot_id = c->boot;
    e.has_sequence = 1; e.sequence = c->seq;
    e.has_timestamp_ns = 1; e.timestamp_ns = c->sample_ts;
    e.container = (char *)"/";
    e.has_kind = 1; e.kind = CONTAINERS__LMCTFY__AGENT__CONTAINER_EVENT_KIND__CONTAINER_EVENT_STATS;
    e.stats = &st;
    SubscribeResponse r = CONTAINERS__LMCTFY__AGENT__SUBSCRIBE_RESPONSE__INIT;
    r.event = &e;
    append_response(c->sub, &r);
    c->sent_seq = c->seq;
    events_sent++;
}

/* Sends what the subscription owes, in order, while credit lasts. */
static void drain(conn_t *c) {
    while (c->sub && (!c->flow || c->credit > 0)) {
        SubscribeResponse r = CONTAINERS__LMCTFY__AGENT__SUBSCRIBE_RESPONSE__INIT;
        if (c->q_gap) {
            Containers__Lmctfy__Agent__EventGap g = CONTAINERS__LMCTFY__AGENT__EVENT_GAP__INIT;
            g.requested_boot_id = c->gap_boot;
            g.has_after_sequence = 1; g.after_sequence = c->gap_after;
            g.boot_id = c->boot;
            g.has_first_sequence = 1; g.first_sequence = c->seq ? c->seq : 1;
            r.gap = &g;
            append_response(c->sub, &r);
            c->q_gap = 0;
        } else if (c->q_replay) {
            append_sample(c);
            c->q_replay = 0;
        } else if (c->q_caught) {
            r.has_caught_up = 1; r.caught_up = c->caught_val;
            append_response(c->sub, &r);
            c->q_caught = 0;
        } else if (c->q_sample) {
            if (c->seq > c->sent_seq) append_sample(c);
            c->q_sample = 0;
        } else {
            break;
        }
        if (c->flow) c->credit--;
    }
}

/* The host records a sample (every interval, once registered). */
static void record(conn_t *c) {
    c->seq++;
    c->sample_ts = realtime_ns();
    events_recorded++;
    if (!c->sub) return;
    if (c->q_replay) c->q_replay = 0; /* superseded by the newer sample: not a gap */
    c->q_sample = 1;
    drain(c);
}

static void on_subscribe(conn_t *c, uint32_t stream, const Frame *f) {
    SubscribeRequest *r = containers__lmctfy__agent__subscribe_request__unpack(
        &arena_allocator, f->has_payload ? f->payload.len : 0, f->has_payload ? f->payload.data : NULL);
    if (!r) { append_status(&out, stream, 3, "undecodable SubscribeRequest"); return; }
    if (r->has_credit && c->version < 3) {
        append_status(&out, stream, 3, "credit needs protocol version 3");
        return;
    }
    int other_boot = r->boot_id && strcmp(r->boot_id, c->boot);
    if (r->has_after_sequence && !other_boot && r->after_sequence > c->seq) {
        char msg[128];
        snprintf(msg, sizeof msg, "after_sequence %llu is beyond the newest event %llu",
                 (unsigned long long)r->after_sequence, (unsigned long long)c->seq);
        append_status(&out, stream, 11, msg);
        return;
    }
    if (!c->sub) n_subscribed++;
    c->sub = stream;
    c->flow = r->has_credit;
    c->credit = r->has_credit ? r->credit : 0;
    c->q_gap = c->q_replay = c->q_sample = 0;
    c->sent_seq = 0;
    free(c->gap_boot);
    c->gap_boot = NULL;
    if (other_boot) {
        /* Another boot's events are gone: say so, then the kept sample. */
        c->q_gap = 1;
        c->gap_boot = strdup(r->boot_id);
        c->gap_after = r->has_after_sequence ? r->after_sequence : 0;
        c->q_replay = c->seq > 0;
    } else if (r->has_after_sequence) {
        c->q_replay = c->seq > r->after_sequence;
    }
    c->q_caught = 1;
    c->caught_val = c->seq;
    drain(c);
}

static void on_ping_call(conn_t *c, uint32_t stream, const Frame *f) {
    PingRequest *r = containers__lmctfy__agent__ping_request__unpack(
        &arena_allocator, f->has_payload ? f->payload.len : 0, f->has_payload ? f->payload.data : NULL);
    if (!r) { append_status(&out, stream, 3, "undecodable PingRequest"); return; }
    PingResponse resp = CONTAINERS__LMCTFY__AGENT__PING_RESPONSE__INIT;
    resp.has_data = r->has_data; resp.data = r->data;
    uint8_t body[256];
    size_t n = containers__lmctfy__agent__ping_response__get_packed_size(&resp);
    uint8_t *p = n <= sizeof body ? body : malloc(n);
    if (!p) { perror("malloc"); exit(3); }
    containers__lmctfy__agent__ping_response__pack(&resp, p);
    if (c->version >= 2) {
        Containers__Lmctfy__Agent__RpcStatus ok = CONTAINERS__LMCTFY__AGENT__RPC_STATUS__INIT;
        ok.has_code = 1; ok.code = 0;
        Frame rf = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
        rf.has_kind = 1; rf.kind = K(RESPONSE);
        rf.has_stream_id = 1; rf.stream_id = stream;
        rf.has_payload = 1; rf.payload.data = p; rf.payload.len = n;
        rf.status = &ok;
        append_frame(&out, &rf);
    } else {
        append_simple(&out, K(RESPONSE), stream, p, n);
        append_status(&out, stream, 0, NULL);
    }
    if (p != body) free(p);
    pings_answered++;
}

/* ---- handshake and Register ---- */

static void send_register(conn_t *c) {
    char name[128];
    snprintf(name, sizeof name, "%s-%u", prefix, first + c->idx);
    Containers__Lmctfy__Agent__HostIdentity id = CONTAINERS__LMCTFY__AGENT__HOST_IDENTITY__INIT;
    id.host_name = name;
    id.boot_id = c->boot;
    id.agent_version = (char *)"fleet_sim";
    id.has_cgroup_version = 1; id.cgroup_version = 1;
    id.has_cpus = 1; id.cpus = 2;
    id.has_memory_bytes = 1; id.memory_bytes = 8ull << 30;
    id.root_container = (char *)"/";
    Containers__Lmctfy__Agent__RegisterRequest rr = CONTAINERS__LMCTFY__AGENT__REGISTER_REQUEST__INIT;
    rr.identity = &id;
    uint8_t body[512];
    size_t n = containers__lmctfy__agent__register_request__get_packed_size(&rr);
    if (n > sizeof body) { report("Register too large"); close_conn(c); return; }
    containers__lmctfy__agent__register_request__pack(&rr, body);
    Frame f = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
    f.has_kind = 1; f.kind = K(REQUEST);
    f.has_stream_id = 1; f.stream_id = 1;
    f.method = (char *)"Register";
    f.has_payload = 1; f.payload.data = body; f.payload.len = n;
    f.has_deadline_ms = 1; f.deadline_ms = 30000;
    append_frame(&out, &f);
    c->state = C_REGISTERING;
}

static void registered(conn_t *c, const Frame *f) {
    if (!f->status || !f->status->has_code || f->status->code != 0) {
        report("%s-%u: Register refused: status %d: %s", prefix, first + c->idx, f->status ? f->status->code : -1,
               f->status && f->status->message ? f->status->message : "");
        close_conn(c);
        return;
    }
    c->state = C_READY;
    n_registered++;
    n_live++;
    inflight--;
    start_more();
}

static void on_hello(conn_t *c, const Hello *h) {
    int stage = h->has_stage ? (int)h->stage : 0;
    if (c->state == C_OFFERED && stage == S(CHALLENGE)) {
        char err[128];
        uint32_t v = answer_challenge(h, c->nc, ver_lo, ver_hi, key, key_len, key_id, "controller", &out, err, sizeof err);
        if (!v) {
            report("%s", err);
            close_conn(c);
            return;
        }
        c->version = v;
        c->state = C_PROVED;
        return;
    }
    if (c->tls.ssl && c->state == C_OFFERED && stage == S(ACCEPTED)) {
        /* inside TLS with our certificate: OFFER then ACCEPTED (section 3.1) */
        if (!h->has_version || h->version < ver_lo || h->version > ver_hi) {
            report("ACCEPTED names version %u, outside %u-%u", h->version, ver_lo, ver_hi);
            close_conn(c);
            return;
        }
        c->version = h->version;
        c->state = C_PROVED;
    }
    if (c->state == C_PROVED && stage == S(ACCEPTED)) {
        if (!h->has_version || h->version != c->version) {
            report("ACCEPTED names version %u, not the challenge's %u", h->version, c->version);
            close_conn(c);
            return;
        }
        c->peer_max_frame = h->has_max_frame_bytes ? h->max_frame_bytes : 65536;
        n_established++;
        send_register(c);
        return;
    }
    report("%s-%u: unexpected hello stage %d", prefix, first + c->idx, stage);
    close_conn(c);
}

/* One whole frame; appends whatever it makes us send to out. */
static void on_frame(conn_t *c, const uint8_t *p, uint32_t len) {
    arena_reset();
    Frame *f = containers__lmctfy__agent__frame__unpack(&arena_allocator, len, p);
    if (!f || !f->has_kind) {
        report("%s-%u: undecodable frame or frame without kind", prefix, first + c->idx);
        close_conn(c);
        return;
    }
    if (f->kind == K(GOAWAY)) {
        report("%s-%u: GOAWAY reason %d: %s", prefix, first + c->idx,
               f->goaway && f->goaway->has_reason ? (int)f->goaway->reason : 0,
               f->goaway && f->goaway->message ? f->goaway->message : "(no message)");
        close_conn(c);
        return;
    }
    if (c->state == C_OFFERED || c->state == C_PROVED) {
        if (f->kind == K(HELLO) && f->hello) on_hello(c, f->hello);
        else { report("frame kind %d during the handshake", (int)f->kind); close_conn(c); }
        return;
    }
    uint32_t id = f->has_stream_id ? f->stream_id : 0;
    switch ((int)f->kind) {
    case K(REQUEST):
        if (id == 0 || (id & 1) || id <= c->last_peer_id) {
            report("%s-%u: REQUEST on stream %u (not a new even id)", prefix, first + c->idx, id);
            close_conn(c);
            return;
        }
        c->last_peer_id = id;
        if (f->method && !strcmp(f->method, "Subscribe")) on_subscribe(c, id, f);
        else if (f->method && !strcmp(f->method, "Ping")) on_ping_call(c, id, f);
        else append_status(&out, id, 12, "fleet_sim serves only Subscribe and Ping");
        return;
    case K(CANCEL):
        if (id && id == c->sub) { c->sub = 0; n_subscribed--; }
        return;
    case K(CREDIT):
        if (c->version < 3 || !f->has_credit || !f->credit) {
            report("%s-%u: CREDIT without credit or before version 3", prefix, first + c->idx);
            close_conn(c);
            return;
        }
        if (id && id == c->sub) { c->credit += f->credit; drain(c); }
        return;
    case K(RESPONSE):
    case K(STATUS):
        if (id != 1 || c->state != C_REGISTERING) {
            report("%s-%u: %s on stream %u, which is not ours", prefix, first + c->idx,
                   f->kind == K(STATUS) ? "STATUS" : "RESPONSE", id);
            return;
        }
        if (f->kind == K(RESPONSE) && !(c->version >= 2 && f->status)) { c->reg_response = 1; return; }
        if (f->kind == K(STATUS) && !c->reg_response && f->status && f->status->code == 0) {
            report("%s-%u: Register: OK status without a response", prefix, first + c->idx);
        }
        registered(c, f);
        return;
    case K(PING): {
        Frame pong = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
        pong.has_kind = 1; pong.kind = K(PONG);
        pong.has_stream_id = 1; pong.stream_id = 0;
        pong.has_payload = f->has_payload; pong.payload = f->payload;
        append_frame(&out, &pong);
        return;
    }
    case K(PONG):
        pongs++;
        return;
    default:
        report("%s-%u: unexpected frame kind %d on stream %u", prefix, first + c->idx, (int)f->kind, id);
    }
}

/* Parses whole frames from p[0..n); returns the bytes used. */
static size_t parse(conn_t *c, const char *p, size_t n) {
    size_t off = 0;
    while (n - off >= 4 && c->state != C_CLOSED) {
        uint32_t len = get_be32(p + off);
        uint32_t max = c->state >= C_REGISTERING ? MAX_IN_FRAME : HELLO_MAX_FRAME;
        if (len > max) {
            report("%s-%u: frame of %u bytes, above our maximum %u", prefix, first + c->idx, len, max);
            close_conn(c);
            break;
        }
        if (n - off - 4 < len) break;
        on_frame(c, (const uint8_t *)p + off + 4, len);
        off += 4 + (size_t)len;
    }
    return off;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
    (void)hint;
    conn_t *c = (conn_t *)h;
    if (!c->in.len || c->tls.ssl) { *b = uv_buf_init(rbuf, sizeof rbuf); return; }
    char *p = buf_reserve(&c->in, 16384);
    *b = uv_buf_init(p, (unsigned)(c->in.cap - c->in.len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    conn_t *c = (conn_t *)s;
    if (nread < 0) {
        if (!stopping && c->state != C_CLOSED) {
            report("%s-%u: read: %s (the controller closed the connection)", prefix, first + c->idx, uv_strerror((int)nread));
            close_conn(c);
        }
        return;
    }
    if (nread == 0) return;
    c->last_rx_ms = uv_now(loop);
    if (c->tls.ssl) {
        char err[512];
        plain.len = 0;
        int r = tlsw_input(&c->tls, b->base, (size_t)nread, &plain, &cout, err, sizeof err);
        write_raw(c, &cout);
        if (r < 0) {
            if (!stopping && c->state != C_CLOSED) { report("%s-%u: %s", prefix, first + c->idx, err); close_conn(c); }
            return;
        }
        if (r == 1) { n_tls_done++; send_offer(c); }
        if (c->state == C_CLOSED) return;
        if (!c->in.len) {
            size_t used = parse(c, plain.p, plain.len);
            if (used < plain.len && c->state != C_CLOSED) {
                memcpy(buf_reserve(&c->in, plain.len - used), plain.p + used, plain.len - used);
                c->in.len += plain.len - used;
            }
        } else {
            memcpy(buf_reserve(&c->in, plain.len), plain.p, plain.len);
            c->in.len += plain.len;
            size_t used = parse(c, c->in.p, c->in.len);
            if (c->state != C_CLOSED) {
                memmove(c->in.p, c->in.p + used, c->in.len - used);
                c->in.len -= used;
                if (!c->in.len && c->in.cap > 65536) buf_free(&c->in);
            }
        }
        if (plain.cap > (1u << 20)) buf_free(&plain);
    } else if (b->base == rbuf) {
        size_t used = parse(c, rbuf, (size_t)nread);
        if (used < (size_t)nread && c->state != C_CLOSED) {
            memcpy(buf_reserve(&c->in, (size_t)nread - used), rbuf + used, (size_t)nread - used);
            c->in.len += (size_t)nread - used;
        }
    } else {
        c->in.len += (size_t)nread;
        size_t used = parse(c, c->in.p, c->in.len);
        if (c->state != C_CLOSED) {
            memmove(c->in.p, c->in.p + used, c->in.len - used);
            c->in.len -= used;
            if (!c->in.len && c->in.cap > 65536) buf_free(&c->in);
        }
    }
    send_out(c);
}

static void on_connect(uv_connect_t *req, int status) {
    conn_t *c = req->data;
    if (status < 0) {
        if (c->state != C_CLOSED) {
            report("%s-%u: connect: %s", prefix, first + c->idx, uv_strerror(status));
            close_conn(c);
        }
        return;
    }
    n_connected++;
    uv_tcp_nodelay(&c->tcp, 1);
    c->last_rx_ms = uv_now(loop);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (ca_file) {
        /* TLS first; the OFFER once the handshake is done (on_read) */
        char err[512];
        if (tlsw_start(&c->tls, host_ctx(first + c->idx), addr_s, &cout, err, sizeof err) < 0) {
            cout.len = 0;
            report("%s-%u: %s", prefix, first + c->idx, err);
            close_conn(c);
            return;
        }
        write_raw(c, &cout);
        return;
    }
    send_offer(c);
}

/* The hello's OFFER: with the shared key's nonce on plain TCP; inside TLS
 * with our certificate, that of a Unix socket (no key id, no nonce). */
static void send_offer(conn_t *c) {
    Hello h = CONTAINERS__LMCTFY__AGENT__HELLO__INIT;
    h.has_stage = 1; h.stage = S(OFFER);
    h.has_min_version = 1; h.min_version = ver_lo;
    h.has_max_version = 1; h.max_version = ver_hi;
    h.peer_name = (char *)"fleet_sim";
    h.has_max_frame_bytes = 1; h.max_frame_bytes = MAX_IN_FRAME;
    h.has_max_streams = 1; h.max_streams = 128;
    if (!c->tls.ssl) {
        if (RAND_bytes(c->nc, NONCE) != 1) { fprintf(stderr, "fleet_sim: RAND_bytes failed\n"); exit(3); }
        h.key_id = (char *)key_id;
        h.has_nonce = 1; h.nonce.data = c->nc; h.nonce.len = NONCE;
    }
    append_hello(&out, &h);
    c->state = C_OFFERED;
    send_out(c);
}

static void start_conn(unsigned i) {
    conn_t *c = &conns[i];
    memset(c, 0, sizeof *c);
    c->idx = i;
    unsigned char b[16];
    if (RAND_bytes(b, sizeof b) != 1) { fprintf(stderr, "fleet_sim: RAND_bytes failed\n"); exit(3); }
    for (int k = 0; k < 16; k++) snprintf(c->boot + 2 * k, 3, "%02x", b[k]);
    c->creq.data = c;
    c->state = C_CONNECTING;
    inflight++;
    uv_tcp_init(loop, &c->tcp);
    int r = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&addr, on_connect);
    if (r) {
        report("%s-%u: uv_tcp_connect: %s", prefix, first + i, uv_strerror(r));
        close_conn(c);
    }
}

static void print_result(void);

static void check_ramp(void) {
    if (ramp_done || next_idx < hosts_n || inflight) return;
    ramp_done = 1;
    t_ramp_ms = uv_now(loop);
    printf("fleet_sim: ramp done: %llu of %u hosts registered in %.1f s (%llu connected, %llu errors)\n",
           (unsigned long long)n_registered, hosts_n, (double)(t_ramp_ms - t_start_ms) / 1e3,
           (unsigned long long)n_connected, (unsigned long long)errors);
}

static void start_more(void) {
    while (!stopping && inflight < batch && next_idx < hosts_n) start_conn(next_idx++);
    check_ramp();
}

/* ---- timers ---- */

static uint64_t slot_done; /* slots handled since the start */

/* Every slot (interval / SLOTS): the hosts of that phase record a sample
 * and check their keepalive. */
static void on_slot(uv_timer_t *t) {
    (void)t;
    uint64_t now = uv_now(loop);
    uint64_t slot_ms = interval_ms / SLOTS ? interval_ms / SLOTS : 1;
    uint64_t target = (now - t_start_ms) / slot_ms;
    uint64_t ka_ms = (uint64_t)keepalive_s * 1000;
    while (slot_done < target) {
        unsigned s = (unsigned)(slot_done++ % SLOTS);
        for (unsigned i = s; i < next_idx; i += SLOTS) {
            conn_t *c = &conns[i];
            if (c->state != C_READY) continue;
            record(c);
            if (ka_ms && now - c->last_rx_ms >= ka_ms && now - c->last_ping_ms >= ka_ms) {
                uint8_t payload[8];
                memcpy(payload, &now, sizeof payload);
                append_simple(&out, K(PING), 0, payload, sizeof payload);
                c->last_ping_ms = now;
                keepalives++;
            }
            send_out(c);
        }
    }
}

static void on_progress(uv_timer_t *t) {
    (void)t;
    uint64_t now = uv_now(loop);
    if (!ramp_done || now - last_report_ms >= 5000) {
        double dt = last_report_ms ? (double)(now - last_report_ms) / 1e3 : 1;
        printf("fleet_sim: t=%.1fs connected=%llu registered=%llu live=%llu subscribed=%llu inflight=%u "
               "events_sent=%llu (%.0f/s) pings_answered=%llu errors=%llu\n",
               (double)(now - t_start_ms) / 1e3, (unsigned long long)n_connected, (unsigned long long)n_registered,
               (unsigned long long)n_live, (unsigned long long)n_subscribed, inflight,
               (unsigned long long)events_sent, (double)(events_sent - last_events) / dt,
               (unsigned long long)pings_answered, (unsigned long long)errors);
        last_report_ms = now;
        last_events = events_sent;
    }
    if (ramp_done && seconds > 0 && (double)(now - t_ramp_ms) >= seconds * 1e3) {
        stopping = 1;
        uv_stop(loop);
    }
}

static void on_signal(uv_signal_t *s, int sig) {
    (void)s; (void)sig;
    stopping = 1;
    uv_stop(loop);
}

static void print_result(void) {
    printf("RESULT hosts=%u connected=%llu registered=%llu live=%llu subscribed=%llu events_sent=%llu "
           "events_recorded=%llu pings_answered=%llu keepalives=%llu pongs=%llu ramp_s=%.2f tls=%s tls_handshakes=%llu errors=%llu\n",
           hosts_n, (unsigned long long)n_connected, (unsigned long long)n_registered, (unsigned long long)n_live,
           (unsigned long long)n_subscribed, (unsigned long long)events_sent, (unsigned long long)events_recorded,
           (unsigned long long)pings_answered, (unsigned long long)keepalives, (unsigned long long)pongs,
           ramp_done ? (double)(t_ramp_ms - t_start_ms) / 1e3 : -1.0, ca_file ? "1.3" : "off",
           (unsigned long long)n_tls_done, (unsigned long long)errors);
    fflush(stdout);
}

static void usage(void) {
    fprintf(stderr, "usage: fleet_sim --port P [--addr 127.0.0.1] --key-id ID --key-file F --hosts N [--prefix sim]\n"
                    "                 [--first 0] [--seconds T] [--batch 256] [--interval-ms 1000] [--keepalive-s 30] [--versions 1-3]\n"
                    "       (TLS 1.3: --ca CA.pem --cert CERT.pem --key KEY.pem [--cert-group G], no --key-file needed;\n"
                    "        with --cert-group, CERT.pem contains %%u, replaced by host index / G)\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc) usage();
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--addr")) addr_s = v;
        else if (!strcmp(k, "--key-file")) key_file = v;
        else if (!strcmp(k, "--key-id")) key_id = v;
        else if (!strcmp(k, "--hosts")) hosts_n = (unsigned)atoi(v);
        else if (!strcmp(k, "--prefix")) prefix = v;
        else if (!strcmp(k, "--first")) first = (unsigned)atoi(v);
        else if (!strcmp(k, "--seconds")) seconds = atof(v);
        else if (!strcmp(k, "--batch")) batch = (unsigned)atoi(v);
        else if (!strcmp(k, "--interval-ms")) interval_ms = (unsigned)atoi(v);
        else if (!strcmp(k, "--keepalive-s")) keepalive_s = (unsigned)atoi(v);
        else if (!strcmp(k, "--ca")) ca_file = v;
        else if (!strcmp(k, "--cert")) cert_file = v;
        else if (!strcmp(k, "--key")) tls_key_file = v;
        else if (!strcmp(k, "--cert-group")) cert_group = (unsigned)atoi(v);
        else if (!strcmp(k, "--versions")) {
            if (sscanf(v, "%u-%u", &ver_lo, &ver_hi) != 2) {
                if (sscanf(v, "%u", &ver_lo) != 1) usage();
                ver_hi = ver_lo;
            }
        } else { fprintf(stderr, "fleet_sim: unknown option %s\n", k); usage(); }
    }
    if (!ca_file != !cert_file || !cert_file != !tls_key_file) usage();
    if (cert_group && !strstr(cert_file, "%u")) usage();
    if (!port || (!key_file && !ca_file) || !hosts_n || !batch || !interval_ms || !ver_lo || ver_lo > ver_hi || seconds < 0) usage();
    if (key_file) key_len = load_key(key_file, &key_id, key, sizeof key);
    if (uv_ip4_addr(addr_s, port, &addr)) { fprintf(stderr, "fleet_sim: bad address %s\n", addr_s); return 2; }
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* Descriptors: one per host plus the loop's own; soft limit to the hard one. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rlim_t before = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) perror("fleet_sim: setrlimit(RLIMIT_NOFILE)");
        printf("fleet_sim: RLIMIT_NOFILE soft %llu -> %llu (hard %llu)\n", (unsigned long long)before,
               (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max);
        if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)hosts_n + 64)
            printf("fleet_sim: !!! RLIMIT_NOFILE %llu is below %u hosts + 64: connections past it will fail with "
                   "EMFILE (raise the hard limit: ulimit -Hn, as root) !!!\n",
                   (unsigned long long)rl.rlim_cur, hosts_n);
    }

    conns = calloc(hosts_n, sizeof *conns);
    if (!conns) { perror("calloc"); return 3; }
    loop = uv_default_loop();
    uv_update_time(loop);
    t_start_ms = uv_now(loop);
    uv_timer_t slot_t, prog_t;
    uv_signal_t sterm, sint;
    uv_timer_init(loop, &slot_t);
    uv_timer_init(loop, &prog_t);
    uv_timer_start(&slot_t, on_slot, interval_ms / SLOTS ? interval_ms / SLOTS : 1, interval_ms / SLOTS ? interval_ms / SLOTS : 1);
    uv_timer_start(&prog_t, on_progress, 1000, 1000);
    uv_signal_init(loop, &sterm);
    uv_signal_init(loop, &sint);
    uv_signal_start(&sterm, on_signal, SIGTERM);
    uv_signal_start(&sint, on_signal, SIGINT);
    printf("fleet_sim: %u hosts %s-%u..%s-%u dialling %s:%d %s %s, at most %u connecting at once, "
           "a STATS sample every %u ms each, keepalive %u s\n",
           hosts_n, prefix, first, prefix, first + hosts_n - 1, addr_s, port,
           ca_file ? "over TLS 1.3 with certificate" : "in plaintext with key", ca_file ? cert_file : key_id, batch, interval_ms, keepalive_s);
    start_more();
    uv_run(loop, UV_RUN_DEFAULT);
    print_result();
    return errors ? 1 : 0;
}
