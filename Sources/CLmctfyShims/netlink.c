/* rtnetlink for virtual host networks (see lm_net.h). Async-signal-safe
 * throughout: requests and replies live in stack buffers, each call opens
 * its own NETLINK_ROUTE socket (so it acts in the calling thread's network
 * namespace) and closes it before returning. */
#define _GNU_SOURCE
#include "lm_net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_link.h>
#include <linux/if_addr.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A request under construction: one netlink message in a caller's buffer. */
struct nl_req {
    struct nlmsghdr *h;
    size_t cap;
};

/* Requests are small (a veth pair is ~150 bytes); replies to RTM_GETLINK
 * without statistics are ~1.5 KiB. */
#define REQ_BYTES 1024
#define REPLY_BYTES 16384

static int name_ok(const char *name) {
    if (name == NULL) return 0;
    size_t n = strlen(name);
    if (n == 0 || n >= IFNAMSIZ) return 0;
    if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c <= ' ' || c == '/' || c == ':' || c == 0x7f) return 0;
    }
    return 1;
}

static void req_init(struct nl_req *r, void *buf, size_t cap, unsigned short type, unsigned short flags,
                     const void *payload, size_t payload_len) {
    memset(buf, 0, cap);
    r->h = (struct nlmsghdr *)buf;
    r->cap = cap;
    r->h->nlmsg_type = type;
    r->h->nlmsg_flags = (unsigned short)(NLM_F_REQUEST | flags);
    r->h->nlmsg_seq = 1;   /* one request per socket: the number need not vary */
    r->h->nlmsg_len = (unsigned)NLMSG_LENGTH(payload_len);
    memcpy(NLMSG_DATA(r->h), payload, payload_len);
}

/* Appends raw bytes, aligned (the ifinfomsg at the head of a veth peer). */
static int req_put_raw(struct nl_req *r, const void *data, size_t len) {
    size_t off = NLMSG_ALIGN(r->h->nlmsg_len);
    if (off + NLMSG_ALIGN(len) > r->cap) return -ENOBUFS;
    memcpy((char *)r->h + off, data, len);
    r->h->nlmsg_len = (unsigned)(off + NLMSG_ALIGN(len));
    return 0;
}

static int req_put(struct nl_req *r, unsigned short type, const void *data, size_t len) {
    size_t off = NLMSG_ALIGN(r->h->nlmsg_len);
    size_t alen = RTA_LENGTH(len);
    if (off + RTA_ALIGN(alen) > r->cap) return -ENOBUFS;
    struct rtattr *a = (struct rtattr *)((char *)r->h + off);
    a->rta_type = type;
    a->rta_len = (unsigned short)alen;
    if (len) memcpy(RTA_DATA(a), data, len);
    r->h->nlmsg_len = (unsigned)(off + RTA_ALIGN(alen));
    return 0;
}

static int req_put_str(struct nl_req *r, unsigned short type, const char *s) {
    return req_put(r, type, s, strlen(s) + 1);
}

static int req_put_u32(struct nl_req *r, unsigned short type, unsigned v) {
    return req_put(r, type, &v, sizeof v);
}

/* Opens a nested attribute; returns its offset (for req_nest_end) or -ENOBUFS. */
static long req_nest(struct nl_req *r, unsigned short type) {
    size_t off = NLMSG_ALIGN(r->h->nlmsg_len);
    int e = req_put(r, type, NULL, 0);
    return e < 0 ? e : (long)off;
}

static void req_nest_end(struct nl_req *r, long off) {
    struct rtattr *a = (struct rtattr *)((char *)r->h + off);
    a->rta_len = (unsigned short)(r->h->nlmsg_len - (size_t)off);
}

static int nl_open(void) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    return fd < 0 ? -errno : fd;
}

/* Sends the request and reads until the kernel's answer to it: an ack
 * (0 or -errno), or, for a GET, the object itself copied to `reply`
 * (reply may be NULL for requests that carry NLM_F_ACK). */
