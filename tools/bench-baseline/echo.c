/* The floor for the agent's unary round trips: a libuv server that echoes
 * length-prefixed frames (4-byte big-endian length + body, the agent's
 * framing) and a client that keeps D frames in flight on each of C
 * connections. No protobuf, no authentication, no dispatch.
 *   echo server PORT
 *   echo client PORT C D SECONDS      prints round trips per second */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

typedef struct { uv_tcp_t tcp; char *buf; size_t len, cap; } conn_t;

static void on_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) { (void)h; b->base = malloc(s); b->len = s; }
static void on_close(uv_handle_t *h) { conn_t *c = (conn_t *)h; free(c->buf); free(c); }
static void on_write(uv_write_t *w, int st) { (void)st; free(w->data); free(w); }

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
    conn_t *c = (conn_t *)s;
    if (n < 0) { free(b->base); uv_close((uv_handle_t *)s, on_close); return; }
    if (c->len + (size_t)n > c->cap) { c->cap = (c->len + n) * 2; c->buf = realloc(c->buf, c->cap); }
    memcpy(c->buf + c->len, b->base, n);
    c->len += n;
    free(b->base);
    size_t off = 0;
    while (c->len - off >= 4) {
        uint32_t len = ntohl(*(uint32_t *)(c->buf + off));
        if (c->len - off < 4 + len) break;
        uv_write_t *w = malloc(sizeof *w);
        char *copy = malloc(4 + len);
        memcpy(copy, c->buf + off, 4 + len);
        w->data = copy;
        uv_buf_t out = uv_buf_init(copy, 4 + len);
        uv_write(w, s, &out, 1, on_write);
        off += 4 + len;
    }
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
}

static void on_conn(uv_stream_t *server, int st) {
    if (st < 0) return;
    conn_t *c = calloc(1, sizeof *c);
    uv_tcp_init(server->loop, &c->tcp);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) == 0) {
        uv_tcp_nodelay(&c->tcp, 1);
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    } else {
        uv_close((uv_handle_t *)&c->tcp, on_close);
    }
}

struct job { int port, depth; double seconds; long done; };

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

static void *client(void *arg) {
    struct job *j = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(j->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); exit(1); }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* A ping-sized frame: what a unary Ping request costs on the wire. */
    unsigned char frame[4 + 16];
    *(uint32_t *)frame = htonl(16);
    memset(frame + 4, 7, 16);
    for (int i = 0; i < j->depth; i++) write(fd, frame, sizeof frame);
    double end = now() + j->seconds;
    unsigned char buf[65536];
    size_t have = 0;
    while (now() < end) {
        ssize_t n = read(fd, buf + have, sizeof buf - have);
        if (n <= 0) break;
        have += n;
        size_t frames = have / sizeof frame;
        for (size_t k = 0; k < frames; k++) write(fd, frame, sizeof frame);
        j->done += frames;
        memmove(buf, buf + frames * sizeof frame, have - frames * sizeof frame);
        have -= frames * sizeof frame;
    }
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    /* A client leaving with frames in flight must not kill the server. */
    signal(SIGPIPE, SIG_IGN);
    if (argc == 3 && strcmp(argv[1], "server") == 0) {
        uv_loop_t *loop = uv_default_loop();
        uv_tcp_t server;
        struct sockaddr_in a;
        uv_ip4_addr("127.0.0.1", atoi(argv[2]), &a);
        uv_tcp_init(loop, &server);
        if (uv_tcp_bind(&server, (struct sockaddr *)&a, 0) || uv_listen((uv_stream_t *)&server, 511, on_conn)) {
            fprintf(stderr, "echo: cannot listen on %s\n", argv[2]);
            return 1;
        }
        return uv_run(loop, UV_RUN_DEFAULT);
    }
    if (argc == 6 && strcmp(argv[1], "client") == 0) {
        int c = atoi(argv[3]);
        struct job *jobs = calloc(c, sizeof *jobs);
        pthread_t *t = calloc(c, sizeof *t);
        for (int i = 0; i < c; i++) {
            jobs[i] = (struct job){atoi(argv[2]), atoi(argv[4]), atof(argv[5]), 0};
            pthread_create(&t[i], NULL, client, &jobs[i]);
        }
        long total = 0;
        for (int i = 0; i < c; i++) { pthread_join(t[i], NULL); total += jobs[i].done; }
        printf("c     rps=%.0f\n", total / atof(argv[5]));
        return 0;
    }
    fprintf(stderr, "usage: echo server PORT | echo client PORT C D SECONDS\n");
    return 64;
}
