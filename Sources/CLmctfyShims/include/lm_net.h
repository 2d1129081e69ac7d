/* Virtual host networking over rtnetlink (NETLINK_ROUTE), without shelling
 * out to ip/brctl. Raw netlink rather than libmnl: libmnl's socket object
 * is heap-allocated (mnl_socket_open calls calloc), and the inside half of
 * this API runs in a child between clone and exec, where malloc is not
 * allowed; the few message builders we need are ~60 lines.
 *
 * Every function works in the network namespace of the calling *thread*
 * (the netlink socket is opened per call and belongs to that namespace),
 * and returns 0 or -errno (e.g. -EEXIST, -ENODEV, -EINVAL for a bad name or
 * address, -EPERM without CAP_NET_ADMIN).
 *
 * All of them are async-signal-safe: no malloc, no stdio, no locks, only
 * stack buffers and syscalls, so a child of a multi-threaded process may
 * call them between fork/clone and exec. They need about 24 KiB of stack
 * (a 16 KiB buffer for the kernel's link description), which a clone child
 * given its own stack must allow for. Interface names are 1..15 bytes
 * (IFNAMSIZ - 1), without '/', ':' or white space, and not "." or "..". */
#ifndef LM_NET_H
#define LM_NET_H

#include <sys/types.h>

/* ---- outside (the parent, in the host's namespace) ---- */

/* Creates a veth pair: `outside` in the caller's namespace, its peer
 * `inside` in the network namespace of process `child_pid`. mtu 0 keeps the
 * kernel's default (1500); otherwise both ends get it. Both ends are down. */
int lm_net_veth_create(const char *outside, const char *inside, pid_t child_pid, unsigned mtu);

/* Moves an existing interface of the caller's namespace into the network
 * namespace of `child_pid` (it arrives down, with its addresses dropped). */
int lm_net_link_to_netns(const char *ifname, pid_t child_pid);

/* Makes `ifname` a port of the Linux bridge `bridge` (brctl addif).
 * -ENODEV if either is missing; -EINVAL if `bridge` is not a bridge. */
int lm_net_bridge_attach(const char *ifname, const char *bridge);

/* Creates a Linux bridge (down). For tests and callers that own a bridge. */
int lm_net_bridge_create(const char *name);

/* Sets IFF_UP on `ifname`. */
int lm_net_link_up(const char *ifname);

/* Sets the MTU of `ifname` (68..65535 for most drivers). */
int lm_net_link_set_mtu(const char *ifname, unsigned mtu);

/* Deletes `ifname` (for a veth, its peer goes with it). */
int lm_net_link_delete(const char *ifname);

/* What the kernel says about one link. */
struct lm_net_link_info {
    int ifindex;
    unsigned mtu;
    unsigned flags;        /* IFF_* (IFF_UP = 1) */
    int master_ifindex;    /* the bridge it is a port of, 0 if none */
    char kind[16];         /* IFLA_INFO_KIND: "veth", "bridge", "" if none */
};

/* Looks `ifname` up; -ENODEV if there is no such link. */
int lm_net_link_get(const char *ifname, struct lm_net_link_info *out);

/* Moves the calling thread (only) into a new, empty network namespace:
 * unshare(CLONE_NEWNET), which Swift cannot call (<sched.h> declares it
 * only under _GNU_SOURCE). The namespace and its links go away when no
 * thread or process is left in it. */
int lm_net_unshare_thread(void);

/* ---- inside (the child, in its own namespace; async-signal-safe) ---- */

/* Brings the loopback interface up (ip link set lo up). */
int lm_net_loopback_up(void);

/* Adds address `ip`/`prefixlen` (IPv4 dotted quad, or IPv6 text, which is
 * added without duplicate address detection so it is usable at once). */
int lm_net_addr_add(const char *ifname, const char *ip, unsigned prefixlen);

/* Adds a default route via `gateway` (IPv4 or IPv6) out of `ifname`. */
int lm_net_route_add_default(const char *ifname, const char *gateway);

/* The inside steps of a virtual host in order: mtu (if non-zero), link up,
 * the address, then the default route (if `gateway` is not NULL or ""). */
int lm_net_configure_inside(const char *ifname, const char *ip, unsigned prefixlen,
                            const char *gateway, unsigned mtu);

/* Writes 0 or 1 to /proc/sys/net/ipv4/ip_forward of the caller's network
 * namespace (the namespace of the task that opens the file). */
int lm_net_set_ip_forward(int on);

/* Everything a virtual host does inside its network namespace, in one call
 * for the clone child: loopback up, then (if ifname is set) mtu, link up,
 * address and default route, then ip_forward. NULL or "" skips a step;
 * mtu 0 keeps the link's; ip_forward < 0 leaves the sysctl alone. */
struct lm_net_inside {
    const char *ifname;
    const char *ip;
    unsigned prefixlen;
    const char *gateway;
    unsigned mtu;
    int ip_forward;
};

/* Which step of lm_net_apply_inside failed (for the error message). */
enum lm_net_step {
    LM_NET_STEP_LOOPBACK = 1,
    LM_NET_STEP_MTU,
    LM_NET_STEP_LINK_UP,
    LM_NET_STEP_ADDRESS,
    LM_NET_STEP_ROUTE,
    LM_NET_STEP_IP_FORWARD,
};

/* Applies `n`; 0, or -errno with the failed step in *step (if not NULL). */
int lm_net_apply_inside(const struct lm_net_inside *n, int *step);

#endif
