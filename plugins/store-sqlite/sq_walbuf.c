/*
 * sq_walbuf.c — a SQLite VFS shim that writes each commit's WAL frames with
 * one system call instead of two per page.
 *
 * SQLite writes a WAL frame as two writes (its 24-byte header, then the
 * page), and a commit of a batch of sends dirties ~30 pages: ~60 pwrite
 * calls per commit, which measured as a quarter of the event loop's CPU on
 * the project's VM (docs/performance.md, "Where the time goes", round 3).
 * This shim, registered as VFS "parley-walbuf" over the default one, hands
 * every file but the WAL straight to the default VFS; writes to the WAL
 * that continue (or overwrite part of) the range already buffered are
 * gathered in memory and written as one pwrite when SQLite next reads,
 * syncs, truncates, sizes, locks or closes the file, when another range is
 * written, when 4 MiB are held, and after every commit (sq_walbuf_flush,
 * from the store's wal hook, which SQLite calls once a commit is done).
 * So between calls into SQLite the file holds every committed frame, as it
 * would without the shim: the sync thread's fdatasync on its own
 * descriptor (store_sqlite.c, sq_log_sync) covers what was committed, and a
 * crash loses no more than it would.
 *
 * A failed flush is reported by the call that triggered it (an I/O error
 * from SQLite's point of view), and the data stays buffered for the next
 * try; the wal hook logs it.
 *
 * A second name, "parley-walbuf-push" (the store's checkpoint connections),
 * adds one thing for database files: a checkpoint's page writes go to the
 * disk in steps of WB_PUSH bytes (sync_file_range: start them, wait for
 * them), not all at once at the checkpoint's closing sync. The log's
 * fdatasync on the sync thread flushes the disk's cache, which holds what
 * every file wrote since the last flush: behind a whole checkpoint (4-8
 * MiB) one log sync took 5-10 ms; behind one step, a fraction of that
 * (docs/performance.md, round 5). A push is only a head start: durability
 * still comes from SQLite's own syncs, and an error the push meets is still
 * reported to them (the kernel reports a write error to every descriptor
 * of the file; the push uses one of its own).
 *
 * And one thing for WAL files: the cut PRAGMA journal_size_limit asks for
 * is left to another thread. SQLite truncates a WAL in the first commit
 * after it restarts; the store's WAL grows to tens of MiB between restarts
 * under load, and freeing that at once took 10-21 ms of the loop thread
 * (docs/performance.md, round 5). wb_truncate only notes the size asked
 * for; the store's checkpoint thread cuts the file in steps of WB_TRIM_STEP
 * (sq_walbuf_trim), never below the end of anything written since the cut
 * was asked for. What lies past the valid frames of a WAL is old frames
 * with old salts, which recovery ignores, so a late cut loses nothing.
 */
#include "sq_walbuf.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define WB_MAX (4u * 1024u * 1024u)
#define WB_CHUNK (64u * 1024u)
#define WB_PUSH (256u * 1024u)
/* ftruncate freed 1 MiB in 0.6-2.4 ms here (strace), holding the inode
 * lock meanwhile, which a write to the WAL then waits for. */
#define WB_TRIM_STEP (1 << 20)

typedef struct wb_file {
    sqlite3_file base;        /* pMethods = &wb_methods */
    sqlite3_file *real;       /* the default VFS's file, right after this struct */
    unsigned char *buf;
    sqlite3_int64 off;        /* file offset of buf[0] */
    size_t len, cap;
    /* a database file of "parley-walbuf-push" (nothing is buffered) */
    int push;
    const char *name;         /* SQLite keeps it valid until xClose */
    int push_fd;              /* our own descriptor for sync_file_range, or -1 */
    size_t unpushed;          /* bytes written since the last push */
    /* a WAL file: the cut SQLite asked for, done by sq_walbuf_trim. trim_to
     * is set by the writer's thread, cleared by the trimming one; the rest
     * is under trim_mu. */
    int trim_init;
    pthread_mutex_t trim_mu;
    sqlite3_int64 trim_to;    /* the size asked for; 0: nothing waits */
    sqlite3_int64 trim_hwm;   /* end of the furthest write since it was asked for */
    int trim_fd;              /* our own descriptor for ftruncate, or -1 */
} wb_file;

