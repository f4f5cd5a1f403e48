/*
 * core/logcache.c — see logcache.h. A ring of malloc'd copies of entries.
 */
#include "logcache.h"

#include <stdlib.h>
#include <string.h>

struct pl_logcache {
    uint8_t **data;
    uint32_t *len;
    uint32_t cap;             /* ring slots */
    size_t max_bytes;
    uint32_t head, n;         /* slot of `first`; entries held */
    uint64_t first;           /* op of the entry in slot head */
    size_t bytes;
};

pl_logcache *pl_logcache_new(uint32_t max_entries, size_t max_bytes)
{
    if (max_entries == 0)
        return NULL;
    pl_logcache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->data = calloc(max_entries, sizeof *c->data);
    c->len = calloc(max_entries, sizeof *c->len);
    if (!c->data || !c->len) {
        free(c->data);
        free(c->len);
        free(c);
        return NULL;
    }
    c->cap = max_entries;
    c->max_bytes = max_bytes;
    return c;
}

static uint32_t slot(const pl_logcache *c, uint32_t i)
{
    return (uint32_t)(((uint64_t)c->head + i) % c->cap);
}

/* Drop the oldest entry; free_it: it was not handed over. */
static void drop_front(pl_logcache *c, int free_it)
{
    uint32_t s = c->head;
    if (free_it)
        free(c->data[s]);
    c->data[s] = NULL;
    c->bytes -= c->len[s];
    c->head = slot(c, 1);
    c->first++;
    c->n--;
}

void pl_logcache_cut(pl_logcache *c, uint64_t after)
{
    if (!c)
        return;
    while (c->n && c->first + c->n - 1 > after) {
        uint32_t s = slot(c, c->n - 1);
        free(c->data[s]);
        c->data[s] = NULL;
        c->bytes -= c->len[s];
        c->n--;
    }
}

void pl_logcache_clear(pl_logcache *c)
{
    if (!c)
        return;
    while (c->n)
        drop_front(c, 1);
}

void pl_logcache_add(pl_logcache *c, const pl_log_entry *e, size_t n)
{
    if (!c)
        return;
    for (size_t i = 0; i < n; i++) {
        /* Not the next op: the log changed some way it was not told of. */
        if (c->n && e[i].op != c->first + c->n)
            pl_logcache_clear(c);
        if (e[i].len > c->max_bytes) {
            pl_logcache_clear(c); /* held from the next one on */
            continue;
        }
        while (c->n && (c->n == c->cap || c->bytes + e[i].len > c->max_bytes))
            drop_front(c, 1);
        uint8_t *d = malloc(e[i].len ? e[i].len : 1);
        if (!d) {
            pl_logcache_clear(c);
            continue;
        }
        if (e[i].len)
            memcpy(d, e[i].data, e[i].len);
        if (c->n == 0) {
            c->head = 0;
            c->first = e[i].op;
        }
        uint32_t s = slot(c, c->n);
        c->data[s] = d;
        c->len[s] = e[i].len;
        c->bytes += e[i].len;
        c->n++;
    }
}

int pl_logcache_take(pl_logcache *c, uint64_t from, uint64_t to, uint8_t **data, size_t *len)
{
    if (!c || to < from)
        return 0;
    while (c->n && c->first < from)
        drop_front(c, 1);
    if (!c->n || c->first != from || to - from >= c->n)
        return 0;
    for (uint64_t i = 0; i <= to - from; i++) {
        data[i] = c->data[c->head];
        len[i] = c->len[c->head];
        drop_front(c, 0);
    }
    return 1;
}

uint32_t pl_logcache_count(const pl_logcache *c)
{
    return c ? c->n : 0;
}

size_t pl_logcache_bytes(const pl_logcache *c)
{
    return c ? c->bytes : 0;
}

uint64_t pl_logcache_first(const pl_logcache *c)
{
    return c && c->n ? c->first : 0;
}

void pl_logcache_free(pl_logcache *c)
{
    if (!c)
        return;
    pl_logcache_clear(c);
    free(c->data);
    free(c->len);
    free(c);
}
