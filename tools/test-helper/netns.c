/* lmctfy-test-helper netns: the inside of a virtual host for the lm_net
 * tests. It unshares a network namespace of its own (so the test's
 * addresses live only in namespaces the test made), prints "ready <pid>",
 * and then runs one command per line of stdin, answering one line each:
 *   apply IF IP PREFIX GW MTU FWD   lm_net_apply_inside ("-" = not set)
 *   link IF                         "ok mtu=N up=0|1 kind=K" (or err 19)
 *   read PATH                       "ok <first line of PATH>"
 *   listen PORT                     a TCP listener on [::]:PORT (v4 and v6)
 *   accept                          accept one client, read a line, answer
 *                                   "echo:<line>", "ok <client address>"
 *   dial IP PORT MSG                connect, send MSG and a newline, close
 *   exit
 * Failures answer "err <errno> [step]". */
#define _GNU_SOURCE
#include "lm_net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *opt(const char *s) { return strcmp(s, "-") == 0 ? NULL : s; }

static int listener = -1;

static int read_line(int fd, char *buf, size_t cap) {
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = read(fd, buf + n, 1);
        if (r <= 0) break;
        if (buf[n] == '\n') break;
        n++;
    }
    buf[n] = 0;
    return (int)n;
}

static void do_accept(void) {
    struct sockaddr_in6 peer;
    socklen_t len = sizeof peer;
    int c = accept(listener, (struct sockaddr *)&peer, &len);
    if (c < 0) { printf("err %d\n", errno); return; }
    char line[256], out[300], addr[INET6_ADDRSTRLEN];
    read_line(c, line, sizeof line);
    int n = snprintf(out, sizeof out, "echo:%s\n", line);
    if (write(c, out, (size_t)n) != n) { printf("err %d\n", errno); close(c); return; }
    close(c);
    inet_ntop(AF_INET6, &peer.sin6_addr, addr, sizeof addr);
    printf("ok %s\n", addr);
}

static void do_dial(const char *ip, int port, const char *msg) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((unsigned short)port);
        len = sizeof *v4;
    } else if (inet_pton(AF_INET6, ip, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((unsigned short)port);
        len = sizeof *v6;
    } else {
        printf("err %d\n", EINVAL);
        return;
    }
    int s = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&ss, len) < 0) {
        printf("err %d\n", errno);
        if (s >= 0) close(s);
        return;
    }
    char out[300];
    int n = snprintf(out, sizeof out, "%s\n", msg);
    int ok = write(s, out, (size_t)n) == n;
    close(s);
    if (ok) printf("ok\n"); else printf("err %d\n", errno);
}

int netns_main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (unshare(CLONE_NEWNET) != 0) {
        printf("err %d unshare\n", errno);
        return 1;
    }
    printf("ready %d\n", (int)getpid());
    char line[512];
    while (fgets(line, sizeof line, stdin) != NULL) {
        line[strcspn(line, "\n")] = 0;
        char a[6][128];
        char cmd[32];
        int n = sscanf(line, "%31s %127s %127s %127s %127s %127s %127s", cmd, a[0], a[1], a[2], a[3], a[4], a[5]);
        if (n < 1) continue;
        if (strcmp(cmd, "apply") == 0 && n == 7) {
            struct lm_net_inside in = {
                .ifname = opt(a[0]), .ip = opt(a[1]), .prefixlen = (unsigned)atoi(a[2]),
                .gateway = opt(a[3]), .mtu = (unsigned)atoi(a[4]),
                .ip_forward = strcmp(a[5], "-") == 0 ? -1 : atoi(a[5]),
            };
            int step = 0;
            int e = lm_net_apply_inside(&in, &step);
            if (e == 0) printf("ok\n"); else printf("err %d %d\n", -e, step);
        } else if (strcmp(cmd, "link") == 0 && n == 2) {
            struct lm_net_link_info info;
            int e = lm_net_link_get(a[0], &info);
            if (e == 0) printf("ok mtu=%u up=%d kind=%s\n", info.mtu, (info.flags & 1) ? 1 : 0, info.kind);
            else printf("err %d\n", -e);
        } else if (strcmp(cmd, "read") == 0 && n == 2) {
            FILE *f = fopen(a[0], "r");
            char got[128] = "";
            if (f == NULL) { printf("err %d\n", errno); continue; }
            if (fgets(got, sizeof got, f) == NULL) got[0] = 0;
            fclose(f);
            got[strcspn(got, "\n")] = 0;
            printf("ok %s\n", got);
        } else if (strcmp(cmd, "listen") == 0 && n == 2) {
            struct sockaddr_in6 any;
            memset(&any, 0, sizeof any);
            any.sin6_family = AF_INET6;
            any.sin6_port = htons((unsigned short)atoi(a[0]));
            int off = 0;
            listener = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (listener < 0 || setsockopt(listener, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) < 0 ||
                bind(listener, (struct sockaddr *)&any, sizeof any) < 0 || listen(listener, 4) < 0) {
                printf("err %d\n", errno);
            } else {
                printf("ok\n");
            }
        } else if (strcmp(cmd, "accept") == 0 && listener >= 0) {
            do_accept();
        } else if (strcmp(cmd, "dial") == 0 && n == 4) {
            do_dial(a[0], atoi(a[1]), a[2]);
        } else if (strcmp(cmd, "exit") == 0) {
            return 0;
        } else {
            printf("err %d usage\n", EINVAL);
        }
    }
    return 0;
}
