/* lmctfy-test-helper fuse-hang DIR: mounts at DIR a FUSE filesystem that
 * answers the kernel's INIT and nothing else, prints "ready", and keeps
 * every later request unanswered until its stdin closes (then it unmounts
 * DIR, lazily, and exits; closing /dev/fuse aborts the connection, so
 * whoever waits on it gets ENOTCONN).
 * A task that looks anything up below DIR then waits on the filesystem
 * first interruptibly and, once a freezer's wake-up interrupts that wait,
 * killably: a task no freezer (cgroup v1 or v2) can freeze, the real
 * kernel case behind a pause that does not finish. Only the tests that
 * need such a task run this, on a directory of their own. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

int fusehang_main(const char *dir) {
    int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd < 0) { printf("err %d open /dev/fuse\n", errno); fflush(stdout); return 1; }
    char opts[128];
    snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=0,group_id=0", fd);
    if (mount("lmctfy-fuse-hang", dir, "fuse", MS_NOSUID | MS_NODEV, opts) != 0) {
        printf("err %d mount\n", errno); fflush(stdout); return 1;
    }
    printf("ready\n");
    fflush(stdout);
    static char buf[1 << 17];   /* at least FUSE_MIN_READ_BUFFER and the largest write */
    struct pollfd fds[2] = { { .fd = 0, .events = POLLIN }, { .fd = fd, .events = POLLIN } };
    for (;;) {
        if (poll(fds, 2, -1) < 0) { if (errno == EINTR) continue; break; }
        if (fds[0].revents) {
            char c;
            ssize_t n = read(0, &c, 1);
            if (n <= 0) break;   /* stdin closed: the test is done (or gone) */
        }
        if (fds[1].revents & POLLIN) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0) { if (errno == EINTR || errno == ENOENT) continue; break; }
            if ((size_t)n < sizeof(struct fuse_in_header)) continue;
            struct fuse_in_header *in = (struct fuse_in_header *)buf;
            if (in->opcode != FUSE_INIT) continue;   /* never answered */
            struct fuse_init_in *init = (struct fuse_init_in *)(buf + sizeof *in);
            struct { struct fuse_out_header h; struct fuse_init_out o; } reply;
            memset(&reply, 0, sizeof reply);
            reply.h.len = sizeof reply;
            reply.h.unique = in->unique;
            reply.o.major = FUSE_KERNEL_VERSION;
            reply.o.minor = init->minor < FUSE_KERNEL_MINOR_VERSION ? init->minor : FUSE_KERNEL_MINOR_VERSION;
            reply.o.max_readahead = init->max_readahead;
            reply.o.max_write = 4096;
            if (write(fd, &reply, sizeof reply) < 0) break;
        } else if (fds[1].revents) {
            break;   /* the connection was aborted */
        }
    }
    umount2(dir, MNT_DETACH);
    return 0;
}