static int nl_talk(struct nl_req *r, void *reply, size_t reply_cap) {
    int fd = nl_open();
    if (fd < 0) return fd;
    struct sockaddr_nl kernel;
    memset(&kernel, 0, sizeof kernel);
    kernel.nl_family = AF_NETLINK;
    ssize_t s;
    do {
        s = sendto(fd, r->h, r->h->nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel);
    } while (s < 0 && errno == EINTR);
    if (s < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    char local[REQ_BYTES * 2] __attribute__((aligned(NLMSG_ALIGNTO)));
    char *buf = reply ? (char *)reply : local;
    size_t cap = reply ? reply_cap : sizeof local;
    int result = -EPROTO;
    for (;;) {
        struct sockaddr_nl from;
        socklen_t fromlen = sizeof from;
        ssize_t n;
        do {
            n = recvfrom(fd, buf, cap, MSG_TRUNC, (struct sockaddr *)&from, &fromlen);
        } while (n < 0 && errno == EINTR);
        if (n < 0) { result = -errno; break; }
        if ((size_t)n > cap) { result = -EMSGSIZE; break; }
        if (from.nl_pid != 0) continue;   /* not from the kernel */
        int done = 0;
        unsigned left = (unsigned)n;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
            if (h->nlmsg_seq != r->h->nlmsg_seq) continue;
            if (h->nlmsg_type == NLMSG_ERROR) {
                if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr))) { result = -EPROTO; done = 1; break; }
                result = ((struct nlmsgerr *)NLMSG_DATA(h))->error;
                done = 1;
                break;
            }
            /* A GET (RTM_GETLINK) is answered by the object (RTM_NEWLINK). */
            if (reply && h->nlmsg_type + 2 == r->h->nlmsg_type) {
                if ((char *)h != buf) memmove(buf, h, h->nlmsg_len);
                result = 0;
                done = 1;
                break;
            }
        }
        if (done) break;
    }
    close(fd);
    return result;
}

/* RTM_NEWLINK on an existing link found by name (no NLM_F_CREATE: a missing
 * link is -ENODEV), with the attributes the caller adds through `r`. */
static int link_req(struct nl_req *r, void *buf, const char *ifname, unsigned flags, unsigned change) {
    struct ifinfomsg ifi;
    memset(&ifi, 0, sizeof ifi);
    ifi.ifi_family = AF_UNSPEC;
    ifi.ifi_flags = flags;
    ifi.ifi_change = change;
    req_init(r, buf, REQ_BYTES, RTM_NEWLINK, NLM_F_ACK, &ifi, sizeof ifi);
    return req_put_str(r, IFLA_IFNAME, ifname);
}

int lm_net_link_get(const char *ifname, struct lm_net_link_info *out) {
    if (!name_ok(ifname) || out == NULL) return -EINVAL;
    char buf[REQ_BYTES] __attribute__((aligned(NLMSG_ALIGNTO)));
    char reply[REPLY_BYTES] __attribute__((aligned(NLMSG_ALIGNTO)));
    struct nl_req r;
    struct ifinfomsg ifi;
    memset(&ifi, 0, sizeof ifi);
    ifi.ifi_family = AF_UNSPEC;
    req_init(&r, buf, sizeof buf, RTM_GETLINK, 0, &ifi, sizeof ifi);
    int e = req_put_str(&r, IFLA_IFNAME, ifname);
    if (e == 0) e = req_put_u32(&r, IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
    if (e == 0) e = nl_talk(&r, reply, sizeof reply);
    if (e < 0) return e;
    struct nlmsghdr *h = (struct nlmsghdr *)reply;
    if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct ifinfomsg))) return -EPROTO;
    struct ifinfomsg *got = NLMSG_DATA(h);
    memset(out, 0, sizeof *out);
    out->ifindex = got->ifi_index;
    out->flags = got->ifi_flags;
    int len = (int)IFLA_PAYLOAD(h);
    for (struct rtattr *a = IFLA_RTA(got); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        if (a->rta_type == IFLA_MTU && RTA_PAYLOAD(a) >= 4) {
            memcpy(&out->mtu, RTA_DATA(a), 4);
        } else if (a->rta_type == IFLA_MASTER && RTA_PAYLOAD(a) >= 4) {
            memcpy(&out->master_ifindex, RTA_DATA(a), 4);
        } else if (a->rta_type == IFLA_LINKINFO) {
            int ilen = (int)RTA_PAYLOAD(a);
            for (struct rtattr *i = RTA_DATA(a); RTA_OK(i, ilen); i = RTA_NEXT(i, ilen)) {
                if (i->rta_type != IFLA_INFO_KIND) continue;
                size_t k = RTA_PAYLOAD(i);
                if (k >= sizeof out->kind) k = sizeof out->kind - 1;
                memcpy(out->kind, RTA_DATA(i), k);
                out->kind[k] = 0;
            }
        }
    }
    return 0;
}

