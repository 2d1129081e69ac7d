// tools/bench-metrics' scraper: GET /metrics COUNT times, one fresh TCP
// connection each (as Prometheus does when the server closes after the
// answer), timing connect -> last byte of the body. Prints
// "n=... bytes=... median_ms=... p99_ms=... min_ms=... max_ms=...".
// usage: scrape PORT COUNT [WARMUP]
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

// One scrape; returns the body's size, or -1.
static long scrape(int port, int *status) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); close(fd); return -1; }
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\nConnection: close\r\n\r\n";
    if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof req - 1)) { close(fd); return -1; }
    long total = 0, header = -1;
    char head[16];
    ssize_t n;
    while ((n = recv(fd, buffer, sizeof buffer, 0)) > 0) {
        if (total == 0) memcpy(head, buffer, n < 16 ? n : 16);
        if (header < 0) {
            char *end = memmem(buffer, n, "\r\n\r\n", 4);
            if (end) header = total + (end - buffer) + 4;
        }
        total += n;
    }
    close(fd);
    *status = total >= 12 ? atoi(head + 9) : 0;
    return header < 0 ? -1 : total - header;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: scrape PORT COUNT [WARMUP]\n"); return 2; }
    int port = atoi(argv[1]), count = atoi(argv[2]), warmup = argc > 3 ? atoi(argv[3]) : 5;
    double *t = calloc(count, sizeof *t);
    long bytes = 0;
    int status = 0;
    for (int i = 0; i < warmup; i++) scrape(port, &status);
    for (int i = 0; i < count; i++) {
        double t0 = now_ms();
        bytes = scrape(port, &status);
        t[i] = now_ms() - t0;
        if (bytes < 0 || status != 200) { fprintf(stderr, "scrape: failed (status %d)\n", status); return 1; }
    }
    qsort(t, count, sizeof *t, cmp);
    int p99 = (int)(count * 0.99);
    if (p99 >= count) p99 = count - 1;
    printf("n=%d bytes=%ld median_ms=%.3f p99_ms=%.3f min_ms=%.3f max_ms=%.3f\n", count, bytes,
           count % 2 ? t[count / 2] : (t[count / 2 - 1] + t[count / 2]) / 2, t[p99], t[0], t[count - 1]);
    return 0;
}