static sqlite3_vfs wb_vfs, wb_push_vfs;
static sqlite3_vfs *wb_real;
static sqlite3_io_methods wb_methods;

#define WB_REAL(f) (((wb_file *)(f))->real)

int sq_walbuf_flush(sqlite3_file *f)
{
    wb_file *w = (wb_file *)f;
    if (!f || f->pMethods != &wb_methods || w->len == 0)
        return SQLITE_OK;
    /* The unix VFS writes at most 128 KiB per call (its seekAndWrite masks
     * the length with 0x1ffff), so hand it chunks below that. */
    size_t done = 0;
    while (done < w->len) {
        size_t n = w->len - done > WB_CHUNK ? WB_CHUNK : w->len - done;
        int rc = w->real->pMethods->xWrite(w->real, w->buf + done, (int)n,
                                           w->off + (sqlite3_int64)done);
        if (rc != SQLITE_OK) {
            if (done) { /* keep what is left, at its offset */
                memmove(w->buf, w->buf + done, w->len - done);
                w->off += (sqlite3_int64)done;
                w->len -= done;
            }
            return rc;
        }
        done += n;
    }
    w->len = 0;
    return SQLITE_OK;
}

static int wb_close(sqlite3_file *f)
{
    wb_file *w = (wb_file *)f;
    int rc = sq_walbuf_flush(f);
    int rc2 = w->real->pMethods ? w->real->pMethods->xClose(w->real) : SQLITE_OK;
    if (w->push_fd >= 0)
        close(w->push_fd);
    w->push_fd = -1;
    if (w->trim_init) {
        if (w->trim_fd >= 0)
            close(w->trim_fd);
        pthread_mutex_destroy(&w->trim_mu);
        w->trim_init = 0;
    }
    free(w->buf);
    w->buf = NULL;
    w->len = w->cap = 0;
    return rc != SQLITE_OK ? rc : rc2;
}

static int wb_read(sqlite3_file *f, void *p, int n, sqlite3_int64 off)
{
    int rc = sq_walbuf_flush(f);
    return rc != SQLITE_OK ? rc : WB_REAL(f)->pMethods->xRead(WB_REAL(f), p, n, off);
}

