/*
 * core/workers.c — the password-hashing thread pool (workers.h).
 *
 * Argon2id is slow on purpose (tens of ms and tens of MiB per call), so it
 * runs here and never on the event loop: one login must not stall every other
 * client.
 *
 * Completions come back through a pipe rather than event_active() from the
 * worker. event_active() across threads needs evthread_use_pthreads() to have
 * been called before the event_base was created, a process-wide setting that
 * every user of this pool (parleyd, tests with their own bases) would have to
 * remember; a pipe works with any base, costs one fd pair, and carries no
 * data — finished jobs sit on a mutex-protected list and a single byte is
 * written only when that list goes from empty to non-empty, so the pipe can
 * never fill up and a burst of completions costs one wakeup.
 */
#include "workers.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <event2/event.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat.h"
#include "log.h"

#define PL_WORKERS_MAX 64u

enum job_kind { JOB_HASH = 1, JOB_VERIFY = 2, JOB_REHASH = 3 };

typedef struct job {
    struct job *next;
    int kind;
    char *password;           /* malloc'd copy; wiped and freed after use */
    size_t pwlen;
    char hash[crypto_pwhash_STRBYTES]; /* verify: input; hash: output */
    int err;
    pl_hash_done_fn hash_cb;
    pl_verify_done_fn verify_cb;
    void *ud;
} job;

struct pl_workers {
    struct event_base *base;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *q_head, *q_tail;     /* waiting jobs (mu) */
    uint32_t queued;          /* length of q (mu) */
    uint32_t queue_max;
    job *done_head, *done_tail; /* finished jobs (mu) */
    int exiting;              /* threads leave once q is empty (mu) */
    int stopped;              /* loop thread: refuse new jobs */
    uint32_t pending;         /* loop thread: submitted, callback not yet run */
    pthread_t *threads;
    uint32_t n_threads;
    uint32_t n_started;
    int pipe_r, pipe_w;
    struct event *ev;
    uint64_t opslimit;
    size_t memlimit;
};

static void job_free(job *j)
{
    if (!j)
        return;
    if (j->password) {
        sodium_memzero(j->password, j->pwlen);
        free(j->password);
    }
    sodium_memzero(j->hash, sizeof j->hash);
    free(j);
}

/* An imported account's hash (chat.h, PL_PBKDF2_PREFIX): the prototype's
 * PBKDF2-HMAC-SHA256, 100,000 iterations, 16-byte salt, 32-byte hash, of
 * the password's bytes (Python's str.encode(): UTF-8, as parley's clients
 * send it). Compared in constant time. */
static int pbkdf2_verify(const char *stored, const char *pw, size_t pwlen)
{
    uint8_t salt[PL_PBKDF2_SALT_BYTES], want[PL_PBKDF2_HASH_BYTES], got[PL_PBKDF2_HASH_BYTES];
    int rc = PL_ERR_AUTH;
    if (pl_chat_pbkdf2_parse(pl_str_c(stored), salt, want) != PL_OK)
        return PL_ERR_AUTH;
    if (pwlen > INT_MAX ||
        PKCS5_PBKDF2_HMAC(pw, (int)pwlen, salt, sizeof salt, PL_PBKDF2_ITERATIONS, EVP_sha256(),
                          sizeof got, got) != 1)
        rc = PL_ERR_NOMEM;
    else if (CRYPTO_memcmp(got, want, sizeof got) == 0)
        rc = PL_OK;
    sodium_memzero(got, sizeof got);
    sodium_memzero(want, sizeof want);
    return rc;
}

static void job_run(pl_workers *w, job *j)
{
    if (j->kind == JOB_HASH) {
        if (crypto_pwhash_str(j->hash, j->password, j->pwlen, w->opslimit, w->memlimit) != 0)
            j->err = PL_ERR_NOMEM; /* libsodium fails only when it cannot allocate memlimit */
        else
            j->err = PL_OK;
    } else if (pl_chat_pwhash_is_pbkdf2(pl_str_c(j->hash))) {
        j->err = pbkdf2_verify(j->hash, j->password, j->pwlen);
        /* A rehash replaces the imported hash by an Argon2id one of the same
         * password, in the same job, so the password is handled once. */
        sodium_memzero(j->hash, sizeof j->hash);
        if (j->err == PL_OK && j->kind == JOB_REHASH &&
            crypto_pwhash_str(j->hash, j->password, j->pwlen, w->opslimit, w->memlimit) != 0)
            j->err = PL_ERR_NOMEM;
    } else {
        j->err = crypto_pwhash_str_verify(j->hash, j->password, j->pwlen) == 0
                     ? PL_OK : PL_ERR_AUTH;
        /* An Argon2id hash needs no rehash: the callback gets none. */
        sodium_memzero(j->hash, sizeof j->hash);
    }
    /* The password is no longer needed: wipe it before the job travels back. */
    sodium_memzero(j->password, j->pwlen);
}