int lm_net_veth_create(const char *outside, const char *inside, pid_t child_pid, unsigned mtu) {
    if (!name_ok(outside) || !name_ok(inside) || child_pid <= 0) return -EINVAL;
    char buf[REQ_BYTES] __attribute__((aligned(NLMSG_ALIGNTO)));
    struct nl_req r;
    struct ifinfomsg ifi;
    memset(&ifi, 0, sizeof ifi);
    ifi.ifi_family = AF_UNSPEC;
    req_init(&r, buf, sizeof buf, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK, &ifi, sizeof ifi);
    int e = req_put_str(&r, IFLA_IFNAME, outside);
    if (e == 0 && mtu) e = req_put_u32(&r, IFLA_MTU, mtu);
    long info = e == 0 ? req_nest(&r, IFLA_LINKINFO) : e;
    if (info < 0) return (int)info;
    e = req_put_str(&r, IFLA_INFO_KIND, "veth");
    long data = e == 0 ? req_nest(&r, IFLA_INFO_DATA) : e;
    if (data < 0) return (int)data;
    long peer = req_nest(&r, VETH_INFO_PEER);
    if (peer < 0) return (int)peer;
    /* The peer's payload is its own ifinfomsg, then its attributes. */
    e = req_put_raw(&r, &ifi, sizeof ifi);
    if (e == 0) e = req_put_str(&r, IFLA_IFNAME, inside);
    if (e == 0) e = req_put_u32(&r, IFLA_NET_NS_PID, (unsigned)child_pid);
    if (e == 0 && mtu) e = req_put_u32(&r, IFLA_MTU, mtu);
    if (e < 0) return e;
    req_nest_end(&r, peer);
    req_nest_end(&r, data);
    req_nest_end(&r, info);
    return nl_talk(&r, NULL, 0);
}

int lm_net_bridge_create(const char *name) {
    if (!name_ok(name)) return -EINVAL;
    char buf[REQ_BYTES] __attribute__((aligned(NLMSG_ALIGNTO)));
    struct nl_req r;
    struct ifinfomsg ifi;
    memset(&ifi, 0, sizeof ifi);
    ifi.ifi_family = AF_UNSPEC;
    req_init(&r, buf, sizeof buf, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK, &ifi, sizeof ifi);
    int e = req_put_str(&r, IFLA_IFNAME, name);
    long info = e == 0 ? req_nest(&r, IFLA_LINKINFO) : e;
    if (info < 0) return (int)info;
    e = req_put_str(&r, IFLA_INFO_KIND, "bridge");
    if (e < 0) return e;
    req_nest_end(&r, info);
    return nl_talk(&r, NULL, 0);
}

int lm_net_link_to_netns(const char *ifname, pid_t child_pid) {
    if (!name_ok(ifname) || child_pid <= 0) return -EINVAL;
    char buf[REQ_BYTES] __attribute__((aligned(NLMSG_ALIGNTO)));
    struct nl_req r;
    int e = link_req(&r, buf, ifname, 0, 0);
    if (e == 0) e = req_put_u32(&r, IFLA_NET_NS_PID, (unsigned)child_pid);
    return e < 0 ? e : nl_talk(&r, NULL, 0);
}

int lm_net_bridge_attach(const char *ifname, const char *bridge) {
    if (!name_ok(ifname) || !name_ok(bridge)) return -EINVAL;
    struct lm_net_link_info br;
    int e = lm_net_link_get(bridge, &br);
    if (e < 0) return e;
    /* IFLA_MASTER also accepts bonds, teams and VRFs: insist on a bridge. */
    if (strcmp(br.kind, "bridge") != 0) return -EINVAL;
    char buf[REQ_BYTES] __attribute__((aligned(NLMSG_ALIGNTO)));
    struct nl_req r;
    e = link_req(&r, buf, ifname, 0, 0);
    if (e == 0) e = req_put_u32(&r, IFLA_MASTER, (unsigned)br.ifindex);
    return e < 0 ? e : nl_talk(&r, NULL, 0);
}

