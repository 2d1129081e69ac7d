/* Debian's OpenSSL 3 (libssl-dev): HMAC-SHA256, constant-time comparison and
 * the CSPRNG for the RPC handshake (libcrypto), and TLS 1.3 over memory BIOs
 * for every TCP link (libssl; Sources/LmctfyRPC/Tls.swift). Only what
 * LmctfyRPC uses. The lm_ functions below wrap what Swift cannot import:
 * macros (SSL_CTX_set_min_proto_version, BIO_set_mem_eof_return, the
 * sk_GENERAL_NAME_* stack macros) and walks over ASN.1 structures that are
 * simpler in C than through Swift's pointer types. */
#ifndef LM_COPENSSL_SHIM_H
#define LM_COPENSSL_SHIM_H
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* SSL_CTX_set_min_proto_version is a macro over SSL_CTX_ctrl. */
static inline int lm_ssl_ctx_require_tls13(SSL_CTX *ctx) {
    return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
}

/* An empty memory BIO reports "retry" rather than EOF (the default is EOF),
 * so SSL_read on it says SSL_ERROR_WANT_READ: more bytes will be fed. */
static inline void lm_bio_mem_retry_when_empty(BIO *bio) {
    BIO_set_mem_eof_return(bio, -1);
}

/* SSL_set_tlsext_host_name is a macro over SSL_ctrl (SNI). */
static inline int lm_ssl_set_sni(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

/* The subjectAltName entries of `cert` of GEN_DNS (type 0) or GEN_URI
 * (type 1): the `index`th one copied NUL-terminated into `out` (at most
 * `cap` bytes with the NUL). Returns its length, -1 past the last one, -2
 * when it does not fit or holds a NUL (a forged name must not be cut short). */
static inline int lm_x509_san(X509 *cert, int type, int index, char *out, size_t cap) {
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (names == NULL) return -1;
    int want = type == 0 ? GEN_DNS : GEN_URI;
    int seen = 0, result = -1;
    for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
        GENERAL_NAME *name = sk_GENERAL_NAME_value(names, i);
        if (name->type != want) continue;
        if (seen++ != index) continue;
        ASN1_IA5STRING *s = want == GEN_DNS ? name->d.dNSName : name->d.uniformResourceIdentifier;
        int n = ASN1_STRING_length(s);
        const unsigned char *data = ASN1_STRING_get0_data(s);
        if (n < 0 || (size_t)n + 1 > cap || memchr(data, 0, (size_t)n) != NULL) { result = -2; break; }
        memcpy(out, data, (size_t)n);
        out[n] = 0;
        result = n;
        break;
    }
    GENERAL_NAMES_free(names);
    return result;
}

/* The `index`th subject entry of `nid` (NID_commonName, NID_organizationalUnitName)
 * as UTF-8 into `out`; returns as lm_x509_san. */
static inline int lm_x509_subject_entry(X509 *cert, int nid, int index, char *out, size_t cap) {
    X509_NAME *subject = X509_get_subject_name(cert);
    int pos = -1;
    for (int i = 0; i <= index; i++) {
        pos = X509_NAME_get_index_by_NID(subject, nid, pos);
        if (pos < 0) return -1;
    }
    ASN1_STRING *value = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, pos));
    unsigned char *utf8 = NULL;
    int n = ASN1_STRING_to_UTF8(&utf8, value);
    if (n < 0) return -2;
    int result = n;
    if ((size_t)n + 1 > cap || memchr(utf8, 0, (size_t)n) != NULL) {
        result = -2;
    } else {
        memcpy(out, utf8, (size_t)n);
        out[n] = 0;
    }
    OPENSSL_free(utf8);
    return result;
}

/* Loads every CRL of the PEM file `path` into `ctx`'s store and turns on
 * revocation checking of the peer's (leaf) certificate (X509_V_FLAG_CRL_CHECK:
 * a peer whose issuer has no CRL loaded then fails too). Returns how many
 * CRLs were loaded, 0 or less on failure (an OpenSSL error is queued). */
static inline int lm_ssl_ctx_load_crl(SSL_CTX *ctx, const char *path) {
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    X509_LOOKUP *lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
    if (lookup == NULL) return -1;
    int n = X509_load_crl_file(lookup, path, X509_FILETYPE_PEM);
    if (n <= 0) return n;
    X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
    return n;
}

/* Verifies again, against `ctx`'s store (its CA, its CRLs and flags) and at
 * `at` (seconds since the epoch; 0: now), the certificate the peer of `ssl`
 * presented in its handshake. Returns 1 when it still verifies, 0 when it no
 * longer does (the reason into `out`), -1 when there is no peer
 * certificate. */
static inline int lm_ssl_recheck_peer(SSL *ssl, SSL_CTX *ctx, long long at, char *out, size_t cap) {
    if (cap) out[0] = 0;
    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (cert == NULL) return -1;
    X509_STORE_CTX *v = X509_STORE_CTX_new();
    if (v == NULL) { if (cap) snprintf(out, cap, "X509_STORE_CTX_new failed"); return 0; }
    int ok = 0;
    if (X509_STORE_CTX_init(v, SSL_CTX_get_cert_store(ctx), cert, SSL_get_peer_cert_chain(ssl)) == 1) {
        if (at > 0) X509_STORE_CTX_set_time(v, 0, (time_t)at);
        ok = X509_verify_cert(v) == 1;
        if (!ok && cap) snprintf(out, cap, "%s", X509_verify_cert_error_string(X509_STORE_CTX_get_error(v)));
    } else if (cap) {
        snprintf(out, cap, "X509_STORE_CTX_init failed");
    }
    X509_STORE_CTX_free(v);
    return ok;
}

/* The oldest error on this thread's OpenSSL error queue as text (empty when
 * there is none); the queue is cleared. */
static inline void lm_ssl_take_error(char *out, size_t cap) {
    unsigned long e = ERR_get_error();
    if (e == 0) { if (cap) out[0] = 0; } else { ERR_error_string_n(e, out, cap); }
    ERR_clear_error();
}
#endif