static void *worker_main(void *arg)
{
    pl_workers *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (!w->q_head && !w->exiting)
            pthread_cond_wait(&w->cv, &w->mu);
        job *j = w->q_head;
        if (!j) { /* exiting and nothing left */
            pthread_mutex_unlock(&w->mu);
            return NULL;
        }
        w->q_head = j->next;
        if (!w->q_head)
            w->q_tail = NULL;
        w->queued--;
        pthread_mutex_unlock(&w->mu);

        job_run(w, j);

        pthread_mutex_lock(&w->mu);
        j->next = NULL;
        int was_empty = w->done_head == NULL;
        if (w->done_tail)
            w->done_tail->next = j;
        else
            w->done_head = j;
        w->done_tail = j;
        pthread_mutex_unlock(&w->mu);
        if (was_empty) {
            ssize_t r;
            do {
                r = write(w->pipe_w, "x", 1);
            } while (r < 0 && errno == EINTR);
            /* EAGAIN means a wakeup byte is already waiting: nothing lost. */
        }
    }
}

/* Run the callbacks of every finished job (loop thread). */
static void deliver(pl_workers *w)
{
    pthread_mutex_lock(&w->mu);
    job *j = w->done_head;
    w->done_head = w->done_tail = NULL;
    pthread_mutex_unlock(&w->mu);
    while (j) {
        job *next = j->next;
        w->pending--;
        if (j->kind == JOB_HASH)
            j->hash_cb(j->ud, j->err, j->err == PL_OK ? j->hash : NULL);
        else if (j->kind == JOB_REHASH)
            j->hash_cb(j->ud, j->err, j->err == PL_OK && j->hash[0] ? j->hash : NULL);
        else
            j->verify_cb(j->ud, j->err);
        job_free(j);
        j = next;
    }
}

static void on_wakeup(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    char buf[64];
    /* Drain first, then take the list: a completion racing with us either
     * lands in the list we take or writes a fresh byte for the next wakeup. */
    while (read(fd, buf, sizeof buf) > 0)
        ;
    deliver(arg);
}

pl_workers *pl_workers_new(struct event_base *base, uint32_t threads,
                           uint32_t queue_max, uint64_t opslimit,
                           uint64_t memlimit, char *err, size_t errlen)
{
    pl_workers *w = NULL;
    int fds[2] = { -1, -1 };

    if (threads < 1 || threads > PL_WORKERS_MAX || queue_max < 1) {
        snprintf(err, errlen, "workers: threads must be 1-%u and the queue at least 1",
                 PL_WORKERS_MAX);
        return NULL;
    }
    if (memlimit > SIZE_MAX) {
        snprintf(err, errlen, "workers: memlimit %llu does not fit this machine",
                 (unsigned long long)memlimit);
        return NULL;
    }
    if (sodium_init() < 0) {
        snprintf(err, errlen, "workers: libsodium failed to initialise");
        return NULL;
    }
    w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "workers: out of memory");
        return NULL;
    }
    w->base = base;
    w->queue_max = queue_max;
    w->opslimit = opslimit;
    w->memlimit = (size_t)memlimit;
    w->pipe_r = w->pipe_w = -1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);

    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        snprintf(err, errlen, "workers: pipe: %s", strerror(errno));
        goto fail;
    }
    w->pipe_r = fds[0];
    w->pipe_w = fds[1];
    w->ev = event_new(base, w->pipe_r, EV_READ | EV_PERSIST, on_wakeup, w);
    if (!w->ev || event_add(w->ev, NULL) != 0) {
        snprintf(err, errlen, "workers: cannot register the wakeup event");
        goto fail;
    }
    w->threads = calloc(threads, sizeof *w->threads);
    if (!w->threads) {
        snprintf(err, errlen, "workers: out of memory");
        goto fail;
    }
    w->n_threads = threads;
    for (uint32_t i = 0; i < threads; i++) {
        int rc = pthread_create(&w->threads[i], NULL, worker_main, w);
        if (rc != 0) {
            snprintf(err, errlen, "workers: cannot start thread %u: %s", i, strerror(rc));
            goto fail;
        }
        w->n_started++;
    }
    return w;
