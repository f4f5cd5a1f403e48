/*
 * core/logcache.h — the log entries appended and not yet applied, kept in
 * memory so that applying them (core/seq.c) does not read them back from
 * the store.
 *
 * The cache holds a run of consecutive ops, each as the log holds it now,
 * which stays true only if every change to the log is told to it: add()
 * after an append succeeded, cut() after a truncation (or an append that
 * failed: what the store holds is then unknown), clear() when anything else
 * replaces the log (a snapshot). An entry that would break the run (not the
 * op after the last) starts a new run. When full it drops its oldest
 * entries; what it does not hold whole is read from the store, as before.
 */
#ifndef PL_LOGCACHE_H
#define PL_LOGCACHE_H

#include <stddef.h>
#include <stdint.h>

#include <parley/store.h>

typedef struct pl_logcache pl_logcache;

/* At most max_entries entries and max_bytes bytes of entry data. NULL when
 * out of memory (the caller then reads everything from the store). */
pl_logcache *pl_logcache_new(uint32_t max_entries, size_t max_bytes);
void pl_logcache_free(pl_logcache *c);

/* The log now ends with these n entries (appended in one call). */
void pl_logcache_add(pl_logcache *c, const pl_log_entry *e, size_t n);
/* The log lost every op above `after`. */
void pl_logcache_cut(pl_logcache *c, uint64_t after);
void pl_logcache_clear(pl_logcache *c);

/* If the cache holds every op from..to: hand them over, data[i] (malloc'd,
 * the caller frees it) and len[i] for op from + i, drop them and everything
 * below, and return 1. Otherwise return 0 and keep what is held (entries
 * below `from` are dropped either way: the caller is past them). */
int pl_logcache_take(pl_logcache *c, uint64_t from, uint64_t to, uint8_t **data, size_t *len);

/* Entries and bytes held (tests). */
uint32_t pl_logcache_count(const pl_logcache *c);
size_t pl_logcache_bytes(const pl_logcache *c);
/* The first op held, 0 when empty. */
uint64_t pl_logcache_first(const pl_logcache *c);

#endif
