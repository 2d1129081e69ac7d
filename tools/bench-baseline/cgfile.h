/* The two cgroup file helpers the C baselines share: one write(2) of a
 * value, one read(2) of a small file; any failure ends the baseline. */
#ifndef LM_BENCH_CGFILE_H
#define LM_BENCH_CGFILE_H
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void put(const char *path, const char *value) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, value, strlen(value)) < 0) { perror(path); exit(1); }
    close(fd);
}

static void get(const char *path, char *buf, size_t len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, len - 1);
    if (n < 0) { perror(path); exit(1); }
    buf[n] = 0;
    close(fd);
}
#endif
