// tools/bench-metrics' scraper: GET /metrics COUNT times, timing each from
// connect (or, with --keepalive, from sending the request on the one
// connection kept open, as Prometheus does) to the body's last byte (its
// Content-Length). Prints
// "n=... bytes=... median_ms=... p99_ms=... min_ms=... max_ms=...".
// usage: scrape PORT COUNT [WARMUP] [--keepalive]
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static char buffer[1 << 16];

static int dial(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); close(fd); return -1; }
    return fd;
}

// One request on `fd` and its whole answer (headers, then Content-Length
// bytes of body); returns the body's size, or -1.
static long exchange(int fd, int *status) {
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n";
    if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof req - 1)) return -1;
    // The headers fit the buffer; the body is counted, not kept.
    long have = 0, header = -1, length = -1;
    while (header < 0) {
        ssize_t n = recv(fd, buffer + have, sizeof buffer - 1 - have, 0);
        if (n <= 0) return -1;
        have += n;
        buffer[have] = 0;
        char *end = strstr(buffer, "\r\n\r\n");
        if (end) header = (end - buffer) + 4;
    }
    *status = atoi(buffer + 9);
    char *cl = strcasestr(buffer, "\r\ncontent-length:");
    if (!cl || cl > buffer + header) return -1;
    length = atol(cl + 17);
    long body = have - header;
    while (body < length) {
        ssize_t n = recv(fd, buffer, sizeof buffer, 0);
        if (n <= 0) return -1;
        body += n;
    }
    return body == length ? length : -1;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: scrape PORT COUNT [WARMUP] [--keepalive]\n"); return 2; }
    int port = atoi(argv[1]), count = atoi(argv[2]), warmup = argc > 3 ? atoi(argv[3]) : 5;
    int keep = argc > 4 && strcmp(argv[4], "--keepalive") == 0;
    int fd = keep ? dial(port) : -1;
    if (keep && fd < 0) return 1;
    double *t = calloc(count, sizeof *t);
    long bytes = 0;
    int status = 0;
    for (int i = 0; i < warmup + count; i++) {
        double t0 = now_ms();
        int c = keep ? fd : dial(port);
        if (c < 0) return 1;
        bytes = exchange(c, &status);
        if (!keep) close(c);
        if (i < warmup) continue;
        t[i - warmup] = now_ms() - t0;
        if (bytes < 0 || status != 200) { fprintf(stderr, "scrape: failed (status %d)\n", status); return 1; }
    }
    qsort(t, count, sizeof *t, cmp);
    int p99 = (int)(count * 0.99);
    if (p99 >= count) p99 = count - 1;
    printf("n=%d bytes=%ld median_ms=%.3f p99_ms=%.3f min_ms=%.3f max_ms=%.3f\n", count, bytes,
           count % 2 ? t[count / 2] : (t[count / 2 - 1] + t[count / 2]) / 2, t[p99], t[0], t[count - 1]);
    return 0;
}
