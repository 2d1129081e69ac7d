#define _GNU_SOURCE
#include "lm_vhost.h"

#include "child_io.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/mount.h>


/* The failure record the child writes on the status pipe. */
struct vh_failure {
    int err, stage, index;
};

/* mkdir -p of one level, for the mount points the kernel's own filesystems
 * need in a rootfs that lacks them; an existing one is fine if it is a
 * directory: not a symlink, nor anything else (mount(2) and move_mount
 * follow a symlink, within the new root: a rootfs's `run -> /` had the
 * /run tmpfs hide its whole root, and every run failed; the virtual host
 * probe). */
static int vh_mkdir(const char *path, mode_t mode) {
    struct stat st;
    if (mkdir(path, mode) == 0) return 0;
    if (errno != EEXIST || lstat(path, &st) < 0) return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

/* Whether path is a mount point of its own (not on the same mount as /). */
static int vh_is_mountpoint(const char *path) {
    struct stat a, b;
    if (stat(path, &a) < 0 || stat("/", &b) < 0) return 0;
    return a.st_dev != b.st_dev;
}

/* A new, detached mount of a kernel filesystem (proc, sysfs): made while
 * the host's are still visible (the kernel lets a user namespace mount proc
 * or sysfs only then), attached after pivot_root like the binds. */
static int vh_fs_mount(const char *type) {
    int fs = (int)syscall(SYS_fsopen, type, FSOPEN_CLOEXEC);
    if (fs < 0) return -1;
    if (syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
        int e = errno;
        close(fs);
        errno = e;
        return -1;
    }
    int m = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC,
                         MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC | MOUNT_ATTR_RELATIME);
    int e = errno;
    close(fs);
    errno = e;
    return m;
}

#define FAIL(st, i) do { f->err = errno; f->stage = (st); f->index = (i); return; } while (0)

