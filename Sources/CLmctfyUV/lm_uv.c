/* Most of this module is static inline in include/lm_uv.h; SwiftPM builds
 * a C target only when it has a source file, and this is it. */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>
#include "lm_uv.h"

int lm_uv_name_thread(const char *name) {
    char buf[16];  /* the kernel keeps 15 bytes and the NUL */
    strncpy(buf, name, sizeof buf - 1);
    buf[sizeof buf - 1] = 0;
    return pthread_setname_np(pthread_self(), buf);
}
