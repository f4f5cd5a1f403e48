/*
 * plugins/common/codec_scratch.c — the decode arena (codec_scratch.h): a
 * list of malloc'd chunks plus at most one adopted document (a cJSON tree
 * whose strings a decoded struct points into).
 */
#include "codec_scratch.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <parley/common.h>

typedef struct pl_scratch_chunk {
    struct pl_scratch_chunk *next;
    max_align_t data[];
} pl_scratch_chunk;

struct pl_scratch {
    pl_scratch_chunk *chunks;
    void *doc;
    void (*doc_free)(void *doc);
};

static pl_scratch *scratch_get(void **scratch)
{
    if (!*scratch)
        *scratch = calloc(1, sizeof(pl_scratch));
    return *scratch;
}

void *pl_scratch_alloc(void **scratch, size_t size)
{
    pl_scratch *s = scratch_get(scratch);
    pl_scratch_chunk *c;

    if (!s || size > SIZE_MAX - sizeof *c)
        return NULL;
    c = malloc(sizeof *c + (size ? size : 1));
    if (!c)
        return NULL;
    c->next = s->chunks;
    s->chunks = c;
    return c->data;
}

int pl_scratch_adopt(void **scratch, void *doc, void (*doc_free)(void *doc))
{
    pl_scratch *s = scratch_get(scratch);

    if (!s)
        return PL_ERR_NOMEM;
    if (s->doc && s->doc_free)
        s->doc_free(s->doc);
    s->doc = doc;
    s->doc_free = doc_free;
    return PL_OK;
}

void pl_scratch_free(void *scratch)
{
    pl_scratch *s = scratch;

    if (!s)
        return;
    while (s->chunks) {
        pl_scratch_chunk *c = s->chunks;
        s->chunks = c->next;
        free(c);
    }
    if (s->doc && s->doc_free)
        s->doc_free(s->doc);
    free(s);
}