void sq_walbuf_push(int *fd, const char *path)
{
    if (*fd < 0 && (*fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return;
    (void)sync_file_range(*fd, 0, 0,
                          SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                              SYNC_FILE_RANGE_WAIT_AFTER);
}

static int wb_write(sqlite3_file *f, const void *p, int n, sqlite3_int64 off)
{
    wb_file *w = (wb_file *)f;
    if (n <= 0)
        return SQLITE_OK;
    /* Before the bytes go anywhere, so a cut in progress spares them. */
    if (w->trim_init && __atomic_load_n(&w->trim_to, __ATOMIC_ACQUIRE)) {
        pthread_mutex_lock(&w->trim_mu);
        if (off + n > w->trim_hwm)
            w->trim_hwm = off + n;
        pthread_mutex_unlock(&w->trim_mu);
    }
    if (w->push) {
        int rc = w->real->pMethods->xWrite(w->real, p, n, off);
        if (rc == SQLITE_OK && (w->unpushed += (size_t)n) >= WB_PUSH) {
            w->unpushed = 0;
            sq_walbuf_push(&w->push_fd, w->name);
        }
        return rc;
    }
    /* continues or overwrites the buffered range: gather it */
    if (w->len && (off < w->off || off > w->off + (sqlite3_int64)w->len)) {
        int rc = sq_walbuf_flush(f);
        if (rc != SQLITE_OK)
            return rc;
    }
    if (w->len == 0)
        w->off = off;
    size_t at = (size_t)(off - w->off), end = at + (size_t)n;
    if (end > WB_MAX) {
        int rc = sq_walbuf_flush(f);
        if (rc != SQLITE_OK)
            return rc;
        return w->real->pMethods->xWrite(w->real, p, n, off);
    }
    if (end > w->cap) {
        size_t cap = w->cap ? w->cap : 64u * 1024u;
        while (cap < end)
            cap *= 2;
        unsigned char *nb = realloc(w->buf, cap);
        if (!nb) {
            int rc = sq_walbuf_flush(f);
            return rc != SQLITE_OK ? rc : w->real->pMethods->xWrite(w->real, p, n, off);
        }
        w->buf = nb;
        w->cap = cap;
    }
    memcpy(w->buf + at, p, (size_t)n);
    if (end > w->len)
        w->len = end;
    return SQLITE_OK;
}

static int wb_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    wb_file *w = (wb_file *)f;
    int rc = sq_walbuf_flush(f);
    if (rc != SQLITE_OK)
        return rc;
    if (!w->trim_init)
        return WB_REAL(f)->pMethods->xTruncate(WB_REAL(f), size);
    pthread_mutex_lock(&w->trim_mu);
    if (size > 0) {
        /* journal_size_limit's cut: SQLite wrote nothing it needs past
         * size, and writes from here on raise trim_hwm. */
        w->trim_hwm = 0;
        __atomic_store_n(&w->trim_to, size, __ATOMIC_RELEASE);
    } else {
        /* Emptied for good (a TRUNCATE checkpoint): at once, and nothing
         * else waits. */
        __atomic_store_n(&w->trim_to, 0, __ATOMIC_RELEASE);
        rc = WB_REAL(f)->pMethods->xTruncate(WB_REAL(f), size);
    }
    pthread_mutex_unlock(&w->trim_mu);
    return rc;
}

int sq_walbuf_trim_pending(sqlite3_file *f)
{
    wb_file *w = (wb_file *)f;
    return f && f->pMethods == &wb_methods && w->trim_init &&
           __atomic_load_n(&w->trim_to, __ATOMIC_ACQUIRE) != 0;
}

int sq_walbuf_trim(sqlite3_file *f)
{
    wb_file *w = (wb_file *)f;
    struct stat st;
    int more = 0;

    if (!sq_walbuf_trim_pending(f))
        return 0;
    pthread_mutex_lock(&w->trim_mu);
    sqlite3_int64 target = w->trim_to > w->trim_hwm ? w->trim_to : w->trim_hwm;
    if (w->trim_fd < 0)
        w->trim_fd = open(w->name, O_WRONLY | O_CLOEXEC);
    if (w->trim_fd >= 0 && fstat(w->trim_fd, &st) == 0 && st.st_size > target) {
        sqlite3_int64 to = st.st_size - WB_TRIM_STEP > target ? st.st_size - WB_TRIM_STEP : target;
        /* A failed cut leaves a larger file than asked, which SQLite
         * ignores too (walLimitSize): give up on this one. */
        more = ftruncate(w->trim_fd, (off_t)to) == 0 && to > target;
    }
    if (!more)
        __atomic_store_n(&w->trim_to, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&w->trim_mu);
    return more;
}

static int wb_sync(sqlite3_file *f, int flags)
{
    int rc = sq_walbuf_flush(f);
    return rc != SQLITE_OK ? rc : WB_REAL(f)->pMethods->xSync(WB_REAL(f), flags);
}

static int wb_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    int rc = sq_walbuf_flush(f);
    return rc != SQLITE_OK ? rc : WB_REAL(f)->pMethods->xFileSize(WB_REAL(f), size);
}

static int wb_lock(sqlite3_file *f, int level)
{
    int rc = sq_walbuf_flush(f);
    return rc != SQLITE_OK ? rc : WB_REAL(f)->pMethods->xLock(WB_REAL(f), level);
}

