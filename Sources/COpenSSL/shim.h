/* Debian's OpenSSL 3 (libssl-dev): HMAC-SHA256, constant-time comparison and
 * the CSPRNG for the RPC handshake (libcrypto), and TLS 1.3 over memory BIOs
 * for every TCP link (libssl; Sources/LmctfyRPC/Tls.swift). Only what
 * LmctfyRPC uses. The lm_ functions below wrap what Swift cannot import:
 * macros (SSL_CTX_set_min_proto_version, BIO_set_mem_eof_return, the
 * sk_GENERAL_NAME_* stack macros) and walks over ASN.1 structures that are
 * simpler in C than through Swift's pointer types. Nothing is linked for
 * this module: every OpenSSL function called here or from Swift is defined
 * by CLmctfyOpenSSL (its openssl_functions.h lists them), which loads
 * libssl on first use. */
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
#include <openssl/pem.h>
#include <openssl/bn.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* SSL_CTX_set_min_proto_version is a macro over SSL_CTX_ctrl. */
static inline int lm_ssl_ctx_require_tls13(SSL_CTX *ctx) {
    return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
}

/* Frees a connection's record buffers (about 17 KB each way) while it has
 * nothing buffered: a controller holds thousands of mostly idle links. */
static inline void lm_ssl_ctx_release_buffers(SSL_CTX *ctx) {
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
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

/* After a CRL is loaded: verifies `ctx`'s own certificate against its store
 * (its CA, the CRLs, CRL checking on) now. Returns 1 when that fails for a
 * reason of the CRLs (none of its issuer, a bad signature, not yet valid or
 * past its nextUpdate, a broken date, the certificate itself revoked), the
 * reason into `out`; 0 otherwise, including when it cannot tell (no own
 * certificate, or one that does not chain to this CA). */
static inline int lm_ssl_ctx_crl_problem(SSL_CTX *ctx, char *out, size_t cap) {
    if (cap) out[0] = 0;
    X509 *cert = SSL_CTX_get0_certificate(ctx);
    if (cert == NULL) return 0;
    X509_STORE_CTX *v = X509_STORE_CTX_new();
    if (v == NULL) return 0;
    int problem = 0;
    if (X509_STORE_CTX_init(v, SSL_CTX_get_cert_store(ctx), cert, NULL) == 1 && X509_verify_cert(v) != 1) {
        int e = X509_STORE_CTX_get_error(v);
        switch (e) {
        case X509_V_ERR_UNABLE_TO_GET_CRL: case X509_V_ERR_UNABLE_TO_DECRYPT_CRL_SIGNATURE:
        case X509_V_ERR_CRL_SIGNATURE_FAILURE: case X509_V_ERR_CRL_NOT_YET_VALID: case X509_V_ERR_CRL_HAS_EXPIRED:
        case X509_V_ERR_ERROR_IN_CRL_LAST_UPDATE_FIELD: case X509_V_ERR_ERROR_IN_CRL_NEXT_UPDATE_FIELD:
        case X509_V_ERR_CERT_REVOKED: case X509_V_ERR_UNABLE_TO_GET_CRL_ISSUER:
            problem = 1;
            if (cap) snprintf(out, cap, "%s", X509_verify_cert_error_string(e));
            break;
        default:
            break;
        }
    }
    X509_STORE_CTX_free(v);
    return problem;
}

/* `cert` (with `chain`, untrusted) verified against `ctx`'s store at `at`
 * (0: now): 1, or 0 with the reason into `out`. */
static inline int lm_verify_in_store(SSL_CTX *ctx, X509 *cert, STACK_OF(X509) *chain, long long at, char *out, size_t cap) {
    X509_STORE_CTX *v = X509_STORE_CTX_new();
    if (v == NULL) { if (cap) snprintf(out, cap, "X509_STORE_CTX_new failed"); return 0; }
    int ok = 0;
    if (X509_STORE_CTX_init(v, SSL_CTX_get_cert_store(ctx), cert, chain) == 1) {
        if (at > 0) X509_STORE_CTX_set_time(v, 0, (time_t)at);
        ok = X509_verify_cert(v) == 1;
        if (!ok && cap) snprintf(out, cap, "%s", X509_verify_cert_error_string(X509_STORE_CTX_get_error(v)));
    } else if (cap) {
        snprintf(out, cap, "X509_STORE_CTX_init failed");
    }
    X509_STORE_CTX_free(v);
    return ok;
}

/* Verifies `ctx`'s own certificate against its store (its CA file), with
 * the chain loaded beside it as untrusted intermediates. Returns 1 when it
 * verifies, 0 when it does not (the reason into `out`), -1 when there is
 * no own certificate. (An enrolled or renewed certificate that did not
 * chain to the CA file was installed: a controller signing with another CA
 * left an agent whose every dial home failed; the TLS probe.) */
static inline int lm_ssl_ctx_verify_own(SSL_CTX *ctx, char *out, size_t cap) {
    if (cap) out[0] = 0;
    X509 *cert = SSL_CTX_get0_certificate(ctx);
    if (cert == NULL) return -1;
    STACK_OF(X509) *chain = NULL;
    SSL_CTX_get0_chain_certs(ctx, &chain);
    return lm_verify_in_store(ctx, cert, chain, 0, out, cap);
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
    return lm_verify_in_store(ctx, cert, SSL_get_peer_cert_chain(ssl), at, out, cap);
}

/* The notAfter of the peer's certificate of `ssl` as seconds since the
 * epoch into *out: 1, or 0 when there is no peer certificate or the time
 * does not convert. */
static inline int lm_ssl_peer_not_after(SSL *ssl, long long *out) {
    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (cert == NULL) return 0;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) != 1) return 0;
    *out = (long long)timegm(&tm);
    return 1;
}

