/* libuv helpers for LmctfyLoop, in a module of their own (CLmctfyUV) so
 * that only LmctfyLoop sees libuv: CLmctfyShims, which CL1 and the CLI
 * import, must not pull <uv.h> into them. */
#ifndef LM_UV_H
#define LM_UV_H

#include <uv.h>

/* Names the calling thread (pthread_setname_np, cut to 15 bytes): what
 * `top -H` and /proc/<pid>/task/<tid>/comm show. 0 or an errno. */
int lm_uv_name_thread(const char *name);

/* libuv "subclasses" handles by C struct prefixing: a uv_tcp_t begins with
 * the fields of uv_stream_t, which begins with those of uv_handle_t, and the
 * API takes whichever base the call needs. Swift sees these as unrelated
 * types and has no legal way to reinterpret one typed pointer as another;
 * C does it with a cast. The argument is void * so one function serves every
 * handle type. */
static inline uv_handle_t *lm_uv_handle(void *handle) { return (uv_handle_t *)handle; }
static inline uv_stream_t *lm_uv_stream(void *handle) { return (uv_stream_t *)handle; }

#endif
