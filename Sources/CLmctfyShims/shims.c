#define _GNU_SOURCE
#include "CLmctfyShims.h"

#include <malloc.h>

size_t lm_heap_in_use(void) {
    return mallinfo2().uordblks;
}