/* A certificate's serial as upper-case hex into out (cap bytes,
 * NUL-terminated): 1, or 0. */
static inline int lm_x509_serial_hex(X509 *cert, char *out, size_t cap) {
    if (cert == NULL || cap == 0) return 0;
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    int ok = hex != NULL && strlen(hex) + 1 <= cap;
    if (ok) memcpy(out, hex, strlen(hex) + 1);
    OPENSSL_free(hex);
    BN_free(bn);
    return ok;
}

/* The serial (hex) of the peer's certificate of `ssl`: 1, or 0. */
static inline int lm_ssl_peer_serial(SSL *ssl, char *out, size_t cap) {
    return lm_x509_serial_hex(SSL_get0_peer_certificate(ssl), out, cap);
}

/* The first certificate of the PEM file `path`: its notBefore and notAfter
 * (seconds since the epoch) and its serial (hex, into serial_out). 1, or 0
 * when the file does not hold a certificate. */
static inline int lm_cert_file_info(const char *path, long long *not_before, long long *not_after,
                                    char *serial_out, size_t cap) {
    BIO *f = BIO_new_file(path, "r");
    X509 *cert = f ? PEM_read_bio_X509(f, NULL, NULL, NULL) : NULL;
    int ok = 0;
    struct tm a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    if (cert != NULL && ASN1_TIME_to_tm(X509_get0_notBefore(cert), &a) == 1
        && ASN1_TIME_to_tm(X509_get0_notAfter(cert), &b) == 1 && lm_x509_serial_hex(cert, serial_out, cap) == 1) {
        *not_before = (long long)timegm(&a);
        *not_after = (long long)timegm(&b);
        ok = 1;
    }
    X509_free(cert);
    BIO_free(f);
    return ok;
}

/* The first certificate of the PEM file `path` (X509_free it), or NULL. */
static inline X509 *lm_cert_file_x509(const char *path) {
    BIO *f = BIO_new_file(path, "r");
    X509 *cert = f ? PEM_read_bio_X509(f, NULL, NULL, NULL) : NULL;
    BIO_free(f);
    return cert;
}

/* Enrolment (PROTOCOL.md section 3.2). A host name fit for a subjectAltName
 * DNS entry and a subject CN: letters, digits, '-' and '.', 1 to 253. */
static inline int lm_is_dns_name(const char *host) {
    size_t n = strlen(host);
    if (n == 0 || n > 253) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = host[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) return 0;
    }
    return 1;
}

/* Copies a memory BIO's contents into out (cap bytes, NUL-terminated);
 * returns the length, or -1 when it does not fit. */
static inline int lm_bio_take(BIO *bio, char *out, size_t cap) {
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    if (n < 0 || (size_t)n + 1 > cap) return -1;
    memcpy(out, data, (size_t)n);
    out[n] = 0;
    return (int)n;
}

/* A new EC P-256 key (PEM, PKCS#8, into key_out) and a certificate request
 * (PEM PKCS#10, into csr_out) signed by it for CN=host with the only
 * subjectAltName DNS:host. Returns 1, or 0 (an OpenSSL error queued, or a
 * buffer too small). */
