#define _GNU_SOURCE
#include "CLmctfyShims.h"

#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>

size_t lm_heap_in_use(void) {
    return mallinfo2().uordblks;
}

int lm_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}