int lm_net_link_up(const char *ifname) {
    if (!name_ok(ifname)) return -EINVAL;
    char buf[REQ_BYTES] __attribute__((aligned(NLMSG_ALIGNTO)));
    struct nl_req r;
    int e = link_req(&r, buf, ifname, IFF_UP, IFF_UP);
    return e < 0 ? e : nl_talk(&r, NULL, 0);
}

int lm_net_link_set_mtu(const char *ifname, unsigned mtu) {
    if (!name_ok(ifname) || mtu == 0) return -EINVAL;
    char buf[REQ_BYTES] __attribute__((aligned(NLMSG_ALIGNTO)));
    struct nl_req r;
    int e = link_req(&r, buf, ifname, 0, 0);
    if (e == 0) e = req_put_u32(&r, IFLA_MTU, mtu);
    return e < 0 ? e : nl_talk(&r, NULL, 0);
}

int lm_net_link_delete(const char *ifname) {
    if (!name_ok(ifname)) return -EINVAL;
    char buf[REQ_BYTES] __attribute__((aligned(NLMSG_ALIGNTO)));
    struct nl_req r;
    struct ifinfomsg ifi;
    memset(&ifi, 0, sizeof ifi);
    ifi.ifi_family = AF_UNSPEC;
    req_init(&r, buf, sizeof buf, RTM_DELLINK, NLM_F_ACK, &ifi, sizeof ifi);
    int e = req_put_str(&r, IFLA_IFNAME, ifname);
    return e < 0 ? e : nl_talk(&r, NULL, 0);
}

int lm_net_loopback_up(void) {
    return lm_net_link_up("lo");
}

/* An address as the kernel wants it: family and 4 or 16 bytes. glibc's
 * inet_pton only parses the caller's buffers (no malloc, no locale), so it
 * is safe here. */
struct addr {
    int family;
    size_t len;
    unsigned char bytes[16];
};

static int parse_addr(const char *text, struct addr *a) {
    if (text == NULL) return -EINVAL;
    if (inet_pton(AF_INET, text, a->bytes) == 1) {
        a->family = AF_INET;
        a->len = 4;
        return 0;
    }
    if (inet_pton(AF_INET6, text, a->bytes) == 1) {
        a->family = AF_INET6;
        a->len = 16;
        return 0;
    }
    return -EINVAL;
}

int lm_net_addr_add(const char *ifname, const char *ip, unsigned prefixlen) {
    if (!name_ok(ifname)) return -EINVAL;
    struct addr a;
    int e = parse_addr(ip, &a);
    if (e < 0) return e;
    if (prefixlen > a.len * 8) return -EINVAL;
    struct lm_net_link_info link;
    e = lm_net_link_get(ifname, &link);
    if (e < 0) return e;
    char buf[REQ_BYTES] __attribute__((aligned(NLMSG_ALIGNTO)));
    struct nl_req r;
    struct ifaddrmsg ifa;
    memset(&ifa, 0, sizeof ifa);
    ifa.ifa_family = (unsigned char)a.family;
    ifa.ifa_prefixlen = (unsigned char)prefixlen;
    ifa.ifa_scope = RT_SCOPE_UNIVERSE;
    ifa.ifa_index = (unsigned)link.ifindex;
    if (a.family == AF_INET6) ifa.ifa_flags = IFA_F_NODAD;
    req_init(&r, buf, sizeof buf, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK, &ifa, sizeof ifa);
    e = req_put(&r, IFA_LOCAL, a.bytes, a.len);
    if (e == 0) e = req_put(&r, IFA_ADDRESS, a.bytes, a.len);
    if (e == 0 && a.family == AF_INET6) e = req_put_u32(&r, IFA_FLAGS, IFA_F_NODAD);
    if (e == 0 && a.family == AF_INET && prefixlen < 31) {
        /* The broadcast address ip as ip does with "brd +". */
        unsigned char brd[4];
        memcpy(brd, a.bytes, 4);
        for (unsigned bit = prefixlen; bit < 32; bit++) brd[bit / 8] |= (unsigned char)(0x80u >> (bit % 8));
        e = req_put(&r, IFA_BROADCAST, brd, 4);
    }
    return e < 0 ? e : nl_talk(&r, NULL, 0);
}

