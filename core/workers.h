/*
 * core/workers.h — a small fixed pool of threads for slow work that must not
 * run on the event loop: Argon2id password hashing and verification, and
 * the check of an imported PBKDF2 hash (issue 21).
 *
 * Jobs are submitted from the event-loop thread; their completion callback
 * runs back on the event-loop thread, so callers never lock anything. The
 * queue is bounded: when it is full a submit fails with PL_ERR_BUSY and the
 * client is told "server busy" instead of waiting behind a backlog that could
 * only grow.
 *
 * Prefix: pl_workers_.
 */
#ifndef PL_CORE_WORKERS_H
#define PL_CORE_WORKERS_H

#include <stdint.h>
#include <parley/common.h>

struct event_base;
typedef struct pl_workers pl_workers;

/* hash: PL_OK and the Argon2id string (valid during the call only), or an
 * error (PL_ERR_NOMEM when libsodium could not allocate memlimit bytes). */
typedef void (*pl_hash_done_fn)(void *ud, int err, const char *hash);
/* verify: PL_OK when the password matches, PL_ERR_AUTH when it does not
 * (or the stored hash is unusable). */
typedef void (*pl_verify_done_fn)(void *ud, int err);

/* threads: 1..64; queue_max: jobs waiting (not yet running) before submits
 * fail with PL_ERR_BUSY. opslimit/memlimit: Argon2id cost for new hashes.
 * Returns NULL and a one-line reason in err on failure. */
pl_workers *pl_workers_new(struct event_base *base, uint32_t threads,
                           uint32_t queue_max, uint64_t opslimit,
                           uint64_t memlimit, char *err, size_t errlen);

/* Hash password (copied, and the copy wiped after use). PL_ERR_BUSY when the
 * queue is full, PL_ERR_UNAVAILABLE after pl_workers_stop. */
int pl_workers_hash(pl_workers *w, pl_str password, pl_hash_done_fn cb, void *ud);
/* Verify password against an Argon2id string (both copied). */
int pl_workers_verify(pl_workers *w, pl_str hash, pl_str password,
                      pl_verify_done_fn cb, void *ud);

/* Verify password against a stored hash: an Argon2id string, or an
 * imported PBKDF2 one (chat.h, PL_PBKDF2_PREFIX: PKCS5_PBKDF2_HMAC of
 * OpenSSL, compared in constant time). When it matches a PBKDF2 hash, the
 * same job hashes the password with Argon2id and cb gets that string, to
 * replace the imported hash (PL_OP_LOGIN_REHASH); an Argon2id match gets
 * PL_OK and NULL. PL_ERR_AUTH when it does not match. pl_workers_verify
 * takes either kind too, without the rehash. */
int pl_workers_verify_rehash(pl_workers *w, pl_str hash, pl_str password,
                             pl_hash_done_fn cb, void *ud);

/* Change queue_max (>= 1) for later submits; jobs already queued stay. */
void pl_workers_set_queue_max(pl_workers *w, uint32_t queue_max);

/* Stop taking jobs; queued and running jobs still finish and their
 * callbacks still run on the loop. */
void pl_workers_stop(pl_workers *w);
/* Jobs submitted whose callback has not run yet. */
uint32_t pl_workers_pending(const pl_workers *w);

/* Stop, finish every queued job, join the threads, run the remaining
 * callbacks (on the calling thread, which must be the loop thread), free. */
void pl_workers_free(pl_workers *w);

#endif
