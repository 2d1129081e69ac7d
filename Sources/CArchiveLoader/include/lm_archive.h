/* libarchive (Debian libarchive13), loaded when the image store first
 * needs it rather than when a program starts. libarchive brings libxml2 and
 * ICU with it: linked directly, every `lmctfy` call (most of which never
 * touch an image) paid about 1.2 ms more to start, half as much again.
 * lm_archive_load() dlopens it once (thread-safe); each lm_archive_* then
 * calls the function of the same name without the prefix. Types and
 * constants come from libarchive's own headers. */
#ifndef LM_ARCHIVE_H
#define LM_ARCHIVE_H

#include <archive.h>
#include <archive_entry.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

/* Loads libarchive.so.13 and every function below: 0, or -1 with the
 * reason in `err` (cap bytes). Call it (again: it is cheap) before any
 * lm_archive_* function, which abort() if the library is not loaded. */
int lm_archive_load(char *err, size_t cap);

struct archive *lm_archive_read_new(void);
int lm_archive_read_free(struct archive *a);
int lm_archive_read_support_filter_all(struct archive *a);
int lm_archive_read_support_format_tar(struct archive *a);
int lm_archive_read_open_fd(struct archive *a, int fd, size_t block);
int lm_archive_read_next_header(struct archive *a, struct archive_entry **e);
la_ssize_t lm_archive_read_data(struct archive *a, void *buf, size_t n);
const char *lm_archive_error_string(struct archive *a);
int lm_archive_errno(struct archive *a);
int lm_archive_format(struct archive *a);
struct archive *lm_archive_write_disk_new(void);
int lm_archive_write_disk_set_options(struct archive *a, int flags);
struct archive *lm_archive_write_new(void);
int lm_archive_write_free(struct archive *a);
int lm_archive_write_header(struct archive *a, struct archive_entry *e);
la_ssize_t lm_archive_write_data(struct archive *a, const void *buf, size_t n);
int lm_archive_write_finish_entry(struct archive *a);
int lm_archive_write_close(struct archive *a);
int lm_archive_write_set_format_pax_restricted(struct archive *a);
int lm_archive_write_add_filter_gzip(struct archive *a);
int lm_archive_write_add_filter_xz(struct archive *a);
int lm_archive_write_set_filter_option(struct archive *a, const char *m, const char *o, const char *v);
int lm_archive_write_open_filename(struct archive *a, const char *file);
struct archive *lm_archive_read_disk_new(void);
int lm_archive_read_disk_set_behavior(struct archive *a, int flags);
int lm_archive_read_disk_entry_from_file(struct archive *a, struct archive_entry *e, int fd, const struct stat *st);
struct archive_entry *lm_archive_entry_new(void);
void lm_archive_entry_free(struct archive_entry *e);
const char *lm_archive_entry_pathname(struct archive_entry *e);
const char *lm_archive_entry_hardlink(struct archive_entry *e);
const char *lm_archive_entry_symlink(struct archive_entry *e);
const char *lm_archive_entry_sourcepath(struct archive_entry *e);
mode_t lm_archive_entry_filetype(struct archive_entry *e);
la_int64_t lm_archive_entry_size(struct archive_entry *e);
void lm_archive_entry_copy_pathname(struct archive_entry *e, const char *s);
void lm_archive_entry_copy_hardlink(struct archive_entry *e, const char *s);
void lm_archive_entry_copy_sourcepath(struct archive_entry *e, const char *s);
void lm_archive_entry_set_uname(struct archive_entry *e, const char *s);
void lm_archive_entry_set_gname(struct archive_entry *e, const char *s);
void lm_archive_entry_unset_atime(struct archive_entry *e);
void lm_archive_entry_unset_ctime(struct archive_entry *e);
void lm_archive_entry_unset_birthtime(struct archive_entry *e);
struct archive_entry_linkresolver *lm_archive_entry_linkresolver_new(void);
void lm_archive_entry_linkresolver_free(struct archive_entry_linkresolver *r);
void lm_archive_entry_linkresolver_set_strategy(struct archive_entry_linkresolver *r, int format);
void lm_archive_entry_linkify(struct archive_entry_linkresolver *r, struct archive_entry **e, struct archive_entry **spare);

#endif
