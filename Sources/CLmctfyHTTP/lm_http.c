// See include/lm_http.h.
#define _GNU_SOURCE
#include "lm_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

// A connection as the eviction below sees it: waiting for a request's
// line and headers since `waiting_since_ms` (its accept, or the end of its
// previous request), or busy with one.
struct lm_http_conn {
    int fd;
    int busy;
    uint64_t waiting_since_ms;
    struct lm_http_conn *prev, *next;
};

struct lm_http_server {
    struct MHD_Daemon *daemon;
    lm_http_handler handler;
    void *context;
    // Open connections, oldest first, and how many; past `soft_limit` a new
    // one evicts the longest-waiting idle one (lm_http_notify).
    struct lm_http_conn *first, *last;
    unsigned open, soft_limit;
};

// How long a connection must have waited for its next request to give its
// place to a new one.
#define LM_HTTP_EVICT_AFTER_MS 1000

static uint64_t lm_http_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

// MHD's connection limit alone let 64 connections that never finish a
// request (a slowloris trickling a byte now and then past the idle timeout)
// hold the endpoint for as long as they liked: a scraper was not even
// accepted. MHD's hard limit is twice ours; past ours, a new connection
// takes the place of the one that has waited longest for a request, if
// that has waited a second or more (shut down: MHD sees it end and closes
// it), and is itself shut down otherwise. To keep the endpoint, a prober
// must then open that many connections every second. Keep-alive scrapers
// between scrapes wait too, and may be the ones to go: they reconnect.
static void lm_http_notify(void *cls, struct MHD_Connection *connection, void **socket_context,
                           enum MHD_ConnectionNotificationCode toe) {
    struct lm_http_server *server = cls;
    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        struct lm_http_conn *c = *socket_context;
        if (c == NULL) return;
        if (c->prev) c->prev->next = c->next; else server->first = c->next;
        if (c->next) c->next->prev = c->prev; else server->last = c->prev;
        server->open--;
        free(c);
        *socket_context = NULL;
        return;
    }
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    struct lm_http_conn *c = calloc(1, sizeof *c);
    if (c == NULL || info == NULL) {
        free(c);
        if (info != NULL) shutdown(info->connect_fd, SHUT_RDWR);
        return;
    }
    uint64_t now = lm_http_now_ms();
    c->fd = info->connect_fd;
    c->waiting_since_ms = now;
    c->prev = server->last;
    if (server->last) server->last->next = c; else server->first = c;
    server->last = c;
    server->open++;
    *socket_context = c;
    if (server->open <= server->soft_limit) return;
    struct lm_http_conn *oldest = NULL;
    for (struct lm_http_conn *o = server->first; o != NULL && o != c; o = o->next) {
        if (!o->busy && (oldest == NULL || o->waiting_since_ms < oldest->waiting_since_ms)) oldest = o;
    }
    if (oldest != NULL && now - oldest->waiting_since_ms >= LM_HTTP_EVICT_AFTER_MS) {
        shutdown(oldest->fd, SHUT_RDWR);
        oldest->busy = 1;  // gone: not a candidate again
    } else {
        shutdown(c->fd, SHUT_RDWR);
        c->busy = 1;
    }
}

// The request's line and headers are in: busy until it completes.
static void lm_http_mark(struct MHD_Connection *connection, int busy) {
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct lm_http_conn *c = info == NULL ? NULL : info->socket_context;
    if (c == NULL) return;
    c->busy = busy;
    if (!busy) c->waiting_since_ms = lm_http_now_ms();
}

static void lm_http_completed(void *cls, struct MHD_Connection *connection, void **request_state,
                              enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)request_state;
    (void)toe;
    lm_http_mark(connection, 0);
}

// MHD calls this first once the request line and headers are in, then
// once per piece of body, then once more. GET and HEAD are answered on the
// second call (a response queued on the first counts as "early" and MHD
// then closes the connection, which would cost a scraper a TCP handshake
// per scrape); any other method is answered on the first, before its body
// is read, and MHD closes that connection rather than read it. Nothing a
// client sends is kept.
static int lm_http_seen;