static int wb_unlock(sqlite3_file *f, int level)
{
    int rc = sq_walbuf_flush(f);
    return rc != SQLITE_OK ? rc : WB_REAL(f)->pMethods->xUnlock(WB_REAL(f), level);
}

static int wb_check_reserved(sqlite3_file *f, int *out)
{
    return WB_REAL(f)->pMethods->xCheckReservedLock(WB_REAL(f), out);
}

static int wb_file_control(sqlite3_file *f, int op, void *arg)
{
    int rc = sq_walbuf_flush(f);
    return rc != SQLITE_OK ? rc : WB_REAL(f)->pMethods->xFileControl(WB_REAL(f), op, arg);
}

static int wb_sector_size(sqlite3_file *f)
{
    return WB_REAL(f)->pMethods->xSectorSize(WB_REAL(f));
}

static int wb_device_chars(sqlite3_file *f)
{
    return WB_REAL(f)->pMethods->xDeviceCharacteristics(WB_REAL(f));
}

/* Shared memory and memory mapping belong to the database file, never the
 * WAL; passed on all the same. */
static int wb_shm_map(sqlite3_file *f, int pg, int sz, int extend, void volatile **pp)
{
    return WB_REAL(f)->pMethods->xShmMap(WB_REAL(f), pg, sz, extend, pp);
}

static int wb_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    return WB_REAL(f)->pMethods->xShmLock(WB_REAL(f), offset, n, flags);
}

static void wb_shm_barrier(sqlite3_file *f)
{
    WB_REAL(f)->pMethods->xShmBarrier(WB_REAL(f));
}

static int wb_shm_unmap(sqlite3_file *f, int del)
{
    return WB_REAL(f)->pMethods->xShmUnmap(WB_REAL(f), del);
}

static int wb_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp)
{
    int rc = sq_walbuf_flush(f);
    return rc != SQLITE_OK ? rc : WB_REAL(f)->pMethods->xFetch(WB_REAL(f), off, n, pp);
}

static int wb_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    return WB_REAL(f)->pMethods->xUnfetch(WB_REAL(f), off, p);
}

static int wb_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out)
{
    int push = vfs == &wb_push_vfs && (flags & SQLITE_OPEN_MAIN_DB) && name;
    if (!(flags & SQLITE_OPEN_WAL) && !push)
        return wb_real->xOpen(wb_real, name, f, flags, out); /* the real file, as is */
    wb_file *w = (wb_file *)f;
    memset(w, 0, sizeof *w);
    w->push = push;
    w->name = name;
    w->push_fd = -1;
    w->trim_fd = -1;
    w->real = (sqlite3_file *)((char *)f + ((sizeof(wb_file) + 15) & ~(size_t)15));
    int rc = wb_real->xOpen(wb_real, name, w->real, flags, out);
    if (rc != SQLITE_OK) {
        f->pMethods = NULL;
        return rc;
    }
    /* Cuts of a WAL the store writes wait for its checkpoint thread. */
    if (vfs == &wb_vfs && (flags & SQLITE_OPEN_WAL) && name &&
        pthread_mutex_init(&w->trim_mu, NULL) == 0)
        w->trim_init = 1;
    const sqlite3_io_methods *rm = w->real->pMethods;
    wb_methods.iVersion = rm->iVersion < 3 ? rm->iVersion : 3;
    f->pMethods = &wb_methods;
    return SQLITE_OK;
}

static int wb_delete(sqlite3_vfs *v, const char *name, int sync_dir)
{
    (void)v;
    return wb_real->xDelete(wb_real, name, sync_dir);
}

static int wb_access(sqlite3_vfs *v, const char *name, int flags, int *out)
{
    (void)v;
    return wb_real->xAccess(wb_real, name, flags, out);
}