/* The child's set-up after the parent said go; returns only on failure. */
static void vh_child_setup(const struct lm_vh_opts *o, int status_fd, struct vh_failure *f) {
    /* The maps are written (the parent did before the go): become root of
     * the new user namespace, keeping its capabilities across exec. */
    if (o->new_user && (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)) FAIL(LM_VH_USERNS, -1);
    int devnull = -1;
    if (lm_child_dup(o->stdin_fd, 0, &devnull) < 0 || lm_child_dup(o->stdout_fd, 1, &devnull) < 0 || lm_child_dup(o->stderr_fd, 2, &devnull) < 0) FAIL(LM_VH_STDIO, -1);
    if (devnull > 2) close(devnull);
    if (setsid() < 0) FAIL(LM_VH_SESSION, -1);

    /* Nothing mounted from here on reaches the host: the whole tree becomes
     * a slave (host mounts still propagate in, ours never out). */
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0) FAIL(LM_VH_PROPAGATION, -1);

    /* Each requested bind, cloned from its host source now (the host's
     * paths are gone after pivot_root) and attached after pivot_root, where
     * its target resolves inside the new root only: a hostile rootfs's
     * symlinks cannot point a mount outside it. */
    int tree_fds[64];
    int n = o->n_mounts;
    if (n > 64) { errno = E2BIG; FAIL(LM_VH_MOUNT_SOURCE, 64); }
    for (int i = 0; i < n; i++) {
        const struct lm_vh_mount *m = &o->mounts[i];
        int fd = (int)syscall(SYS_open_tree, AT_FDCWD, m->source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
        if (fd < 0) FAIL(LM_VH_MOUNT_SOURCE, i);
        struct mount_attr attr;
        memset(&attr, 0, sizeof attr);
        if (m->read_only) attr.attr_set |= MOUNT_ATTR_RDONLY;
        attr.propagation = m->private_ ? MS_PRIVATE : MS_SLAVE;
        if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) < 0) {
            /* A clone of a private source cannot be a slave: private then. */
            attr.propagation = MS_PRIVATE;
            if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) < 0)
                FAIL(LM_VH_MOUNT_SOURCE, i);
        }
        tree_fds[i] = fd;
    }

    int proc_fd = vh_fs_mount("proc");
    if (proc_fd < 0) FAIL(LM_VH_PROC, -1);
    int sys_fd = vh_fs_mount("sysfs");
    if (sys_fd < 0) FAIL(LM_VH_SYS, -1);

    int pivoted = 0;
    if (o->rootfs && strcmp(o->rootfs, "/") != 0) {
        /* pivot_root needs the new root to be a mount point. */
        if (mount(o->rootfs, o->rootfs, NULL, MS_BIND | MS_REC, NULL) < 0) FAIL(LM_VH_ROOTFS, -1);
        if (chdir(o->rootfs) < 0) FAIL(LM_VH_ROOTFS, -1);
        /* pivot_root(".", "."): the old root ends up stacked on the new one
         * and is detached at once, with every host mount below it. */
        if (syscall(SYS_pivot_root, ".", ".") == 0) {
            if (umount2(".", MNT_DETACH) < 0) FAIL(LM_VH_PIVOT, -1);
        } else if (errno == EINVAL) {
            /* The machine's root is the initramfs (rootfs), which cannot be
             * pivoted away from (the v2 test guest): move the new root over
             * it and chroot, as crun and runc do there. */
            if (mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0) FAIL(LM_VH_PIVOT, -1);
        } else {
            FAIL(LM_VH_PIVOT, -1);
        }
        if (chdir("/") < 0) FAIL(LM_VH_PIVOT, -1);
        pivoted = 1;
    }
    /* A shared root (an image): read-only from here on, before anything is
     * made in it; its mount points (proc, sys, run) must exist already. */
    if (pivoted && o->rootfs_read_only &&
        mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0)
        FAIL(LM_VH_ROOTFS, -1);

    for (int i = 0; i < n; i++) {
        if (syscall(SYS_move_mount, tree_fds[i], "", AT_FDCWD, o->mounts[i].target, MOVE_MOUNT_F_EMPTY_PATH) < 0)
            FAIL(LM_VH_MOUNT_TARGET, i);
        close(tree_fds[i]);
    }

    if (vh_mkdir("/proc", 0555) < 0 ||
        syscall(SYS_move_mount, proc_fd, "", AT_FDCWD, "/proc", MOVE_MOUNT_F_EMPTY_PATH) < 0)
        FAIL(LM_VH_PROC, -1);
    close(proc_fd);
    if (vh_mkdir("/sys", 0555) < 0 ||
        syscall(SYS_move_mount, sys_fd, "", AT_FDCWD, "/sys", MOVE_MOUNT_F_EMPTY_PATH) < 0)
        FAIL(LM_VH_SYS, -1);
    close(sys_fd);
    /* A devpts of its own; best effort, as in the original (no console is
     * requested here). */
    if (access("/dev", F_OK) == 0 && vh_mkdir("/dev/pts", 0755) == 0 &&
        mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC | MS_RELATIME,
              "newinstance,ptmxmode=0666,mode=0620") == 0) {
        if (access("/dev/ptmx", F_OK) == 0) mount("/dev/pts/ptmx", "/dev/ptmx", NULL, MS_BIND, NULL);
    }
    /* The machine file (best effort, as in the original): in its own root,
     * a 5 MiB tmpfs on /run unless it is a mount point already. On the
     * host's root /run is the host's: the tmpfs goes on /run/lmctfy
     * (lmctfy's own directory there), and without it no file is written
     * (it was written into the host's /run, and stayed after the destroy;
     * the virtual host probe). */
    if (o->machine_spec && vh_mkdir("/run", 0755) == 0) {
        int ready;
        if (pivoted) {
            if (!vh_is_mountpoint("/run"))
                mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "size=5m,mode=0755");
            ready = vh_mkdir("/run/lmctfy", 0755) == 0;
        } else {
            ready = vh_mkdir("/run/lmctfy", 0755) == 0 &&
                    mount("tmpfs", "/run/lmctfy", "tmpfs", MS_NOSUID | MS_NODEV, "size=5m,mode=0755") == 0;
        }
        if (ready) {
            int fd = open("/run/lmctfy/.machine.spec", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
            if (fd >= 0) {
                lm_child_write_all(fd, o->machine_spec, strlen(o->machine_spec));
                close(fd);
            }
        }
    }

    if (o->hostname && sethostname(o->hostname, strlen(o->hostname)) < 0) FAIL(LM_VH_HOSTNAME, -1);

    if (o->new_net) {
        int step = LM_NET_STEP_LOOPBACK;
        int rc = o->net ? lm_net_apply_inside(o->net, &step) : lm_net_loopback_up();
        if (rc < 0) { errno = -rc; FAIL(LM_VH_NETWORK, step); }
    }

    if (o->set_ids) {
        if (setgroups((size_t)o->n_groups, o->n_groups > 0 ? o->groups : NULL) < 0 || setgid(o->gid) < 0 ||
            setuid(o->uid) < 0)
            FAIL(LM_VH_IDS, -1);
    }
    if (o->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) FAIL(LM_VH_NO_NEW_PRIVS, -1);

    /* Nothing of the caller's but stdio reaches init (the status pipe and
     * the init's descriptor are close-on-exec already). */
    if (syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */) < 0) {
        for (int fd = 3; fd < 1024; fd++) {
            if (fd != status_fd && fd != o->init_fd) {
                int fl = fcntl(fd, F_GETFD);
                if (fl >= 0) fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
            }
        }
    }
    if (o->init_fd >= 0) {
        syscall(SYS_execveat, o->init_fd, "", o->argv, o->envp, AT_EMPTY_PATH);
    } else {
        /* With a slash or not, as execvp(3): a file without "#!" under
         * the /bin/sh it sees. */
        execvpe(o->argv[0], o->argv, o->envp);
    }
    FAIL(LM_VH_EXEC, -1);
}