// What the request's headers break of HTTP/1.1 that MHD lets through, and
// MHD's strict mode answered badly: its own 400 for a missing Host sent
// the status line and headers twice (the second copy as the body).
struct lm_http_header_check {
    unsigned hosts;
    unsigned lengths;
    unsigned encodings;
    int nul;
};

static enum MHD_Result lm_http_check_header(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                                            const char *value, size_t value_size) {
    (void)kind;
    struct lm_http_header_check *check = cls;
    if (key == NULL || strlen(key) != key_size || (value != NULL && strlen(value) != value_size)) check->nul = 1;
    if (key != NULL && strcasecmp(key, MHD_HTTP_HEADER_HOST) == 0) check->hosts++;
    if (key != NULL && strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) check->lengths++;
    if (key != NULL && strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) check->encodings++;
    return MHD_YES;
}

// NULL if the request's headers are sound, else what is wrong (RFC 9112:
// exactly one Host in HTTP/1.1, at most one in 1.0; one Content-Length at
// most, never with Transfer-Encoding; no NUL in a header).
static const char *lm_http_bad_headers(struct MHD_Connection *connection, const char *version) {
    struct lm_http_header_check check = {0, 0, 0, 0};
    MHD_get_connection_values_n(connection, MHD_HEADER_KIND, lm_http_check_header, &check);
    if (check.nul) return "bad request: a header holds a NUL byte\n";
    if (check.hosts > 1) return "bad request: more than one Host header\n";
    if (check.hosts == 0 && strcmp(version, MHD_HTTP_VERSION_1_1) == 0) return "bad request: HTTP/1.1 needs a Host header\n";
    if (check.lengths > 1) return "bad request: more than one Content-Length header\n";
    if (check.lengths > 0 && check.encodings > 0) return "bad request: both Content-Length and Transfer-Encoding\n";
    return NULL;
}

static enum MHD_Result lm_http_access(void *cls, struct MHD_Connection *connection, const char *url,
                                      const char *method, const char *version, const char *upload_data,
                                      size_t *upload_data_size, void **request_state) {
    (void)upload_data;
    if (*request_state == NULL) {
        lm_http_mark(connection, 1);
        const char *bad = lm_http_bad_headers(connection, version);
        if (bad != NULL) {
            // Answered before any body is read: MHD closes the connection.
            struct MHD_Response *response = MHD_create_response_from_buffer(strlen(bad), (void *)bad, MHD_RESPMEM_PERSISTENT);
            if (response == NULL) return MHD_NO;
            MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
            MHD_add_response_header(response, MHD_HTTP_HEADER_CONNECTION, "close");
            enum MHD_Result queued = MHD_queue_response(connection, MHD_HTTP_BAD_REQUEST, response);
            MHD_destroy_response(response);
            return queued;
        }
    }
    int quiet = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    if (*request_state == NULL && quiet) {
        *request_state = &lm_http_seen;
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        // A GET with a body: dropped, answered at the end.
        *upload_data_size = 0;
        return MHD_YES;
    }
    struct lm_http_server *server = cls;
    lm_http_reply reply = {500, "text/plain; charset=utf-8", NULL, 0};
    server->handler(server->context, method, url, &reply);
    struct MHD_Response *response;
    if (reply.body != NULL) {
        response = MHD_create_response_from_buffer(reply.length, reply.body, MHD_RESPMEM_MUST_FREE);
    } else {
        response = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    }
    if (response == NULL) {
        free(reply.body);
        return MHD_NO;
    }
    if (reply.content_type != NULL) MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, reply.content_type);
    if (reply.status == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result queued = MHD_queue_response(connection, reply.status, response);
    MHD_destroy_response(response);
    return queued;
}

// MHD's own log lines are not wanted on the agent's stderr (a malformed
// request is the client's problem; the client gets the status).
static void lm_http_quiet(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    (void)fmt;
    (void)ap;
}

