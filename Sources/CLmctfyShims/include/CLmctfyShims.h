/* C shims for what Swift cannot (or must not) do itself. Every item says why.
 * Names carry the lm_ prefix. */
#ifndef CLMCTFY_SHIMS_H
#define CLMCTFY_SHIMS_H

#include <signal.h>
#include <stddef.h>
/* Not part of Swift's Glibc module: re-exported so LmctfySystem can wrap them. */
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <sys/timerfd.h>
#include <sys/xattr.h>
/* Signal-safe process spawning into containers (spawn.c). */
#include "lm_spawn.h"
/* Virtual hosts: init in new namespaces and its own root (vhost.c). */
#include "lm_vhost.h"
/* Virtual host networking over rtnetlink, no ip/brctl (netlink.c). */
#include "lm_net.h"
/* Per-thread working directory for archive extraction (fs.c). */
#include "lm_fs.h"
/* The libuv casts live in CLmctfyUV (lm_uv.h), not here: every importer
 * of this module (CL1, the CLI) would otherwise see libuv. */

/* ThreadSanitizer cannot see Synchronization.Mutex order anything: its lock
 * and unlock run in the standard library, which is not instrumented, so two
 * critical sections on different threads look like a race to it. Mutex.locked
 * (LmctfySystem/Lock.swift, which Lock and Mutexed lock with) therefore tells
 * it itself: acquire once the mutex is held, release before it is given up,
 * on the mutex's address (the annotations of <sanitizer/tsan_interface.h>). Where
 * the TSan runtime is not linked (every build but `--sanitize=thread`), the
 * weak symbols are null and these do nothing. */
extern void __tsan_acquire(void *addr) __attribute__((weak));
extern void __tsan_release(void *addr) __attribute__((weak));
static inline void lm_tsan_acquire(void *addr) { if (__tsan_acquire) __tsan_acquire(addr); }
static inline void lm_tsan_release(void *addr) { if (__tsan_release) __tsan_release(addr); }

/* Bytes of heap in use (glibc mallinfo2().uordblks). <malloc.h> is not part
 * of Swift's Glibc module, so Swift cannot call mallinfo2 directly; the
 * tests use it as a leak check around the protobuf-c conversions. */
size_t lm_heap_in_use(void);

/* mallopt(M_MMAP_THRESHOLD, bytes): every allocation of at least `bytes`
 * is its own mapping, given back to the kernel when freed. glibc raises the
 * threshold as such blocks are freed (up to 32 MiB), after which a daemon's
 * large frames stayed in its arenas: RSS kept at its peak for good once the
 * peers that caused it had gone. Returns mallopt's 1, or 0. */
int lm_malloc_fixed_mmap_threshold(size_t bytes);

/* pipe2(fds, O_CLOEXEC): atomic close-on-exec, so a fork in another thread
 * never inherits the pipe. pipe2 needs _GNU_SOURCE, which Swift's Glibc
 * module does not define. */
int lm_pipe_cloexec(int fds[2]);

/* flock(2) with an exclusive lock, waiting (0 or -1 with errno). Swift
 * imports `flock` as the struct of the same name and cannot call the
 * function. */
int lm_flock_exclusive(int fd);
/* The same without waiting: -1 with EWOULDBLOCK while another holds it. */
int lm_flock_exclusive_now(int fd);

/* A signalfd (close-on-exec, non-blocking) for the n signals given, which
 * are blocked on the calling thread (*old: the mask before). Returns the
 * descriptor, or -1 with errno (nothing changed). */
int lm_signalfd_open(const int *signals, int n, sigset_t *old);
/* The next signal read from a signalfd: its number, 0 when none waits, -1
 * with errno on failure. */
int lm_signalfd_next(int fd);

/* SIGINT, SIGTERM and SIGHUP caught into a flag (SA_RESTART: interrupted
 * calls go on) until lm_release_sigint puts the previous dispositions back;
 * lm_sigint_caught says which came since lm_catch_sigint (0: none). */
int lm_catch_sigint(void);
int lm_sigint_caught(void);
int lm_release_sigint(void);

/* The signals of a command-line tool that runs a foreground command and
 * must outlive it to clean up after it (lmctfy run --create --rm), from
 * before anything is made until the cleanup is over. lm_job_signals_start:
 * SIGINT and SIGQUIT ignored (the terminal sends them to the command too,
 * as system(3)); SIGTERM and SIGHUP caught, unless ignored already (nohup:
 * they stay ignored). Returns 0, or -1 with errno (nothing changed), and
 * in *ignored the bits (1 << sig) of those four that were ignored before.
 * A caught signal is sent to the process of the pidfd given to
 * lm_job_signals_forward (pidfd_send_signal: never to a later process with
 * its pid), and held otherwise: lm_job_signals_caught says the last one
 * held (0: none). lm_job_signals_forward(fd) also sends one held since the
 * last look; lm_job_signals_forward(-1) holds again. lm_job_signals_stop
 * puts the four dispositions back. One user at a time (the main thread). */
int lm_job_signals_start(unsigned long long *ignored);
void lm_job_signals_forward(int pidfd);
int lm_job_signals_caught(void);
int lm_job_signals_stop(void);

/* renameat2(2) with RENAME_NOREPLACE: moves `from` to `to` only if nothing
 * is at `to` (EEXIST otherwise), atomically. 0 or -1 with errno. */
int lm_rename_noreplace(const char *from, const char *to);

/* Ignores SIGPIPE process-wide (idempotent; returns 0 or -1 with errno).
 * libuv does not, so a write to a peer that went away would kill the
 * process instead of failing with EPIPE. SIG_IGN is a cast macro
 * ((__sighandler_t) 1), which Swift does not import. */
int lm_ignore_sigpipe(void);

/* SO_PEERCRED of a connected Unix socket: the peer's pid, uid and gid as
 * of connect()/listen(). Returns 0 or -1 with errno. struct ucred is only
 * declared under _GNU_SOURCE, which Swift's Glibc module does not define. */
int lm_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid);

/* getrandom(2) with no flags (the kernel CSPRNG; blocks only until it is
 * seeded at boot): fills up to len bytes, returns how many or -1 with errno.
 * Swift's Glibc module does not export <sys/random.h>. */
long lm_getrandom(void *buf, size_t len);

/* pidfd_open(2) with no flags: a descriptor (close-on-exec) that polls
 * readable once the process has exited, also for a process that is not our
 * child (whose exit status waitid would refuse us: ECHILD). Returns it, or
 * -1 with errno. Swift cannot call the variadic syscall(2). */
int lm_pidfd_open(pid_t pid);

/* pidfd_send_signal(2) with no info and no flags: signals the very process
 * the descriptor refers to (never a later one that reuses its pid). 0, or
 * -1 with errno (ESRCH once it has exited). */
int lm_pidfd_send_signal(int pidfd, int sig);

#endif