int lm_net_route_add_default(const char *ifname, const char *gateway) {
    if (!name_ok(ifname)) return -EINVAL;
    struct addr gw;
    int e = parse_addr(gateway, &gw);
    if (e < 0) return e;
    struct lm_net_link_info link;
    e = lm_net_link_get(ifname, &link);
    if (e < 0) return e;
    char buf[REQ_BYTES] __attribute__((aligned(NLMSG_ALIGNTO)));
    struct nl_req r;
    struct rtmsg rt;
    memset(&rt, 0, sizeof rt);
    rt.rtm_family = (unsigned char)gw.family;
    rt.rtm_dst_len = 0;
    rt.rtm_table = RT_TABLE_MAIN;
    rt.rtm_protocol = RTPROT_BOOT;
    rt.rtm_scope = RT_SCOPE_UNIVERSE;
    rt.rtm_type = RTN_UNICAST;
    req_init(&r, buf, sizeof buf, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK, &rt, sizeof rt);
    e = req_put(&r, RTA_GATEWAY, gw.bytes, gw.len);
    if (e == 0) e = req_put_u32(&r, RTA_OIF, (unsigned)link.ifindex);
    return e < 0 ? e : nl_talk(&r, NULL, 0);
}

int lm_net_configure_inside(const char *ifname, const char *ip, unsigned prefixlen,
                            const char *gateway, unsigned mtu) {
    int e = 0;
    if (mtu) e = lm_net_link_set_mtu(ifname, mtu);
    if (e == 0) e = lm_net_link_up(ifname);
    if (e == 0 && ip != NULL && ip[0] != 0) e = lm_net_addr_add(ifname, ip, prefixlen);
    if (e == 0 && gateway != NULL && gateway[0] != 0) e = lm_net_route_add_default(ifname, gateway);
    return e;
}

int lm_net_set_ip_forward(int on) {
    int fd;
    do {
        fd = open("/proc/sys/net/ipv4/ip_forward", O_WRONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return -errno;
    ssize_t w;
    do {
        w = write(fd, on ? "1\n" : "0\n", 2);
    } while (w < 0 && errno == EINTR);
    int e = w == 2 ? 0 : (w < 0 ? -errno : -EIO);
    close(fd);
    return e;
}

int lm_net_apply_inside(const struct lm_net_inside *n, int *step) {
    int failed = 0;
    int e = lm_net_loopback_up();
    if (e < 0) failed = LM_NET_STEP_LOOPBACK;
    int has_link = n->ifname != NULL && n->ifname[0] != 0;
    if (e == 0 && has_link && n->mtu) {
        e = lm_net_link_set_mtu(n->ifname, n->mtu);
        if (e < 0) failed = LM_NET_STEP_MTU;
    }
    if (e == 0 && has_link) {
        e = lm_net_link_up(n->ifname);
        if (e < 0) failed = LM_NET_STEP_LINK_UP;
    }
    if (e == 0 && has_link && n->ip != NULL && n->ip[0] != 0) {
        e = lm_net_addr_add(n->ifname, n->ip, n->prefixlen);
        if (e < 0) failed = LM_NET_STEP_ADDRESS;
    }
    if (e == 0 && has_link && n->gateway != NULL && n->gateway[0] != 0) {
        e = lm_net_route_add_default(n->ifname, n->gateway);
        if (e < 0) failed = LM_NET_STEP_ROUTE;
    }
    if (e == 0 && n->ip_forward >= 0) {
        e = lm_net_set_ip_forward(n->ip_forward);
        if (e < 0) failed = LM_NET_STEP_IP_FORWARD;
    }
    if (step) *step = failed;
    return e;
}

int lm_net_unshare_thread(void) {
    return unshare(CLONE_NEWNET) == 0 ? 0 : -errno;
}