lm_http_server *lm_http_start(int listen_fd, unsigned connection_limit, unsigned timeout_s, size_t memory_limit,
                              lm_http_handler handler, void *context) {
    struct lm_http_server *server = calloc(1, sizeof *server);
    if (server == NULL) {
        close(listen_fd);
        return NULL;
    }
    server->handler = handler;
    server->context = context;
    server->soft_limit = connection_limit;
    // No MHD_USE_INTERNAL_POLLING_THREAD: MHD runs only inside lm_http_run.
    server->daemon = MHD_start_daemon(MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL, lm_http_access, server,
                                      MHD_OPTION_LISTEN_SOCKET, (MHD_socket)listen_fd,
                                      MHD_OPTION_CONNECTION_LIMIT, connection_limit * 2,
                                      MHD_OPTION_NOTIFY_CONNECTION, lm_http_notify, server,
                                      MHD_OPTION_NOTIFY_COMPLETED, lm_http_completed, server,
                                      MHD_OPTION_CONNECTION_TIMEOUT, timeout_s,
                                      MHD_OPTION_CONNECTION_MEMORY_LIMIT, memory_limit,
                                      MHD_OPTION_EXTERNAL_LOGGER, lm_http_quiet, NULL,
                                      // Not MHD's strict mode: its 400 for a missing Host
                                      // sent its headers twice. lm_http_access checks
                                      // the headers itself (lm_http_bad_headers).
                                      MHD_OPTION_STRICT_FOR_CLIENT, (int)0,
                                      MHD_OPTION_END);
    if (server->daemon == NULL) {
        close(listen_fd);
        free(server);
        return NULL;
    }
    return server;
}

int lm_http_epoll_fd(lm_http_server *server) {
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(server->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    return info == NULL ? -1 : info->epoll_fd;
}

int lm_http_run(lm_http_server *server) { return MHD_run(server->daemon) == MHD_YES ? 0 : -1; }

int64_t lm_http_timeout_ms(lm_http_server *server) {
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (MHD_get_timeout(server->daemon, &ms) != MHD_YES) return -1;
    return ms > INT64_MAX ? INT64_MAX : (int64_t)ms;
}

void lm_http_stop(lm_http_server *server) {
    if (server == NULL) return;
    MHD_stop_daemon(server->daemon);
    free(server);
}

static int lm_http_fail(int fd, const char *call, const char **step) {
    int e = errno;
    if (fd >= 0) close(fd);
    *step = call;
    return -e;
}

int lm_http_listen_tcp(const char *host, uint16_t port, uint16_t *bound, const char **step) {
    struct sockaddr_storage storage;
    memset(&storage, 0, sizeof storage);
    socklen_t length;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&storage;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&storage;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        length = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        length = sizeof *v6;
    } else {
        *step = "inet_pton";
        return -EINVAL;
    }
    int fd = socket(storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return lm_http_fail(fd, "socket", step);
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) return lm_http_fail(fd, "setsockopt", step);
    if (bind(fd, (struct sockaddr *)&storage, length) < 0) return lm_http_fail(fd, "bind", step);
    if (listen(fd, 128) < 0) return lm_http_fail(fd, "listen", step);
    length = sizeof storage;
    if (getsockname(fd, (struct sockaddr *)&storage, &length) < 0) return lm_http_fail(fd, "getsockname", step);
    *bound = ntohs(storage.ss_family == AF_INET ? v4->sin_port : v6->sin6_port);
    return fd;
}

int lm_http_listen_unix(const char *path, unsigned mode, unsigned gid, const char **step) {
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) == 0 || strlen(path) >= sizeof addr.sun_path) {
        *step = "bind";
        return -ENAMETOOLONG;
    }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return lm_http_fail(fd, "socket", step);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) return lm_http_fail(fd, "bind", step);
    if (gid != (unsigned)-1 && chown(path, (uid_t)-1, (gid_t)gid) < 0) {
        int r = lm_http_fail(fd, "chown", step);
        unlink(path);
        return r;
    }
    if (chmod(path, mode) < 0) {
        int r = lm_http_fail(fd, "chmod", step);
        unlink(path);
        return r;
    }
    if (listen(fd, 128) < 0) {
        int r = lm_http_fail(fd, "listen", step);
        unlink(path);
        return r;
    }
    return fd;
}
