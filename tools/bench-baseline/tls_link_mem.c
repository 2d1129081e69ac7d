/* tls_link_mem: what OpenSSL itself keeps per idle server-side TLS link,
 * the floor under the controller's memory per TLS host (tools/run-bench
 * ONLY=fleet prints it next to the controller's RSS per host).
 *
 * The server side is set up as the controller's (Sources/LmctfyRPC/Tls.swift,
 * TlsContext server): TLS 1.3 only, SSL_MODE_RELEASE_BUFFERS, the CA as the
 * only trust and as the client CA list, a client certificate required and
 * verified, no session tickets; each link an SSL over two memory BIOs that
 * report "retry" when empty. A client per link (certificate K of
 * --client-cert's pattern for link I, K = (I / GROUP) % CERTS, so GROUP
 * links share one as fleet_sim's hosts do) does the full handshake through
 * the BIOs in this process and is freed; the server SSLs stay, each having
 * read its client's first (empty) application read. Heap in use is read
 * with mallinfo2 (glibc) before the server SSLs are made, after they are
 * made, and after the handshakes with the clients freed:
 *
 *   RESULT links=N fresh_bytes=B per_link_bytes=B
 *
 * fresh_bytes: an SSL and its BIOs before any handshake; per_link_bytes:
 * what each handshaked server link holds. A plain C server on OpenSSL pays
 * at least this per connection; the controller's other per-link memory
 * (session, buffers, host) is on top.
 *
 * usage: tls_link_mem --ca CA --cert CERT --key KEY --client-cert PATTERN
 *                     --client-key KEY [--certs K] [--group G] [--links N]
 * PATTERN has one %u (the certificate's number, 0..K-1). */
#include <malloc.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    SSL *ssl;
    BIO *in, *out; /* owned by ssl */
} Link;

static size_t heap_in_use(void) {
    struct mallinfo2 m = mallinfo2();
    return m.uordblks + m.hblkhd;
}

static void die(const char *what) {
    fprintf(stderr, "tls_link_mem: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static void link_new(SSL_CTX *ctx, Link *l, int server) {
    l->ssl = SSL_new(ctx);
    l->in = BIO_new(BIO_s_mem());
    l->out = BIO_new(BIO_s_mem());
    if (!l->ssl || !l->in || !l->out) die("SSL_new/BIO_new failed");
    BIO_set_mem_eof_return(l->in, -1);
    BIO_set_mem_eof_return(l->out, -1);
    SSL_set_bio(l->ssl, l->in, l->out);
    if (server) SSL_set_accept_state(l->ssl); else SSL_set_connect_state(l->ssl);
}

/* Moves what `from` wrote to `to`'s input. */
static void carry(Link *from, Link *to) {
    char buf[16384];
    int n;
    while ((n = BIO_read(from->out, buf, sizeof buf)) > 0)
        if (BIO_write(to->in, buf, n) != n) die("BIO_write failed");
}

int main(int argc, char **argv) {
    const char *ca = NULL, *cert = NULL, *key = NULL, *ccert = NULL, *ckey = NULL;
    unsigned certs = 1, group = 1, links = 1000;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *o = argv[i], *v = argv[i + 1];
        if (!strcmp(o, "--ca")) ca = v;
        else if (!strcmp(o, "--cert")) cert = v;
        else if (!strcmp(o, "--key")) key = v;
        else if (!strcmp(o, "--client-cert")) ccert = v;
        else if (!strcmp(o, "--client-key")) ckey = v;
        else if (!strcmp(o, "--certs")) certs = (unsigned)strtoul(v, NULL, 10);
        else if (!strcmp(o, "--group")) group = (unsigned)strtoul(v, NULL, 10);
        else if (!strcmp(o, "--links")) links = (unsigned)strtoul(v, NULL, 10);
        else { fprintf(stderr, "tls_link_mem: unknown option %s\n", o); return 2; }
    }
    if (!ca || !cert || !key || !ccert || !ckey || !certs || !group || !links || certs > 100000) {
        fprintf(stderr, "usage: tls_link_mem --ca CA --cert CERT --key KEY --client-cert PATTERN --client-key KEY"
                        " [--certs K] [--group G] [--links N]\n");
        return 2;
    }
    SSL_CTX *sc = SSL_CTX_new(TLS_server_method());
    if (!sc || SSL_CTX_set_min_proto_version(sc, TLS1_3_VERSION) != 1) die("server context");
    SSL_CTX_set_mode(sc, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(sc, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(sc, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_load_verify_locations(sc, ca, NULL) != 1) die("server certificate, key or CA");
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
    if (names) SSL_CTX_set_client_CA_list(sc, names);
    SSL_CTX_set_num_tickets(sc, 0);
    SSL_CTX_set_verify(sc, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);

    SSL_CTX **cc = calloc(certs, sizeof *cc);
    if (!cc) die("calloc");
    for (unsigned k = 0; k < certs; k++) {
        char path[4096];
        snprintf(path, sizeof path, ccert, k);
        cc[k] = SSL_CTX_new(TLS_client_method());
        if (!cc[k] || SSL_CTX_use_certificate_chain_file(cc[k], path) != 1 ||
            SSL_CTX_use_PrivateKey_file(cc[k], ckey, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_load_verify_locations(cc[k], ca, NULL) != 1) die(path);
        SSL_CTX_set_verify(cc[k], SSL_VERIFY_PEER, NULL);
    }
    Link *server = calloc(links, sizeof *server);
    if (!server) die("calloc");

    size_t before = heap_in_use();
    for (unsigned i = 0; i < links; i++) link_new(sc, &server[i], 1);
    size_t fresh = heap_in_use();
    for (unsigned i = 0; i < links; i++) {
        Link client;
        link_new(cc[(i / group) % certs], &client, 0);
        for (int round = 0; round < 8 && !(SSL_is_init_finished(server[i].ssl) && SSL_is_init_finished(client.ssl)); round++) {
            SSL_do_handshake(client.ssl);
            carry(&client, &server[i]);
            SSL_do_handshake(server[i].ssl);
            carry(&server[i], &client);
        }
        if (!SSL_is_init_finished(server[i].ssl) || SSL_get_verify_result(server[i].ssl) != X509_V_OK)
            die("handshake did not finish");
        char byte;
        if (SSL_read(server[i].ssl, &byte, 1) > 0) die("unexpected data");
        SSL_free(client.ssl);
    }
    size_t done = heap_in_use();
    printf("RESULT links=%u fresh_bytes=%zu per_link_bytes=%zu\n", links, (fresh - before) / links,
           (done - before) / links);
    for (unsigned i = 0; i < links; i++) SSL_free(server[i].ssl);
    for (unsigned k = 0; k < certs; k++) SSL_CTX_free(cc[k]);
    SSL_CTX_free(sc);
    free(server);
    free(cc);
    return 0;
}
