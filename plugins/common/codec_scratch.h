/*
 * plugins/common/codec_scratch.h — the arena a decoded frame points into,
 * shared by the codecs of every transport (tcp's binary and JSON codecs,
 * ws's JSON messages): one arena per decoded frame, released whole with
 * pl_scratch_free, which is what each plugin's free_scratch is.
 *
 * Prefix: pl_scratch_.
 */
#ifndef PL_PLUGINS_CODEC_SCRATCH_H
#define PL_PLUGINS_CODEC_SCRATCH_H

#include <stddef.h>

typedef struct pl_scratch pl_scratch;

/* Allocate size bytes (max_align_t aligned) owned by *scratch, creating the
 * arena on first use. NULL when out of memory. */
void *pl_scratch_alloc(void **scratch, size_t size);
/* Hand a parsed document to the arena: freed with it by doc_free. */
int pl_scratch_adopt(void **scratch, void *doc, void (*doc_free)(void *doc));
/* Free the arena and everything in it; NULL is fine. */
void pl_scratch_free(void *scratch);

#endif
