/* Everything in this module is static inline in include/lm_uv.h; SwiftPM
 * builds a C target only when it has a source file, and this is it. */
#include "lm_uv.h"
