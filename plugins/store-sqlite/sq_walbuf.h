/*
 * sq_walbuf.h — the "parley-walbuf" VFS shim (sq_walbuf.c): each commit's
 * WAL frames written with one system call.
 */
#ifndef SQ_WALBUF_H
#define SQ_WALBUF_H

#include <sqlite3.h>

#define SQ_WALBUF_VFS "parley-walbuf"
/* The same, and a database file's writes go to the disk in steps (for the
 * checkpoint connections; see sq_walbuf.c). */
#define SQ_WALBUF_PUSH_VFS "parley-walbuf-push"

/* Register both VFSes (not as the default). Not thread-safe: call once. */
int sq_walbuf_register(void);
/* Send what has been written to path's file to the disk and wait for it,
 * through *fd (opened on first use; the caller closes it). Advisory: an
 * error is left for a later sync of the file to meet, which it does (the
 * kernel reports a write error to every descriptor of the file). */
void sq_walbuf_push(int *fd, const char *path);
/* A WAL file of "parley-walbuf" keeps its size when SQLite cuts it back
 * (PRAGMA journal_size_limit) until another thread cuts it:
 * sq_walbuf_trim_pending says a cut waits (cheap; any thread), and
 * sq_walbuf_trim does one step of it, at most 1 MiB, and returns 1 while
 * more remains. Call sq_walbuf_trim from one thread at a time, and never
 * after the file's connection closed. */
int sq_walbuf_trim_pending(sqlite3_file *f);
int sq_walbuf_trim(sqlite3_file *f);
/* Write out what is buffered for f (a WAL file of this VFS; anything else
 * is left alone). */
int sq_walbuf_flush(sqlite3_file *f);

#endif