static void vh_child_main(const struct lm_vh_opts *o, int go_fd, int status_fd) {
    for (int s = 1; s < NSIG; s++) {
        if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
    }
    /* If the caller dies before releasing us, the go pipe reads EOF. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct vh_failure f = {0, LM_VH_NONE, -1};
    for (int i = 0; i < o->n_cgroup_files; i++) {
        int fd = open(o->cgroup_files[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || lm_child_write_all(fd, "0", 1) < 0) {
            f.err = errno; f.stage = LM_VH_CGROUP; f.index = i;
            break;
        }
        close(fd);
    }
    /* Even a failure waits for the go: the parent's write of it must find
     * a reader (no SIGPIPE in a caller that does not ignore it). */
    char go = 0;
    ssize_t r;
    do {
        r = read(go_fd, &go, 1);
    } while (r < 0 && errno == EINTR);
    if (r != 1) _exit(127);  /* the parent gave up */
    close(go_fd);
    if (f.stage != LM_VH_NONE) {
        lm_child_write_all(status_fd, (const char *)&f, sizeof f);
        _exit(127);
    }
    vh_child_setup(o, status_fd, &f);
    lm_child_write_all(status_fd, (const char *)&f, sizeof f);
    _exit(127);
}

static void vh_reap(pid_t pid) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
}

