#define _GNU_SOURCE
#include "lm_fs.h"

#include <errno.h>
#include <sched.h>

int lm_unshare_fs(void) {
    return unshare(CLONE_FS) == 0 ? 0 : -errno;
}
