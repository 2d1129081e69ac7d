/* See lm_openssl.h: OpenSSL through dlopen on first use. */
#define _GNU_SOURCE
#include "lm_openssl.h"

#include <dlfcn.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/opensslv.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

/* The soname of the libssl whose headers this is built with. */
#define LM_LIBSSL "libssl.so." OPENSSL_MSTR(OPENSSL_VERSION_MAJOR)

/* One pointer per function, set by load_once before `loaded`. */
#define X(ret, name, params, args) static ret(*p_##name) params;
#define V(name, params, args) static void(*p_##name) params;
#include "openssl_functions.h"
#undef X
#undef V

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char load_error[512];
static int loaded;  /* atomic: 1 once every p_ is set */

static void load_once(void) {
    /* RTLD_LOCAL: nothing else in the program sees OpenSSL's symbols, and
     * OpenSSL's calls among its own functions never reach the definitions
     * below (which are hidden anyway). */
    void *h = dlopen(LM_LIBSSL, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        snprintf(load_error, sizeof load_error, "cannot load OpenSSL (%s; Debian: apt-get install libssl3): %s",
                 LM_LIBSSL, dlerror());
        return;
    }
#define X(ret, name, params, args)                                                          \
    *(void **)(&p_##name) = dlsym(h, #name);                                                \
    if (p_##name == NULL) {                                                                 \
        snprintf(load_error, sizeof load_error, "%s (OpenSSL) has no %s", LM_LIBSSL, #name); \
        return;                                                                             \
    }
#define V(name, params, args) X(void, name, params, args)
#include "openssl_functions.h"
#undef X
#undef V
    __atomic_store_n(&loaded, 1, __ATOMIC_RELEASE);
}

int lm_openssl_load(char *err, size_t cap) {
    pthread_once(&once, load_once);
    if (__atomic_load_n(&loaded, __ATOMIC_ACQUIRE)) return 0;
    if (cap) snprintf(err, cap, "%s", load_error);
    return -1;
}

int lm_openssl_loaded(void) { return __atomic_load_n(&loaded, __ATOMIC_ACQUIRE); }

__attribute__((noinline)) static void need(const char *name) {
    pthread_once(&once, load_once);
    if (__atomic_load_n(&loaded, __ATOMIC_ACQUIRE)) return;
    fprintf(stderr, "lmctfy: %s needs OpenSSL: %s\n", name, load_error);
    abort();
}

/* The functions themselves, under OpenSSL's names: hidden, so that they
 * are not exported from the program (nor interpose OpenSSL's). */
#define X(ret, name, params, args)                                          \
    __attribute__((visibility("hidden"))) ret name params {                 \
        if (__builtin_expect(!__atomic_load_n(&loaded, __ATOMIC_ACQUIRE), 0)) \
            need(#name);                                                    \
        return p_##name args;                                               \
    }
#define V(name, params, args)                                               \
    __attribute__((visibility("hidden"))) void name params {                \
        if (__builtin_expect(!__atomic_load_n(&loaded, __ATOMIC_ACQUIRE), 0)) \
            need(#name);                                                    \
        p_##name args;                                                      \
    }
#include "openssl_functions.h"
#undef X
#undef V
