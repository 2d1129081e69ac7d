/* OpenSSL (Debian libssl3) loaded on first use rather than when a program
 * starts. Linked directly, libssl and libcrypto cost every process about
 * 0.6 ms of start-up (the dynamic loader's ~4,000 symbol relocations of
 * theirs), paid by each `lmctl` call although only its TCP links (the HMAC
 * hello, TLS) use them. Instead this target defines every OpenSSL function
 * lmctfy calls (openssl_functions.h) under its own name, hidden in the
 * program that links it; the first call dlopens libssl.so.<major> (which
 * brings libcrypto) once, thread-safely, and each function then calls the
 * library's. Types, macros and declarations still come from OpenSSL's own
 * headers (COpenSSL). */
#ifndef LM_OPENSSL_H
#define LM_OPENSSL_H

#include <stddef.h>

/* Loads OpenSSL now: 0, or -1 with the reason in `err` (cap bytes). The
 * functions load it themselves on first use and abort() the program with
 * the reason on standard error when it cannot be loaded; call this first
 * where that must be an error instead. */
int lm_openssl_load(char *err, size_t cap);

/* 1 once OpenSSL is loaded in this process, else 0 (for tests). */
int lm_openssl_loaded(void);

#endif