fail:
    pl_workers_free(w);
    return NULL;
}

void pl_workers_set_queue_max(pl_workers *w, uint32_t queue_max)
{
    pthread_mutex_lock(&w->mu);
    w->queue_max = queue_max ? queue_max : 1;
    pthread_mutex_unlock(&w->mu);
}

static int submit(pl_workers *w, job *j)
{
    pthread_mutex_lock(&w->mu);
    if (w->queued >= w->queue_max) {
        pthread_mutex_unlock(&w->mu);
        return PL_ERR_BUSY;
    }
    if (w->q_tail)
        w->q_tail->next = j;
    else
        w->q_head = j;
    w->q_tail = j;
    w->queued++;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    w->pending++;
    return PL_OK;
}

static job *job_new(pl_str password)
{
    job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    /* +1 so a zero-length password still gets a real allocation. */
    j->password = malloc((size_t)password.len + 1);
    if (!j->password) {
        free(j);
        return NULL;
    }
    if (password.len)
        memcpy(j->password, password.ptr, password.len);
    j->pwlen = password.len;
    return j;
}

int pl_workers_hash(pl_workers *w, pl_str password, pl_hash_done_fn cb, void *ud)
{
    if (w->stopped)
        return PL_ERR_UNAVAILABLE;
    job *j = job_new(password);
    if (!j)
        return PL_ERR_NOMEM;
    j->kind = JOB_HASH;
    j->hash_cb = cb;
    j->ud = ud;
    int rc = submit(w, j);
    if (rc != PL_OK)
        job_free(j);
    return rc;
}

int pl_workers_verify(pl_workers *w, pl_str hash, pl_str password,
                      pl_verify_done_fn cb, void *ud)
{
    if (w->stopped)
        return PL_ERR_UNAVAILABLE;
    job *j = job_new(password);
    if (!j)
        return PL_ERR_NOMEM;
    j->kind = JOB_VERIFY;
    j->verify_cb = cb;
    j->ud = ud;
    /* A stored hash that does not fit (or holds a NUL) cannot be a valid
     * Argon2id string: leave the buffer empty so verification fails. */
    if (hash.len < sizeof j->hash && !memchr(hash.ptr, '\0', hash.len))
        memcpy(j->hash, hash.ptr, hash.len);
    int rc = submit(w, j);
    if (rc != PL_OK)
        job_free(j);
    return rc;
}

int pl_workers_verify_rehash(pl_workers *w, pl_str hash, pl_str password,
                             pl_hash_done_fn cb, void *ud)
{
    if (w->stopped)
        return PL_ERR_UNAVAILABLE;
    job *j = job_new(password);
    if (!j)
        return PL_ERR_NOMEM;
    j->kind = JOB_REHASH;
    j->hash_cb = cb;
    j->ud = ud;
    if (hash.len < sizeof j->hash && !memchr(hash.ptr, '\0', hash.len))
        memcpy(j->hash, hash.ptr, hash.len);
    int rc = submit(w, j);
    if (rc != PL_OK)
        job_free(j);
    return rc;
}

void pl_workers_stop(pl_workers *w)
{
    w->stopped = 1;
}

uint32_t pl_workers_pending(const pl_workers *w)
{
    return w->pending;
}

void pl_workers_free(pl_workers *w)
{
    if (!w)
        return;
    w->stopped = 1;
    pthread_mutex_lock(&w->mu);
    w->exiting = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    for (uint32_t i = 0; i < w->n_started; i++)
        pthread_join(w->threads[i], NULL);
    /* Every queued job ran; hand the results to their owners. */
    deliver(w);
    if (w->ev)
        event_free(w->ev);
    if (w->pipe_r >= 0)
        close(w->pipe_r);
    if (w->pipe_w >= 0)
        close(w->pipe_w);
    free(w->threads);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}
