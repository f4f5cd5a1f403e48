/*
 * js_state.c — the json store's in-memory state and its indexes.
 *
 * Records are single malloc'd blocks (struct followed by its bytes). The
 * containers below own them; remove functions hand ownership back so the
 * undo log can keep a removed record alive until commit or put it back on
 * abort without copying.
 *
 * Indexes (why each exists):
 *   acc_by_name  sorted array: account_scan in name order, get by name (log n)
 *   acc_by_uid   hash map: account_get_uid on every request
 *   ses          sorted array by token hash: session_scan order, get (log n)
 *   msgs         array by id; ids only grow, so insertion is an append. A
 *                deleted message leaves a NULL slot until the next commit
 *                compacts them, so a delete does not move the whole array.
 *   users        uid -> recv/sent/unread vectors and the read count, so every
 *                per-user query walks only that user's messages
 *   peers        per pair (in the lower uid's js_user): the conversation
 *   cli          sorted array by client_id: client_scan order, get (log n)
 */
#include <stdlib.h>
#include <string.h>

#include "store_json.h"

/* ---- hash map ---- */

static uint64_t js_hash64(uint64_t x)
{
    /* splitmix64 finaliser: uids and ids are sequential, spread them. */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

void *js_map_get(const js_map *m, uint64_t key)
{
    size_t i, mask;

    if (m->cap == 0)
        return NULL;
    mask = m->cap - 1;
    for (i = js_hash64(key) & mask; m->slots[i].val; i = (i + 1) & mask) {
        if (m->slots[i].key == key)
            return m->slots[i].val;
    }
    return NULL;
}

static int js_map_grow(js_map *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 16, i, mask = ncap - 1;
    struct js_slot *ns = calloc(ncap, sizeof *ns);

    if (!ns)
        return PL_ERR_NOMEM;
    for (i = 0; i < m->cap; i++) {
        size_t j;

        if (!m->slots[i].val)
            continue;
        for (j = js_hash64(m->slots[i].key) & mask; ns[j].val; j = (j + 1) & mask)
            ;
        ns[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = ns;
    m->cap = ncap;
    return PL_OK;
}

int js_map_put(js_map *m, uint64_t key, void *val)
{
    size_t i, mask;

    if (!val)
        return PL_ERR_INTERNAL;
    /* Load factor at most 1/2 keeps probe runs short. */
    if ((m->n + 1) * 2 > m->cap && js_map_grow(m) != PL_OK)
        return PL_ERR_NOMEM;
    mask = m->cap - 1;
    for (i = js_hash64(key) & mask; m->slots[i].val; i = (i + 1) & mask) {
        if (m->slots[i].key == key) {
            m->slots[i].val = val;
            return PL_OK;
        }
    }
    m->slots[i].key = key;
    m->slots[i].val = val;
    m->n++;
    return PL_OK;
}

void *js_map_del(js_map *m, uint64_t key)
{
    size_t i, j, mask;
    void *old;

    if (m->cap == 0)
        return NULL;
    mask = m->cap - 1;
    for (i = js_hash64(key) & mask; m->slots[i].val; i = (i + 1) & mask) {
        if (m->slots[i].key == key)
            break;
    }
    if (!m->slots[i].val)
        return NULL;
    old = m->slots[i].val;
    m->slots[i].val = NULL;
    m->n--;
    /* Backward shift: move later members of the run into the hole when
     * their home slot is not between the hole and their position. */
    for (j = (i + 1) & mask; m->slots[j].val; j = (j + 1) & mask) {
        size_t home = js_hash64(m->slots[j].key) & mask;

        if (((j - home) & mask) >= ((j - i) & mask)) {
            m->slots[i] = m->slots[j];
            m->slots[j].val = NULL;
            i = j;
        }
    }
    return old;
}

void js_map_free(js_map *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}

/* ---- growable arrays ---- */

static int js_reserve(void **arr, size_t *cap, size_t need, size_t elem)
{
    size_t ncap;
    void *na;

    if (need <= *cap)
        return PL_OK;
    ncap = *cap ? *cap : 16;
    while (ncap < need)
        ncap *= 2;
    na = realloc(*arr, ncap * elem);
    if (!na)
        return PL_ERR_NOMEM;
    *arr = na;
    *cap = ncap;
    return PL_OK;
}

size_t js_mvec_lower(const js_mvec *v, uint64_t id)
{
    size_t lo = 0, hi = v->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (v->v[mid]->id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int js_mvec_add(js_mvec *v, js_message *m)
{
    size_t pos;

    if (js_reserve((void **)&v->v, &v->cap, v->n + 1, sizeof *v->v) != PL_OK)
        return PL_ERR_NOMEM;
    pos = (v->n == 0 || v->v[v->n - 1]->id < m->id) ? v->n : js_mvec_lower(v, m->id);
    memmove(v->v + pos + 1, v->v + pos, (v->n - pos) * sizeof *v->v);
    v->v[pos] = m;
    v->n++;
    return PL_OK;
}

static void js_mvec_drop(js_mvec *v, const js_message *m)
{
    size_t pos = js_mvec_lower(v, m->id);

    if (pos < v->n && v->v[pos] == m) {
        memmove(v->v + pos, v->v + pos + 1, (v->n - pos - 1) * sizeof *v->v);
        v->n--;
    }
}

/* Reserve room for one more element so a multi-index insert cannot fail
 * half-way (all-or-nothing without undoing partial index updates). */
static int js_mvec_room(js_mvec *v)
{
    return js_reserve((void **)&v->v, &v->cap, v->n + 1, sizeof *v->v);
}

/* ---- names ---- */

int js_name_cmp(const char *a, uint32_t alen, const char *b, uint32_t blen)
{
    uint32_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;

    if (c)
        return c;
    return alen < blen ? -1 : alen > blen ? 1 : 0;
}

/* ---- records ---- */

static void js_copy(char **dst, char **cursor, pl_str src)
{
    *dst = *cursor;
    if (src.len)
        memcpy(*cursor, src.ptr, src.len);
    *cursor += src.len;
}

js_account *js_account_new(uint64_t uid, pl_str name, pl_str pwhash, uint64_t created)
{
    js_account *a = malloc(sizeof *a + (size_t)name.len + pwhash.len);
    char *c;

    if (!a)
        return NULL;
    c = (char *)(a + 1);
    a->uid = uid;
    a->created_ms = created;
    a->name_len = name.len;
    a->pwhash_len = pwhash.len;
    js_copy(&a->name, &c, name);
    js_copy(&a->pwhash, &c, pwhash);
    return a;
}

js_session *js_session_new(pl_str hash, uint64_t uid, uint64_t created)
{
    js_session *r = malloc(sizeof *r + (size_t)hash.len);
    char *c;

    if (!r)
        return NULL;
    c = (char *)(r + 1);
    r->uid = uid;
    r->created_ms = created;
    r->hash_len = hash.len;
    js_copy(&r->hash, &c, hash);
    return r;
}

js_message *js_message_new(const pl_message_rec *m)
{
    js_message *r = malloc(sizeof *r + (size_t)m->from_name.len + m->to_name.len + m->body.len);
    char *c;

    if (!r)
        return NULL;
    c = (char *)(r + 1);
    r->id = m->id;
    r->from_uid = m->from_uid;
    r->to_uid = m->to_uid;
    r->time_ms = m->time_ms;
    r->flags = m->flags;
    r->from_len = m->from_name.len;
    r->to_len = m->to_name.len;
    r->body_len = m->body.len;
    js_copy(&r->from_name, &c, m->from_name);
    js_copy(&r->to_name, &c, m->to_name);
    js_copy(&r->body, &c, m->body);
    return r;
}

js_client *js_client_new(uint64_t id, uint64_t request_no, uint64_t op, pl_str reply)
{
    js_client *r = malloc(sizeof *r + (size_t)reply.len);
    char *c;

    if (!r)
        return NULL;
    c = (char *)(r + 1);
    r->client_id = id;
    r->request_no = request_no;
    r->op = op;
    r->reply_len = reply.len;
    js_copy(&r->reply, &c, reply);
    return r;
}

/* ---- accounts ---- */

js_account *js_acc_by_name(const js_state *st, const char *name, uint32_t len, size_t *pos)
{
    size_t lo = 0, hi = st->n_acc;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const js_account *a = st->acc_by_name[mid];

        if (js_name_cmp(a->name, a->name_len, name, len) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (pos)
        *pos = lo;
    if (lo < st->n_acc &&
        js_name_cmp(st->acc_by_name[lo]->name, st->acc_by_name[lo]->name_len, name, len) == 0)
        return st->acc_by_name[lo];
    return NULL;
}

js_account *js_acc_by_uid(const js_state *st, uint64_t uid)
{
    return js_map_get(&st->acc_by_uid, uid);
}

/* The caller has checked that neither the uid nor the name is taken. */
int js_acc_insert(js_state *st, js_account *a)
{
    size_t pos;

    if (js_reserve((void **)&st->acc_by_name, &st->cap_acc, st->n_acc + 1,
                   sizeof *st->acc_by_name) != PL_OK)
        return PL_ERR_NOMEM;
    if (js_map_put(&st->acc_by_uid, a->uid, a) != PL_OK)
        return PL_ERR_NOMEM;
    js_acc_by_name(st, a->name, a->name_len, &pos);
    memmove(st->acc_by_name + pos + 1, st->acc_by_name + pos,
            (st->n_acc - pos) * sizeof *st->acc_by_name);
    st->acc_by_name[pos] = a;
    st->n_acc++;
    return PL_OK;
}

js_account *js_acc_remove(js_state *st, uint64_t uid)
{
    js_account *a = js_map_del(&st->acc_by_uid, uid);
    size_t pos;

    if (!a)
        return NULL;
    if (js_acc_by_name(st, a->name, a->name_len, &pos) == a) {
        memmove(st->acc_by_name + pos, st->acc_by_name + pos + 1,
                (st->n_acc - pos - 1) * sizeof *st->acc_by_name);
        st->n_acc--;
    }
    return a;
}

/* ---- sessions ---- */

js_session *js_ses_find(const js_state *st, const char *h, uint32_t len, size_t *pos)
{
    size_t lo = 0, hi = st->n_ses;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const js_session *r = st->ses[mid];

        if (js_name_cmp(r->hash, r->hash_len, h, len) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (pos)
        *pos = lo;
    if (lo < st->n_ses &&
        js_name_cmp(st->ses[lo]->hash, st->ses[lo]->hash_len, h, len) == 0)
        return st->ses[lo];
    return NULL;
}

int js_ses_insert(js_state *st, js_session *r)
{
    size_t pos;

    if (js_reserve((void **)&st->ses, &st->cap_ses, st->n_ses + 1, sizeof *st->ses) != PL_OK)
        return PL_ERR_NOMEM;
    if (js_ses_find(st, r->hash, r->hash_len, &pos))
        return PL_ERR_INTERNAL;
    memmove(st->ses + pos + 1, st->ses + pos, (st->n_ses - pos) * sizeof *st->ses);
    st->ses[pos] = r;
    st->n_ses++;
    return PL_OK;
}

js_session *js_ses_remove(js_state *st, const char *h, uint32_t len)
{
    size_t pos;
    js_session *r = js_ses_find(st, h, len, &pos);

    if (!r)
        return NULL;
    memmove(st->ses + pos, st->ses + pos + 1, (st->n_ses - pos - 1) * sizeof *st->ses);
    st->n_ses--;
    return r;
}

/* ---- messages ---- */

js_user *js_user_get(const js_state *st, uint64_t uid)
{
    return js_map_get(&st->users, uid);
}

static js_user *js_user_make(js_state *st, uint64_t uid)
{
    js_user *u = js_map_get(&st->users, uid);

    if (u)
        return u;
    u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    if (js_map_put(&st->users, uid, u) != PL_OK) {
        free(u);
        return NULL;
    }
    return u;
}

js_mvec *js_pair_get(const js_state *st, uint64_t a, uint64_t b)
{
    uint64_t lo = a < b ? a : b, hi = a < b ? b : a;
    js_user *u = js_user_get(st, lo);

    return u ? js_map_get(&u->peers, hi) : NULL;
}

static js_mvec *js_pair_make(js_state *st, uint64_t a, uint64_t b)
{
    uint64_t lo = a < b ? a : b, hi = a < b ? b : a;
    js_user *u = js_user_make(st, lo);
    js_mvec *v;

    if (!u)
        return NULL;
    if ((v = js_map_get(&u->peers, hi)))
        return v;
    v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    if (js_map_put(&u->peers, hi, v) != PL_OK) {
        free(v);
        return NULL;
    }
    return v;
}

size_t js_msg_lower(const js_state *st, uint64_t id)
{
    size_t lo = 0, hi = st->n_msgs;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (st->msgs[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

js_message *js_msg_find(const js_state *st, uint64_t id)
{
    size_t pos;

    /* The common lookups are recent messages: try the tail first. */
    if (st->n_msgs && st->msgs[st->n_msgs - 1].id == id)
        return st->msgs[st->n_msgs - 1].m;
    pos = js_msg_lower(st, id);
    return pos < st->n_msgs && st->msgs[pos].id == id ? st->msgs[pos].m : NULL;
}

static int js_is_unread(uint32_t flags)
{
    return (flags & (PL_MSGF_READ | PL_MSGF_DEL_RECIPIENT)) == 0;
}

static int js_is_read(uint32_t flags)
{
    return (flags & (PL_MSGF_READ | PL_MSGF_DEL_RECIPIENT)) == PL_MSGF_READ;
}

/* All-or-nothing: every allocation happens before the first index changes. */
int js_msg_insert(js_state *st, js_message *m)
{
    js_user *to, *from;
    js_mvec *pair;
    size_t pos = st->n_msgs;

    if (!(to = js_user_make(st, m->to_uid)) || !(from = js_user_make(st, m->from_uid)) ||
        !(pair = js_pair_make(st, m->from_uid, m->to_uid)))
        return PL_ERR_NOMEM;
    if (js_mvec_room(&to->recv) || js_mvec_room(&to->unread) ||
        js_mvec_room(&from->sent) || js_mvec_room(pair))
        return PL_ERR_NOMEM;
    if (st->n_msgs && st->msgs[st->n_msgs - 1].id >= m->id) {
        pos = js_msg_lower(st, m->id);
        if (pos < st->n_msgs && st->msgs[pos].id == m->id) {
            if (st->msgs[pos].m)
                return PL_ERR_INVALID;
            /* reuse the slot a deleted message with this id left */
            st->msgs[pos].m = m;
            st->n_dead--;
            goto indexes;
        }
    }
    if (js_reserve((void **)&st->msgs, &st->cap_msgs, st->n_msgs + 1, sizeof *st->msgs) != PL_OK)
        return PL_ERR_NOMEM;
    memmove(st->msgs + pos + 1, st->msgs + pos, (st->n_msgs - pos) * sizeof *st->msgs);
    st->msgs[pos].id = m->id;
    st->msgs[pos].m = m;
    st->n_msgs++;
indexes:
    /* capacity was reserved above, these cannot fail */
    js_mvec_add(&to->recv, m);
    js_mvec_add(&from->sent, m);
    js_mvec_add(pair, m);
    if (js_is_unread(m->flags))
        js_mvec_add(&to->unread, m);
    else if (js_is_read(m->flags))
        to->n_read++;
    return PL_OK;
}

js_message *js_msg_remove(js_state *st, uint64_t id)
{
    size_t pos = js_msg_lower(st, id);
    js_message *m;
    js_user *to, *from;
    js_mvec *pair;

    if (pos >= st->n_msgs || st->msgs[pos].id != id || !st->msgs[pos].m)
        return NULL;
    m = st->msgs[pos].m;
    st->msgs[pos].m = NULL;
    st->n_dead++;
    if ((to = js_user_get(st, m->to_uid))) {
        js_mvec_drop(&to->recv, m);
        if (js_is_unread(m->flags))
            js_mvec_drop(&to->unread, m);
        else if (js_is_read(m->flags))
            to->n_read--;
    }
    if ((from = js_user_get(st, m->from_uid)))
        js_mvec_drop(&from->sent, m);
    if ((pair = js_pair_get(st, m->from_uid, m->to_uid)))
        js_mvec_drop(pair, m);
    return m;
}

int js_msg_set_flags(js_state *st, js_message *m, uint32_t flags)
{
    js_user *to = js_user_get(st, m->to_uid);
    int was_unread = js_is_unread(m->flags), now_unread = js_is_unread(flags);

    if (!to)
        return PL_ERR_INTERNAL;
    if (now_unread && !was_unread && js_mvec_room(&to->unread) != PL_OK)
        return PL_ERR_NOMEM;
    if (was_unread && !now_unread)
        js_mvec_drop(&to->unread, m);
    else if (!was_unread && now_unread)
        js_mvec_add(&to->unread, m);
    if (js_is_read(m->flags))
        to->n_read--;
    if (js_is_read(flags))
        to->n_read++;
    m->flags = flags;
    return PL_OK;
}

void js_msg_compact(js_state *st)
{
    size_t i, j = 0;

    for (i = 0; i < st->n_msgs; i++) {
        if (st->msgs[i].m)
            st->msgs[j++] = st->msgs[i];
    }
    st->n_msgs = j;
    st->n_dead = 0;
}

/* ---- client table ---- */

js_client *js_cli_find(const js_state *st, uint64_t id, size_t *pos)
{
    size_t lo = 0, hi = st->n_cli;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (st->cli[mid]->client_id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (pos)
        *pos = lo;
    return lo < st->n_cli && st->cli[lo]->client_id == id ? st->cli[lo] : NULL;
}

int js_cli_insert(js_state *st, js_client *c)
{
    size_t pos;

    if (js_reserve((void **)&st->cli, &st->cap_cli, st->n_cli + 1, sizeof *st->cli) != PL_OK)
        return PL_ERR_NOMEM;
    if (js_cli_find(st, c->client_id, &pos))
        return PL_ERR_INTERNAL;
    memmove(st->cli + pos + 1, st->cli + pos, (st->n_cli - pos) * sizeof *st->cli);
    st->cli[pos] = c;
    st->n_cli++;
    return PL_OK;
}

js_client *js_cli_remove(js_state *st, uint64_t id)
{
    size_t pos;
    js_client *c = js_cli_find(st, id, &pos);

    if (!c)
        return NULL;
    memmove(st->cli + pos, st->cli + pos + 1, (st->n_cli - pos - 1) * sizeof *st->cli);
    st->n_cli--;
    return c;
}

/* ---- meta (a handful of keys: a linear array is the right container) ---- */

js_meta *js_meta_find(const js_state *st, const char *key)
{
    size_t i;

    for (i = 0; i < st->n_meta; i++) {
        if (strcmp(st->meta[i].key, key) == 0)
            return &st->meta[i];
    }
    return NULL;
}

int js_meta_put(js_state *st, const js_meta *e)
{
    js_meta *cur = js_meta_find(st, e->key);

    if (cur) {
        *cur = *e;
        return PL_OK;
    }
    if (st->n_meta >= JS_META_MAX)
        return PL_ERR_INVALID;
    if (js_reserve((void **)&st->meta, &st->cap_meta, st->n_meta + 1, sizeof *st->meta) != PL_OK)
        return PL_ERR_NOMEM;
    st->meta[st->n_meta++] = *e;
    return PL_OK;
}

void js_meta_remove(js_state *st, const char *key)
{
    js_meta *cur = js_meta_find(st, key);

    if (cur)
        *cur = st->meta[--st->n_meta];
}

/* ---- teardown ---- */

static void js_user_free(js_user *u)
{
    size_t i;

    free(u->recv.v);
    free(u->sent.v);
    free(u->unread.v);
    for (i = 0; i < u->peers.cap; i++) {
        js_mvec *v = u->peers.slots[i].val;

        if (v) {
            free(v->v);
            free(v);
        }
    }
    js_map_free(&u->peers);
    free(u);
}

void js_state_free(js_state *st)
{
    size_t i;

    for (i = 0; i < st->n_acc; i++)
        free(st->acc_by_name[i]);
    free(st->acc_by_name);
    js_map_free(&st->acc_by_uid);
    for (i = 0; i < st->n_ses; i++)
        free(st->ses[i]);
    free(st->ses);
    for (i = 0; i < st->n_msgs; i++)
        free(st->msgs[i].m);
    free(st->msgs);
    for (i = 0; i < st->users.cap; i++) {
        if (st->users.slots[i].val)
            js_user_free(st->users.slots[i].val);
    }
    js_map_free(&st->users);
    for (i = 0; i < st->n_cli; i++)
        free(st->cli[i]);
    free(st->cli);
    free(st->meta);
    memset(st, 0, sizeof *st);
}

/* ---- undo log ---- */

int js_undo_push(js_undo_log *u, const js_undo *e)
{
    if (!u->active)
        return PL_OK;
    if (js_reserve((void **)&u->v, &u->cap, u->n + 1, sizeof *u->v) != PL_OK)
        return PL_ERR_NOMEM;
    u->v[u->n++] = *e;
    return PL_OK;
}

void js_undo_commit(js_undo_log *u)
{
    size_t i;

    for (i = 0; i < u->n; i++) {
        switch (u->v[i].kind) {
        case JU_ACC_REMOVED:
        case JU_SES_REMOVED:
        case JU_MSG_REMOVED:
        case JU_CLI_REMOVED:
            free(u->v[i].rec);
            break;
        default:
            break;
        }
    }
    u->n = 0;
    u->active = 0;
}

/* Every inverse re-inserts into an index that held the record a moment ago,
 * newest change first. Arrays and maps never shrink and deleted messages
 * keep their slot until commit, so the room each inverse needs is still
 * there and none of them allocates; the free on failure is only a guard. */
void js_undo_rollback(js_undo_log *u, js_state *st)
{
    while (u->n > 0) {
        js_undo *e = &u->v[--u->n];

        switch (e->kind) {
        case JU_ACC_INSERTED:
            free(js_acc_remove(st, ((js_account *)e->rec)->uid));
            break;
        case JU_ACC_REMOVED:
            if (js_acc_insert(st, e->rec) != PL_OK)
                free(e->rec);
            break;
        case JU_SES_INSERTED: {
            js_session *r = e->rec;

            free(js_ses_remove(st, r->hash, r->hash_len));
            break;
        }
        case JU_SES_REMOVED:
            if (js_ses_insert(st, e->rec) != PL_OK)
                free(e->rec);
            break;
        case JU_MSG_INSERTED:
            free(js_msg_remove(st, ((js_message *)e->rec)->id));
            break;
        case JU_MSG_REMOVED:
            if (js_msg_insert(st, e->rec) != PL_OK)
                free(e->rec);
            break;
        case JU_MSG_FLAGS: {
            js_message *m = js_msg_find(st, e->id);

            if (m)
                js_msg_set_flags(st, m, e->old_flags);
            break;
        }
        case JU_CLI_INSERTED:
            free(js_cli_remove(st, ((js_client *)e->rec)->client_id));
            break;
        case JU_CLI_REMOVED:
            if (js_cli_insert(st, e->rec) != PL_OK)
                free(e->rec);
            break;
        case JU_META:
            if (e->had_meta)
                js_meta_put(st, &e->old_meta);
            else
                js_meta_remove(st, e->old_meta.key);
            break;
        default:
            break;
        }
    }
    u->active = 0;
}

void js_undo_free(js_undo_log *u)
{
    free(u->v);
    memset(u, 0, sizeof *u);
}
