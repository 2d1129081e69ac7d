/* Debian's libarchive (libarchive-dev): reading rootfs tarballs (tar, pax,
 * gnutar; gzip, xz, zstd, bzip2) into the image store and writing them back
 * (Sources/LmctfyImages). A hand-written tar reader is where path-escape
 * bugs live; libarchive's secure extraction flags are a second line behind
 * the store's own checks. */
#ifndef LM_CARCHIVE_SHIM_H
#define LM_CARCHIVE_SHIM_H
#include <archive.h>
#include <archive_entry.h>
#endif
