/* Baseline for what `lmctl info` over TLS costs as a whole process
 * (tools/bench-tls): a C client doing the same work, with OpenSSL linked
 * the usual way. One dial: OpenSSL's start, a client context set up as
 * lmctfy's TlsContext sets one up (TLS 1.3 only, SSL_MODE_RELEASE_BUFFERS,
 * our certificate chain and key from PEM files, the key checked against
 * it, the CA file, the peer verified and its name checked), a TCP connect,
 * the TLS handshake with the client certificate, our hello (versions 1-2,
 * PROTOCOL.md section 2), one MachineInfo call and its answer, a GOAWAY,
 * close_notify and the close. Blocking sockets: one call needs nothing
 * else.
 *
 *   tls_dial [--phases] PORT PKI_DIR
 *       one dial to 127.0.0.1:PORT with PKI_DIR/{admin.pem,admin.key,ca.pem};
 *       --phases prints each step's milliseconds
 *   tls_dial --compare ROUNDS PORT PKI_DIR LMCTL UNIX_SOCKET
 *       whole processes (posix_spawn to waitpid), alternating, the order
 *       rotated each round: this program's dial, `LMCTL --agent tcp://...
 *       --cert --key --ca info`, and `LMCTL --agent unix://UNIX_SOCKET
 *       info`; prints each one's median and 10th-90th percentiles, and
 *       lmctl's TLS cost over its Unix socket call next to this dial's. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include "fleet_wire.h"
#include "spawn_timer.h"

static int phases;
static double t_last;

static void phase(const char *name) {
    double t = now_us();
    if (phases) printf("  %-26s %7.3f ms\n", name, (t - t_last) / 1e3);
    t_last = t;
}

static void die_ssl(const char *what) {
    fprintf(stderr, "tls_dial: %s: ", what);
    ERR_print_errors_fp(stderr);
    fprintf(stderr, "\n");
    exit(1);
}

static void ssl_write_all(SSL *s, const char *p, size_t n) {
    size_t w;
    if (SSL_write_ex(s, p, n, &w) != 1 || w != n) die_ssl("SSL_write");
}

/* Reads one frame (length prefix, then the body) into f, unpacked in the arena. */
static Frame *read_frame(SSL *s, buf_t *in) {
    for (;;) {
        if (in->len >= 4) {
            uint32_t n = get_be32(in->p);
            if (n > (4u << 20)) { fprintf(stderr, "tls_dial: frame of %u bytes\n", n); exit(1); }
            if (in->len >= 4 + (size_t)n) {
                arena_reset();
                Frame *f = containers__lmctfy__agent__frame__unpack(&arena_allocator, n, (const uint8_t *)in->p + 4);
                if (!f) { fprintf(stderr, "tls_dial: a frame does not decode\n"); exit(1); }
                memmove(in->p, in->p + 4 + n, in->len - 4 - n);
                in->len -= 4 + n;
                return f;
            }
        }
        char *o = buf_reserve(in, 16384);
        size_t got;
        if (SSL_read_ex(s, o, 16384, &got) != 1) die_ssl("SSL_read (the agent closed the connection?)");
        in->len += got;
    }
}

