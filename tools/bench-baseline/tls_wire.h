/* tls_wire.h: TLS 1.3 as a dialler (docs/PROTOCOL.md section 3.1) for
 * fleet_sim.c and fleet_sub.c, driven from their libuv callbacks through two
 * OpenSSL memory BIOs per connection: the socket stays libuv's, ciphertext
 * read from it is written into the SSL's read BIO (tlsw_input, which
 * returns the plaintext), plaintext frames are encrypted into the write
 * BIO and drained into a buffer the caller writes to the socket
 * (tlsw_encrypt). Nothing blocks and no socket is OpenSSL's. The dialler
 * presents a client certificate and verifies that the acceptor's chains to
 * the CA and names the address dialled (a DNS name or an IP address).
 * Header-only (static inline), after fleet_wire.h (buf_t). */
#ifndef TLS_WIRE_H
#define TLS_WIRE_H

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "fleet_wire.h"

typedef struct {
    SSL *ssl;   /* NULL: no TLS on this connection */
    BIO *rbio;  /* ciphertext from the peer, owned by ssl */
    BIO *wbio;  /* ciphertext to the peer, owned by ssl */
} tlsw_t;

/* Writes OpenSSL's error queue (and a failed verification's reason) into err. */
static inline void tlsw_error(const tlsw_t *t, const char *what, char *err, size_t errlen) {
    unsigned long e = ERR_get_error();
    char es[256] = "";
    if (e) ERR_error_string_n(e, es, sizeof es);
    long v = t && t->ssl ? SSL_get_verify_result(t->ssl) : X509_V_OK;
    snprintf(err, errlen, "%s%s%s%s%s", what, es[0] ? ": " : "", es, v != X509_V_OK ? ": certificate verify: " : "",
             v != X509_V_OK ? X509_verify_cert_error_string(v) : "");
    ERR_clear_error();
}

/* A client context: TLS 1.3 only, the peer verified against ca_file, our
 * certificate (leaf first) and key. Exits on failure, naming `who`. */
static inline SSL_CTX *tlsw_client_ctx(const char *who, const char *ca_file, const char *cert_file, const char *key_file) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    char err[512];
    if (!ctx) { tlsw_error(NULL, "SSL_CTX_new", err, sizeof err); fprintf(stderr, "%s: %s\n", who, err); exit(3); }
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
        tlsw_error(NULL, ca_file, err, sizeof err); fprintf(stderr, "%s: CA %s\n", who, err); exit(2);
    }
    if (cert_file && SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        tlsw_error(NULL, cert_file, err, sizeof err); fprintf(stderr, "%s: certificate %s\n", who, err); exit(2);
    }
    if (key_file && SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        tlsw_error(NULL, key_file, err, sizeof err); fprintf(stderr, "%s: key %s\n", who, err); exit(2);
    }
    if (cert_file && key_file && SSL_CTX_check_private_key(ctx) != 1) {
        fprintf(stderr, "%s: %s does not match %s\n", who, key_file, cert_file); exit(2);
    }
    return ctx;
}

/* Moves the ciphertext OpenSSL produced into cout. */
static inline void tlsw_drain(tlsw_t *t, buf_t *cout) {
    size_t pending;
    while ((pending = BIO_ctrl_pending(t->wbio)) > 0) {
        char *p = buf_reserve(cout, pending);
        int n = BIO_read(t->wbio, p, (int)pending);
        if (n <= 0) break;
        cout->len += (size_t)n;
    }
}

/* Starts the handshake towards `host` (what was dialled: its certificate
 * must name it); the ClientHello lands in cout. 0, or -1 with err. */
static inline int tlsw_start(tlsw_t *t, SSL_CTX *ctx, const char *host, buf_t *cout, char *err, size_t errlen) {
    t->ssl = SSL_new(ctx);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->rbio || !t->wbio) { tlsw_error(t, "SSL_new", err, errlen); return -1; }
    BIO_set_mem_eof_return(t->rbio, -1); /* empty: "retry", not EOF */
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_connect_state(t->ssl);
    if (SSL_set1_host(t->ssl, host) != 1) { tlsw_error(t, "SSL_set1_host", err, errlen); return -1; }
    int r = SSL_do_handshake(t->ssl);
    if (r != 1 && SSL_get_error(t->ssl, r) != SSL_ERROR_WANT_READ) { tlsw_error(t, "TLS handshake", err, errlen); return -1; }
    tlsw_drain(t, cout);
    return 0;
}

/* n bytes of ciphertext from the socket: the plaintext they complete is
 * appended to plain, whatever OpenSSL answers (handshake, key update) to
 * cout. 1 when this completed the handshake, 0 otherwise, -1 with err on a
 * failed handshake, a bad record or the peer's close_notify. */
static inline int tlsw_input(tlsw_t *t, const char *p, size_t n, buf_t *plain, buf_t *cout, char *err, size_t errlen) {
    int ready = 0;
    if (n && BIO_write(t->rbio, p, (int)n) != (int)n) { tlsw_error(t, "BIO_write", err, errlen); return -1; }
    if (!SSL_is_init_finished(t->ssl)) {
        int r = SSL_do_handshake(t->ssl);
        if (r != 1) {
            int e = SSL_get_error(t->ssl, r);
            tlsw_drain(t, cout); /* an alert, if any */
            if (e == SSL_ERROR_WANT_READ) return 0;
            tlsw_error(t, "TLS handshake", err, errlen);
            return -1;
        }
        ready = 1;
    }
    for (;;) {
        char *q = buf_reserve(plain, 16384);
        size_t got = 0;
        int r = SSL_read_ex(t->ssl, q, plain->cap - plain->len, &got);
        if (r == 1) { plain->len += got; continue; }
        int e = SSL_get_error(t->ssl, r);
        tlsw_drain(t, cout);
        if (e == SSL_ERROR_WANT_READ) break;
        if (e == SSL_ERROR_ZERO_RETURN) { snprintf(err, errlen, "TLS close_notify from the peer"); return -1; }
        tlsw_error(t, "TLS read", err, errlen);
        return -1;
    }
    return ready;
}

/* Encrypts n bytes of plaintext (the handshake is done) into cout. 0 or -1. */
static inline int tlsw_encrypt(tlsw_t *t, const char *p, size_t n, buf_t *cout, char *err, size_t errlen) {
    while (n) {
        size_t w = 0;
        if (SSL_write_ex(t->ssl, p, n, &w) != 1) { tlsw_error(t, "TLS write", err, errlen); return -1; }
        p += w;
        n -= w;
    }
    tlsw_drain(t, cout);
    return 0;
}

/* Queues our close_notify into cout. */
static inline void tlsw_shutdown(tlsw_t *t, buf_t *cout) {
    if (!t->ssl || !SSL_is_init_finished(t->ssl)) return;
    SSL_shutdown(t->ssl);
    tlsw_drain(t, cout);
    ERR_clear_error();
}

static inline void tlsw_free(tlsw_t *t) {
    if (t->ssl) SSL_free(t->ssl); /* frees both BIOs */
    else { if (t->rbio) BIO_free(t->rbio); if (t->wbio) BIO_free(t->wbio); }
    t->ssl = NULL; t->rbio = t->wbio = NULL;
}

#endif
