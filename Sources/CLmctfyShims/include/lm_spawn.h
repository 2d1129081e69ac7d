/* Starting a process inside a container. No Swift runs between fork and
 * exec: the Swift runtime is not async-signal-safe, and a child of a
 * multi-threaded process may only call async-signal-safe functions. */
#ifndef LM_SPAWN_H
#define LM_SPAWN_H

#include <sys/types.h>

/* What the child does before exec, in this order. */
struct lm_spawn_opts {
    /* argv[0] is looked up in PATH (as execvp does) unless it contains '/'. */
    char *const *argv;
    char *const *envp;              /* NULL: inherit environ */
    /* Absolute paths of cgroup.procs files the child writes "0" to, so it is
     * accounted to the container from its first instruction. */
    const char *const *cgroup_files;
    int n_cgroup_files;
    /* After joining: pids.max and pids.current of each pids cgroup whose
     * limit the child counts against (2 * n_pids_limits paths: max, then
     * current). The kernel charges a task that joins a cgroup without
     * checking pids.max (only fork and clone check it), so the child checks:
     * a current above the max fails with EAGAIN and LM_STAGE_PIDS. */
    const char *const *pids_limit_files;
    int n_pids_limits;
    /* stdio: a descriptor to dup onto 0/1/2, -1 for /dev/null, -2 to keep. */
    int stdin_fd, stdout_fd, stderr_fd;
    int new_session;                /* setsid() */
    /* After setsid: stdin (a terminal) becomes the controlling terminal
     * of the new session (TIOCSCTTY). */
    int controlling_tty;
    int set_oom_score_adj;          /* write oom_score_adj below */
    int oom_score_adj;
    int set_ids;                    /* drop to gid/uid (clears supplementary groups) */
    uid_t uid;
    gid_t gid;
    int close_fds;                  /* close every fd above 2 */
    /* Double fork: the command is not the caller's child (nothing to reap;
     * used for detached runs). */
    int detach;
    /* A virtual host's namespaces (descriptors of /proc/<init>/ns/<kind>),
     * entered by the child in this order after oom_score_adj (user first,
     * mnt last, then chdir("/")). */
    const int *ns_fds;
    int n_ns_fds;
    /* Its pid namespace (-1: none) and ours, to come back to: the child is
     * born in it (setns only changes where the caller's children go), so
     * the pid returned is still the caller's view and the child the
     * caller's. lm_exec forks once more for it and exits with the child's
     * status. */
    int pidns_fd;
    int self_pidns_fd;
    /* ns_fds[0] is a user namespace: become its root (setresgid and
     * setresuid 0) after entering, so the command keeps root there. */
    int enter_user_root;
    /* Signals (bit s for signal s, 1-63) the child leaves ignored; every
     * other disposition goes back to its default. What a caller that was
     * itself started with them ignored (nohup, a background job of a
     * non-interactive shell) passes on, as an exec would. */
    unsigned long long keep_ignored;
};

/* Stages reported on failure, so the error can say what failed. */
enum lm_spawn_stage {
    LM_STAGE_NONE = 0,
    LM_STAGE_FORK = 1,
    LM_STAGE_CGROUP = 2,
    LM_STAGE_STDIO = 3,
    LM_STAGE_SESSION = 4,
    LM_STAGE_OOM = 5,
    LM_STAGE_IDS = 6,
    LM_STAGE_FDS = 7,
    LM_STAGE_EXEC = 8,
    LM_STAGE_NAMESPACE = 9,
    LM_STAGE_PIDS = 10,
};

/* Forks a child that applies opts and execs. Returns 0 and the child's pid,
 * or -1 with *err (errno) and *stage (and *cgroup_index for LM_STAGE_CGROUP,
 * the limit's index for LM_STAGE_PIDS) set; on a failure after fork the child has been reaped. */
int lm_spawn(const struct lm_spawn_opts *opts, pid_t *pid, int *err, int *stage, int *cgroup_index);

/* Applies opts to the calling process and execs (for `run` in the
 * foreground: the command replaces lmctfy, as in the original). Returns only
 * on failure, with *err and *stage set. Not thread-safe: call it from a
 * process with a single thread of its own making. */
int lm_exec(const struct lm_spawn_opts *opts, int *err, int *stage, int *cgroup_index);

#endif
