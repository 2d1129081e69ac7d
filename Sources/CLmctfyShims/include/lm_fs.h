/* Per-thread filesystem context. */
#ifndef LM_FS_H
#define LM_FS_H

/* unshare(CLONE_FS) for the calling thread: from then on its working
 * directory (and umask) are its own, so it may chdir without moving every
 * other thread of the process. The image store extracts archives on such a
 * thread, with paths relative to the image's directory, which libarchive's
 * secure flags need. Swift cannot call unshare (<sched.h> declares it only
 * under _GNU_SOURCE). Returns 0 or -errno. */
int lm_unshare_fs(void);

#endif