static inline int lm_make_key_and_csr(const char *host, char *key_out, size_t key_cap, char *csr_out, size_t csr_cap) {
    if (!lm_is_dns_name(host)) return 0;
    int ok = 0;
    /* Not EVP_EC_gen: a variadic function, which the lazy loader
     * (CLmctfyOpenSSL) cannot forward. */
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *kctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (kctx != NULL && EVP_PKEY_keygen_init(kctx) == 1 && EVP_PKEY_CTX_set_group_name(kctx, "P-256") == 1)
        (void)EVP_PKEY_generate(kctx, &pkey);
    EVP_PKEY_CTX_free(kctx);
    X509_REQ *req = X509_REQ_new();
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    BIO *kb = BIO_new(BIO_s_mem()), *cb = BIO_new(BIO_s_mem());
    char san[300];
    snprintf(san, sizeof san, "DNS:%s", host);
    X509_EXTENSION *ext = NULL;
    if (pkey == NULL || req == NULL || exts == NULL || kb == NULL || cb == NULL) goto done;
    X509_NAME *name = X509_REQ_get_subject_name(req);
    if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)host, -1, -1, 0) != 1) goto done;
    ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
    if (ext == NULL || sk_X509_EXTENSION_push(exts, ext) <= 0) goto done;
    ext = NULL;  /* the stack owns it */
    if (X509_REQ_add_extensions(req, exts) != 1) goto done;
    if (X509_REQ_set_pubkey(req, pkey) != 1) goto done;
    if (X509_REQ_sign(req, pkey, EVP_sha256()) <= 0) goto done;
    if (PEM_write_bio_PrivateKey(kb, pkey, NULL, NULL, 0, NULL, NULL) != 1) goto done;
    if (PEM_write_bio_X509_REQ(cb, req) != 1) goto done;
    if (lm_bio_take(kb, key_out, key_cap) < 0 || lm_bio_take(cb, csr_out, csr_cap) < 0) goto done;
    ok = 1;
done:
    X509_EXTENSION_free(ext);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    BIO_free(kb);
    BIO_free(cb);
    X509_REQ_free(req);
    EVP_PKEY_free(pkey);
    return ok;
}

/* Signs the certificate request `csr` (PEM, csr_len bytes) with the CA of
 * ca_cert_file / ca_key_file (PEM) for `host`, valid `days` days from five
 * minutes ago: a random 128-bit serial, subject CN=host OU=agents,
 * subjectAltName DNS:host, CA:FALSE, digitalSignature, serverAuth and
 * clientAuth. The request must be signed by its own key and name exactly
 * DNS:host as its only subjectAltName. Writes the certificate then the CA's
 * (PEM) into out and returns their length; -1 for a bad request or CA (the
 * reason into err), -2 when the request names another host. */
