/* See lm_archive.h: libarchive through dlopen, so that only the programs
 * and calls that use the image store load it. */
#define _GNU_SOURCE
#include "lm_archive.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One pointer per function, filled by load_once. */
#define X(ret, name, params, args) static ret (*p_##name) params;
#include "archive_functions.h"
#undef X

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char load_error[256];
static int loaded;

static void load_once(void) {
    void *h = dlopen("libarchive.so.13", RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        snprintf(load_error, sizeof load_error, "cannot load libarchive (install libarchive13): %s", dlerror());
        return;
    }
#define X(ret, name, params, args)                                                            \
    *(void **)(&p_##name) = dlsym(h, #name);                                                  \
    if (p_##name == NULL) {                                                                   \
        snprintf(load_error, sizeof load_error, "libarchive.so.13 has no %s", #name);         \
        return;                                                                               \
    }
#include "archive_functions.h"
#undef X
    loaded = 1;
}

int lm_archive_load(char *err, size_t cap) {
    pthread_once(&once, load_once);
    if (loaded) return 0;
    if (cap) snprintf(err, cap, "%s", load_error);
    return -1;
}

static void not_loaded(const char *name) {
    fprintf(stderr, "lmctfy: %s called before lm_archive_load succeeded\n", name);
    abort();
}

#define X(ret, name, params, args)                  \
    ret lm_##name params {                          \
        if (p_##name == NULL) not_loaded(#name);    \
        return p_##name args;                       \
    }
#include "archive_functions.h"
#undef X