int lm_vh_clone(const struct lm_vh_opts *o, struct lm_vh_child *c, int *err, int *stage, int *index) {
    int go[2], st[2];
    *err = 0; *stage = LM_VH_NONE; *index = -1;
    c->pid = -1; c->go_fd = -1; c->status_fd = -1;
    if (pipe2(go, O_CLOEXEC) < 0) { *err = errno; *stage = LM_VH_CLONE; return -1; }
    if (pipe2(st, O_CLOEXEC) < 0) {
        *err = errno; *stage = LM_VH_CLONE;
        close(go[0]); close(go[1]);
        return -1;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    /* The init must not be our child (nobody here reaps it: the agent
     * has no blanket reaper, a library caller may have none): an
     * intermediate clones it and exits at once, so it is re-parented to
     * the machine's reaper, as nscon's init was when nscon exited. */
    pid_t mid = fork();
    if (mid == 0) {
        /* A raw clone without a new stack behaves as fork (the child gets
         * a copy of our memory), with the namespace flags fork cannot take. */
        int flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC;
        if (o->new_uts) flags |= CLONE_NEWUTS;
        if (o->new_net) flags |= CLONE_NEWNET;
        if (o->new_user) flags |= CLONE_NEWUSER;
        long pid = syscall(SYS_clone, (unsigned long)(flags | SIGCHLD), NULL, NULL, NULL, NULL);
        if (pid == 0) {
            close(go[1]);
            close(st[0]);
            vh_child_main(o, go[0], st[1]);
        }
        struct vh_failure rec = {errno, LM_VH_CLONE, -1};
        if (pid > 0) { rec.err = (int)pid; rec.stage = LM_VH_NONE; rec.index = -2; }
        lm_child_write_all(st[1], (const char *)&rec, sizeof rec);
        _exit(0);
    }
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(go[0]);
    close(st[1]);
    if (mid < 0) {
        close(go[1]); close(st[0]);
        *err = fork_errno; *stage = LM_VH_CLONE;
        return -1;
    }
    struct vh_failure rec;
    ssize_t r;
    do {
        r = read(st[0], &rec, sizeof rec);
    } while (r < 0 && errno == EINTR);
    int read_errno = errno;
    vh_reap(mid);
    if (r != (ssize_t)sizeof rec || rec.index != -2) {
        close(go[1]); close(st[0]);
        if (r == (ssize_t)sizeof rec) { *err = rec.err; *stage = rec.stage; }
        else { *err = r < 0 ? read_errno : EPROTO; *stage = LM_VH_CLONE; }
        return -1;
    }
    pid_t pid = rec.err;
    c->pid = (pid_t)pid;
    c->go_fd = go[1];
    c->status_fd = st[0];
    return 0;
}

static int vh_read_status(struct lm_vh_child *c, int *err, int *stage, int *index) {
    struct vh_failure f;
    ssize_t r;
    do {
        r = read(c->status_fd, &f, sizeof f);
    } while (r < 0 && errno == EINTR);
    close(c->status_fd);
    c->status_fd = -1;
    if (r == 0) return 0;  /* EOF: exec'd */
    if (r != (ssize_t)sizeof f) {
        *err = r < 0 ? errno : EPROTO; *stage = LM_VH_WAIT; *index = -1;
    } else {
        *err = f.err; *stage = f.stage; *index = f.index;
    }
    /* Not our child (see lm_vh_clone), so never signalled by pid here (it
     * may be gone and the pid reused): it exits on its own after the record. */
    c->pid = -1;
    return -1;
}

int lm_vh_release(struct lm_vh_child *c, int *err, int *stage, int *index) {
    *err = 0; *stage = LM_VH_NONE; *index = -1;
    char go = 1;
    if (lm_child_write_all(c->go_fd, &go, 1) < 0) {
        *err = errno; *stage = LM_VH_WAIT;
        lm_vh_abort(c);
        return -1;
    }
    close(c->go_fd);
    c->go_fd = -1;
    return vh_read_status(c, err, stage, index);
}

void lm_vh_abort(struct lm_vh_child *c) {
    if (c->go_fd >= 0) { close(c->go_fd); c->go_fd = -1; }
    if (c->status_fd >= 0) { close(c->status_fd); c->status_fd = -1; }
    /* The go pipe's EOF makes it exit (it is not our child: no kill by a
     * pid that may have been reused). */
    c->pid = -1;
}

int lm_open_exec_path(const char *path) {
    return open(path, O_PATH | O_CLOEXEC);
}