static inline int lm_sign_csr(const char *csr, size_t csr_len, const char *ca_cert_file, const char *ca_key_file,
                              const char *host, int days, char *out, size_t cap, char *err, size_t err_cap) {
    int result = -1;
    X509_REQ *req = NULL;
    X509 *ca = NULL, *cert = NULL;
    EVP_PKEY *ca_key = NULL;
    GENERAL_NAMES *names = NULL;
    STACK_OF(X509_EXTENSION) *req_exts = NULL;
    BIGNUM *serial = NULL;
    BIO *in = BIO_new_mem_buf(csr, (int)csr_len), *ob = BIO_new(BIO_s_mem());
    BIO *cf = NULL, *kf = NULL;
    if (err_cap) err[0] = 0;
    if (!lm_is_dns_name(host)) { snprintf(err, err_cap, "host name is not a DNS name"); goto done; }
    if (in == NULL || ob == NULL) { snprintf(err, err_cap, "out of memory"); goto done; }
    req = PEM_read_bio_X509_REQ(in, NULL, NULL, NULL);
    if (req == NULL) { snprintf(err, err_cap, "not a PEM certificate request"); goto done; }
    EVP_PKEY *pub = X509_REQ_get0_pubkey(req);
    if (pub == NULL || X509_REQ_verify(req, pub) != 1) { snprintf(err, err_cap, "the request's signature does not verify"); goto done; }
    req_exts = X509_REQ_get_extensions(req);
    names = req_exts ? X509V3_get_d2i(req_exts, NID_subject_alt_name, NULL, NULL) : NULL;
    if (names == NULL || sk_GENERAL_NAME_num(names) != 1 || sk_GENERAL_NAME_value(names, 0)->type != GEN_DNS) {
        snprintf(err, err_cap, "the request must name exactly one subjectAltName, DNS:%s", host);
        result = -2;
        goto done;
    }
    ASN1_IA5STRING *dns = sk_GENERAL_NAME_value(names, 0)->d.dNSName;
    if ((size_t)ASN1_STRING_length(dns) != strlen(host) || memcmp(ASN1_STRING_get0_data(dns), host, strlen(host)) != 0) {
        snprintf(err, err_cap, "the request is for another host than %s", host);
        result = -2;
        goto done;
    }
    cf = BIO_new_file(ca_cert_file, "r");
    ca = cf ? PEM_read_bio_X509(cf, NULL, NULL, NULL) : NULL;
    kf = BIO_new_file(ca_key_file, "r");
    ca_key = kf ? PEM_read_bio_PrivateKey(kf, NULL, NULL, NULL) : NULL;
    if (ca == NULL || ca_key == NULL || X509_check_private_key(ca, ca_key) != 1) {
        snprintf(err, err_cap, "cannot load the signing CA (%s, %s)", ca_cert_file, ca_key_file);
        goto done;
    }
    cert = X509_new();
    unsigned char bytes[16];
    if (cert == NULL || RAND_bytes(bytes, sizeof bytes) != 1) { snprintf(err, err_cap, "out of memory or randomness"); goto done; }
    bytes[0] &= 0x7f;  /* positive */
    serial = BN_bin2bn(bytes, sizeof bytes, NULL);
    X509_NAME *subject = X509_NAME_new();
    int built = serial != NULL && subject != NULL
        && X509_set_version(cert, 2) == 1
        && BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(cert)) != NULL
        && X509_set_issuer_name(cert, X509_get_subject_name(ca)) == 1
        && X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8, (const unsigned char *)host, -1, -1, 0) == 1
        && X509_NAME_add_entry_by_txt(subject, "OU", MBSTRING_UTF8, (const unsigned char *)"agents", -1, -1, 0) == 1
        && X509_set_subject_name(cert, subject) == 1
        && X509_gmtime_adj(X509_getm_notBefore(cert), -300) != NULL
        && X509_gmtime_adj(X509_getm_notAfter(cert), (long)days * 86400L) != NULL
        && X509_set_pubkey(cert, pub) == 1;
    X509_NAME_free(subject);
    if (!built) { snprintf(err, err_cap, "building the certificate failed"); goto done; }
    char san[300];
    snprintf(san, sizeof san, "DNS:%s", host);
    const struct { int nid; const char *value; } exts[] = {
        { NID_basic_constraints, "critical,CA:FALSE" },
        { NID_key_usage, "critical,digitalSignature" },
        { NID_ext_key_usage, "serverAuth,clientAuth" },
        { NID_subject_alt_name, san },
        { NID_subject_key_identifier, "hash" },
        { NID_authority_key_identifier, "keyid:always" },
    };
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, ca, cert, NULL, NULL, 0);
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++) {
        X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, exts[i].nid, exts[i].value);
        int added = e != NULL && X509_add_ext(cert, e, -1) == 1;
        X509_EXTENSION_free(e);
        if (!added) { snprintf(err, err_cap, "adding an extension failed"); goto done; }
    }
    if (X509_sign(cert, ca_key, EVP_sha256()) <= 0) { snprintf(err, err_cap, "signing failed"); goto done; }
    if (PEM_write_bio_X509(ob, cert) != 1 || PEM_write_bio_X509(ob, ca) != 1) { snprintf(err, err_cap, "writing failed"); goto done; }
    result = lm_bio_take(ob, out, cap);
    if (result < 0) snprintf(err, err_cap, "the certificate does not fit");
done:
    BN_free(serial);
    GENERAL_NAMES_free(names);
    sk_X509_EXTENSION_pop_free(req_exts, X509_EXTENSION_free);
    X509_free(cert);
    X509_free(ca);
    EVP_PKEY_free(ca_key);
    X509_REQ_free(req);
    BIO_free(in);
    BIO_free(ob);
    BIO_free(cf);
    BIO_free(kf);
    return result;
}

/* The oldest error on this thread's OpenSSL error queue as text (empty when
 * there is none); the queue is cleared. */
static inline void lm_ssl_take_error(char *out, size_t cap) {
    unsigned long e = ERR_get_error();
    if (e == 0) { if (cap) out[0] = 0; } else { ERR_error_string_n(e, out, cap); }
    ERR_clear_error();
}
#endif