static int wb_full_pathname(sqlite3_vfs *v, const char *name, int n, char *out)
{
    (void)v;
    return wb_real->xFullPathname(wb_real, name, n, out);
}

static void *wb_dlopen(sqlite3_vfs *v, const char *name)
{
    (void)v;
    return wb_real->xDlOpen(wb_real, name);
}

static void wb_dlerror(sqlite3_vfs *v, int n, char *msg)
{
    (void)v;
    wb_real->xDlError(wb_real, n, msg);
}

static void (*wb_dlsym(sqlite3_vfs *v, void *h, const char *sym))(void)
{
    (void)v;
    return wb_real->xDlSym(wb_real, h, sym);
}

static void wb_dlclose(sqlite3_vfs *v, void *h)
{
    (void)v;
    wb_real->xDlClose(wb_real, h);
}

static int wb_randomness(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    return wb_real->xRandomness(wb_real, n, out);
}

static int wb_sleep(sqlite3_vfs *v, int us)
{
    (void)v;
    return wb_real->xSleep(wb_real, us);
}

static int wb_current_time(sqlite3_vfs *v, double *t)
{
    (void)v;
    return wb_real->xCurrentTime(wb_real, t);
}

static int wb_last_error(sqlite3_vfs *v, int n, char *buf)
{
    (void)v;
    return wb_real->xGetLastError ? wb_real->xGetLastError(wb_real, n, buf) : 0;
}

static int wb_current_time_int64(sqlite3_vfs *v, sqlite3_int64 *t)
{
    (void)v;
    return wb_real->xCurrentTimeInt64(wb_real, t);
}

static int wb_registered;

/* Called under the store's own once-lock (store_sqlite.c). */
int sq_walbuf_register(void)
{
    if (wb_registered)
        return SQLITE_OK;
    wb_real = sqlite3_vfs_find(NULL);
    if (!wb_real || wb_real->iVersion < 2)
        return SQLITE_ERROR;
    wb_methods = (sqlite3_io_methods){
        .iVersion = 3,
        .xClose = wb_close,
        .xRead = wb_read,
        .xWrite = wb_write,
        .xTruncate = wb_truncate,
        .xSync = wb_sync,
        .xFileSize = wb_file_size,
        .xLock = wb_lock,
        .xUnlock = wb_unlock,
        .xCheckReservedLock = wb_check_reserved,
        .xFileControl = wb_file_control,
        .xSectorSize = wb_sector_size,
        .xDeviceCharacteristics = wb_device_chars,
        .xShmMap = wb_shm_map,
        .xShmLock = wb_shm_lock,
        .xShmBarrier = wb_shm_barrier,
        .xShmUnmap = wb_shm_unmap,
        .xFetch = wb_fetch,
        .xUnfetch = wb_unfetch,
    };
    int off = (int)((sizeof(wb_file) + 15) & ~(size_t)15);
    wb_vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = off + wb_real->szOsFile,
        .mxPathname = wb_real->mxPathname,
        .zName = SQ_WALBUF_VFS,
        .xOpen = wb_open,
        .xDelete = wb_delete,
        .xAccess = wb_access,
        .xFullPathname = wb_full_pathname,
        .xDlOpen = wb_dlopen,
        .xDlError = wb_dlerror,
        .xDlSym = wb_dlsym,
        .xDlClose = wb_dlclose,
        .xRandomness = wb_randomness,
        .xSleep = wb_sleep,
        .xCurrentTime = wb_current_time,
        .xGetLastError = wb_last_error,
        .xCurrentTimeInt64 = wb_current_time_int64,
    };
    wb_push_vfs = wb_vfs;
    wb_push_vfs.zName = SQ_WALBUF_PUSH_VFS;
    int rc = sqlite3_vfs_register(&wb_vfs, 0);
    if (rc == SQLITE_OK)
        rc = sqlite3_vfs_register(&wb_push_vfs, 0);
    if (rc == SQLITE_OK)
        wb_registered = 1;
    return rc;
}
