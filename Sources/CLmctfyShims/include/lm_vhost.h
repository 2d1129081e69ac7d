/* Virtual hosts: starting a container's init in new namespaces (pid, ipc,
 * mnt, and uts / net when asked), inside its root filesystem. Everything
 * between clone and exec is here, in C: the child of a multi-threaded Swift
 * process may only call async-signal-safe functions, and most of what it
 * does (pivot_root, mounts, setns) changes the calling process.
 *
 * Two calls, so that the parent can set up what lives outside the child's
 * namespaces (a veth's outer end) while the child waits on a pipe:
 *   lm_vh_clone   clones the child, which joins the container's cgroups and
 *                 waits;
 *   lm_vh_release lets it go on (filesystem, hostname, network, ids, exec)
 *                 and waits for its exec or its failure;
 *   lm_vh_abort   makes a child that is not to go on exit.
 * The init is not the caller's child: an intermediate clones it and exits,
 * so it is re-parented to the machine's reaper and nobody here must reap it. */
#ifndef LM_VHOST_H
#define LM_VHOST_H

#include <sys/types.h>

#include "lm_net.h"

/* A bind mount from the host into the virtual host. */
struct lm_vh_mount {
    const char *source;   /* host path, resolved before pivot_root */
    const char *target;   /* path inside the new root, resolved after pivot_root */
    int read_only;
    int private_;         /* private propagation (else a slave of the source) */
};

struct lm_vh_opts {
    /* Files the child writes "0" to (cgroup.procs or tasks), first thing. */
    const char *const *cgroup_files;
    int n_cgroup_files;
    /* New pid, mnt and ipc namespaces always; uts and net when set (the
     * CLONE_ constants need _GNU_SOURCE, which Swift's Glibc lacks). */
    int new_uts;
    int new_net;
    /* A user namespace too: the parent writes its uid/gid maps before the
     * go, and the child then becomes root inside (setresuid/setresgid 0). */
    int new_user;
    /* Absolute host path of the new root; "/" keeps the host's (no pivot). */
    const char *rootfs;
    /* Remount the new root read-only once proc, sys, devpts, /run and the
     * mounts are in place (an image shared by several virtual hosts). */
    int rootfs_read_only;
    const struct lm_vh_mount *mounts;
    int n_mounts;
    /* Text written to /run/lmctfy/.machine.spec (best effort); NULL: none. */
    const char *machine_spec;
    /* sethostname (needs CLONE_NEWUTS); NULL: keep. */
    const char *hostname;
    /* Network inside (needs new_net; lm_net_apply_inside); NULL: loopback
     * only. Loopback is brought up in every new network namespace. */
    const struct lm_net_inside *net;
    /* stdio, as lm_spawn: a descriptor, -1 for /dev/null, -2 to keep. */
    int stdin_fd, stdout_fd, stderr_fd;
    /* Drop to these ids (groups: the supplementary groups, may be empty). */
    int set_ids;
    uid_t uid;
    gid_t gid;
    const gid_t *groups;
    int n_groups;
    int no_new_privs;
    /* The init: an open descriptor of a (static) executable, run with
     * execveat after pivot_root; or -1, then argv[0] is looked up inside the
     * new root (PATH of envp when it has no '/'). */
    int init_fd;
    char *const *argv;
    char *const *envp;
};

/* Where the child failed. */
enum lm_vh_stage {
    LM_VH_NONE = 0,
    LM_VH_CLONE = 1,
    LM_VH_CGROUP = 2,
    LM_VH_STDIO = 3,
    LM_VH_SESSION = 4,
    LM_VH_PROPAGATION = 5,
    LM_VH_ROOTFS = 6,
    LM_VH_MOUNT_SOURCE = 7,
    LM_VH_PIVOT = 8,
    LM_VH_MOUNT_TARGET = 9,
    LM_VH_PROC = 10,
    LM_VH_SYS = 11,
    LM_VH_HOSTNAME = 12,
    LM_VH_NETWORK = 13,
    LM_VH_IDS = 14,
    LM_VH_NO_NEW_PRIVS = 15,
    LM_VH_EXEC = 16,
    LM_VH_WAIT = 17,
    /* 18 is the Swift side's (opening the init) */
    LM_VH_USERNS = 19,
};

/* A child between clone and release. */
struct lm_vh_child {
    pid_t pid;     /* in the caller's pid namespace */
    int go_fd;     /* write end: one byte = go on; closed = exit */
    int status_fd; /* read end: EOF = exec'd; else a failure record */
};

/* Clones the child (it joins its cgroups, then waits). 0, or -1 with *err
 * and *stage (and *index for LM_VH_CGROUP). */
int lm_vh_clone(const struct lm_vh_opts *opts, struct lm_vh_child *child, int *err, int *stage, int *index);

/* Lets the child go on and waits until it exec'd (0) or failed (-1 with
 * *err, *stage, *index; the child exits on its own). */
int lm_vh_release(struct lm_vh_child *child, int *err, int *stage, int *index);

/* Closes the go pipe of a child that was not released: it exits. */
void lm_vh_abort(struct lm_vh_child *child);

/* open(path, O_PATH | O_CLOEXEC): a descriptor to exec the init by (O_PATH
 * needs _GNU_SOURCE). */
int lm_open_exec_path(const char *path);

#endif