static int dial(int port, const char *pki) {
    char cert[4096], key[4096], ca[4096];
    snprintf(cert, sizeof cert, "%s/admin.pem", pki);
    snprintf(key, sizeof key, "%s/admin.key", pki);
    snprintf(ca, sizeof ca, "%s/ca.pem", pki);
    double t0 = now_us();
    t_last = t0;
    if (OPENSSL_init_ssl(0, NULL) != 1) die_ssl("OPENSSL_init_ssl");
    phase("OpenSSL start");
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) die_ssl("SSL_CTX_new");
    phase("SSL_CTX_new");
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1) die_ssl("TLS 1.3");
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) die_ssl(cert);
    phase("certificate chain (PEM)");
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) die_ssl(key);
    if (SSL_CTX_check_private_key(ctx) != 1) die_ssl("the key does not match the certificate");
    phase("private key (PEM)");
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) die_ssl(ca);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    phase("CA file");

    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("tls_dial: connect"); exit(1); }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    phase("TCP connect");
    SSL *s = SSL_new(ctx);
    if (!s || SSL_set_fd(s, fd) != 1) die_ssl("SSL_new");
    SSL_set_tlsext_host_name(s, "127.0.0.1");
    if (SSL_set1_host(s, "127.0.0.1") != 1) die_ssl("SSL_set1_host");
    if (SSL_connect(s) != 1) die_ssl("the TLS handshake");
    phase("TLS handshake");

    buf_t out = {0}, in = {0};
    Hello h = CONTAINERS__LMCTFY__AGENT__HELLO__INIT;
    h.has_stage = 1; h.stage = S(OFFER);
    h.has_min_version = 1; h.min_version = 1;
    h.has_max_version = 1; h.max_version = 2;
    h.peer_name = (char *)"tls_dial";
    h.has_max_frame_bytes = 1; h.max_frame_bytes = 4u << 20;
    h.has_max_streams = 1; h.max_streams = 128;
    append_hello(&out, &h);
    ssl_write_all(s, out.p, out.len);
    out.len = 0;
    Frame *f = read_frame(s, &in);
    if (f->kind != K(HELLO) || !f->hello || f->hello->stage != S(ACCEPTED)) {
        fprintf(stderr, "tls_dial: the agent did not accept the hello\n");
        exit(1);
    }
    phase("our hello");

    Frame req = CONTAINERS__LMCTFY__AGENT__FRAME__INIT;
    req.has_kind = 1; req.kind = K(REQUEST);
    req.has_stream_id = 1; req.stream_id = 1;
    req.method = (char *)"MachineInfo";
    req.has_payload = 1; req.payload.len = 0; req.payload.data = NULL;
    append_frame(&out, &req);
    ssl_write_all(s, out.p, out.len);
    out.len = 0;
    size_t answer = 0;
    for (;;) {
        f = read_frame(s, &in);
        if (f->stream_id != 1) continue;
        if (f->kind == K(RESPONSE) && f->has_payload) answer += f->payload.len;
        if (f->kind == K(STATUS) || f->status) {
            if (!f->status || (f->status->has_code && f->status->code != 0)) {
                fprintf(stderr, "tls_dial: MachineInfo failed: %s\n", f->status && f->status->message ? f->status->message : "?");
                exit(1);
            }
            break;
        }
    }
    if (answer == 0) { fprintf(stderr, "tls_dial: MachineInfo answered nothing\n"); exit(1); }
    phase("MachineInfo call");

    append_goaway(&out);
    ssl_write_all(s, out.p, out.len);
    SSL_shutdown(s);
    close(fd);
    phase("goaway, close_notify, close");
    if (phases) printf("  %-26s %7.3f ms (%zu bytes of MachineInfo)\n", "in all", (now_us() - t0) / 1e3, answer);
    SSL_free(s);
    SSL_CTX_free(ctx);
    buf_free(&out);
    buf_free(&in);
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static int compare(int rounds, const char *port, const char *pki, const char *lmctl, const char *sock) {
    char self[4096], agent_tcp[256], agent_unix[4200], cert[4096], key[4096], ca[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) { perror("tls_dial: /proc/self/exe"); return 1; }
    self[n] = 0;
    snprintf(agent_tcp, sizeof agent_tcp, "tcp://127.0.0.1:%s", port);
    snprintf(agent_unix, sizeof agent_unix, "unix://%s", sock);
    snprintf(cert, sizeof cert, "%s/admin.pem", pki);
    snprintf(key, sizeof key, "%s/admin.key", pki);
    snprintf(ca, sizeof ca, "%s/ca.pem", pki);
    char *argv[3][12] = {
        {self, (char *)port, (char *)pki, NULL},
        {(char *)lmctl, (char *)"--agent", agent_tcp, (char *)"--cert", cert, (char *)"--key", key, (char *)"--ca", ca, (char *)"info", NULL},
        {(char *)lmctl, (char *)"--agent", agent_unix, (char *)"info", NULL},
    };
    const char *label[3] = {"C client, TLS (this program)", "lmctl info, TLS", "lmctl info, Unix socket"};
    double *t[3];
    for (int v = 0; v < 3; v++) t[v] = calloc((size_t)rounds, sizeof(double));
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    for (int w = 0; w < 5; w++) for (int v = 0; v < 3; v++) time_process("tls_dial", argv[v], &stop);
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < 3; k++) {
            int v = (r + k) % 3;
            t[v][r] = time_process("tls_dial", argv[v], &stop);
        }
    double med[3];
    for (int v = 0; v < 3; v++) {
        qsort(t[v], (size_t)rounds, sizeof(double), cmp_double);
        med[v] = t[v][rounds / 2];
        printf("  %-30s median %.2f ms (%.2f-%.2f)\n", label[v], med[v] / 1e3, t[v][rounds / 10] / 1e3, t[v][rounds * 9 / 10] / 1e3);
    }
    printf("  lmctl's TLS over its Unix socket call: +%.2f ms; the C client's whole TLS call: %.2f ms; ratio %.2f\n",
           (med[1] - med[2]) / 1e3, med[0] / 1e3, (med[1] - med[2]) / med[0]);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 7 && !strcmp(argv[1], "--compare")) return compare(atoi(argv[2]), argv[3], argv[4], argv[5], argv[6]);
    int a = 1;
    if (argc > 1 && !strcmp(argv[1], "--phases")) { phases = 1; a = 2; }
    if (argc - a != 2) {
        fprintf(stderr, "usage: tls_dial [--phases] PORT PKI_DIR\n"
                        "       tls_dial --compare ROUNDS PORT PKI_DIR LMCTL UNIX_SOCKET\n");
        return 2;
    }
    return dial(atoi(argv[a]), argv[a + 1]);
}
