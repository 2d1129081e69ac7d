// libmicrohttpd driven from the agent's libuv loop (no thread of its own).
// Why C: MHD_start_daemon is variadic (Swift cannot call it) and its
// callbacks take MHD's own types; this file keeps every MHD call in one
// place behind a handful of plain functions. The daemon runs in MHD's
// "external epoll" mode: MHD keeps an epoll set of its sockets, whose one
// descriptor (lm_http_epoll_fd) the loop watches with a uv_poll; on
// readiness the loop calls lm_http_run, and lm_http_timeout_ms says when
// MHD wants to run again (idle connections to time out). Nothing here
// blocks, and nothing here is thread-safe: the loop thread makes every call.
#ifndef LM_HTTP_H
#define LM_HTTP_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// What the handler answers: a status, a content type (static string) and a
/// body allocated with malloc (MHD frees it once sent; NULL with length 0
/// for none).
typedef struct lm_http_reply {
    unsigned status;
    const char *content_type;
    char *body;
    size_t length;
} lm_http_reply;

/// Called on the loop thread, inside lm_http_run, once per request, with
/// the method and the path (query string already split off by MHD).
typedef void (*lm_http_handler)(void *context, const char *method, const char *path, lm_http_reply *reply);

typedef struct lm_http_server lm_http_server;

/// Serves HTTP/1.1 on `listen_fd` (listening, non-blocking; MHD owns it from
/// here and closes it in lm_http_stop). At most `connection_limit`
/// connections: past it a new one takes the place of the one that has
/// waited longest (a second or more) for its next request, or is closed
/// itself; one idle longer than `timeout_s` is closed; a request whose
/// line and headers do not fit `memory_limit` bytes is answered with an
/// error status (414/431) by MHD. NULL on failure (the listen fd is closed).
lm_http_server *lm_http_start(int listen_fd, unsigned connection_limit, unsigned timeout_s, size_t memory_limit,
                              lm_http_handler handler, void *context);
/// The epoll descriptor to watch for readability.
int lm_http_epoll_fd(lm_http_server *server);
/// Processes whatever is ready (accepts, reads, answers, writes, timeouts);
/// never blocks. 0 on success, -1 when MHD reports an error.
int lm_http_run(lm_http_server *server);
/// Milliseconds until MHD wants lm_http_run called although nothing is
/// readable (0: at once), or -1 for no such need.
int64_t lm_http_timeout_ms(lm_http_server *server);
/// Closes every connection and the listening socket, frees the server.
void lm_http_stop(lm_http_server *server);

/// A listening, non-blocking TCP socket on numeric `host` (IPv4 or IPv6)
/// and `port` (0: any free one, reported in *bound). Returns the fd, or
/// -errno with *step naming the call that failed.
int lm_http_listen_tcp(const char *host, uint16_t port, uint16_t *bound, const char **step);
/// A listening, non-blocking Unix socket bound at `path`, given group `gid`
/// (unless it is (unsigned)-1) and `mode` before listen() (so that nobody
/// connects under the umask's mode or the wrong group). Returns the fd, or
/// -errno with *step naming the failed call.
int lm_http_listen_unix(const char *path, unsigned mode, unsigned gid, const char **step);

#ifdef __cplusplus
}
#endif
#endif
