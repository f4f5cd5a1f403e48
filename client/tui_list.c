/*
 * client/tui_list.c — the message lists of the terminal UI: owned copies of
 * messages (bodies decoded once to wide characters), kept in id order, with
 * a cursor and a selection.
 */
#include <stdlib.h>
#include <string.h>

#include "tui_int.h"
#include "tui_text.h"

static char *str_copy(pl_str s)
{
    char *d = malloc((size_t)s.len + 1);

    if (!d)
        return NULL;
    if (s.len)
        memcpy(d, s.ptr, s.len);
    d[s.len] = '\0';
    return d;
}

tui_msg *tui_msg_new(const pl_message *m)
{
    tui_msg *t = calloc(1, sizeof *t);

    if (!t)
        return NULL;
    t->id = m->id;
    t->time_ms = m->time_ms;
    t->state = m->state;
    t->from = str_copy(m->from);
    t->to = str_copy(m->to);
    t->body = tui_utf8_decode(m->body.ptr ? m->body.ptr : "", m->body.len, &t->body_len);
    if (!t->from || !t->to || !t->body) {
        tui_msg_free(t);
        return NULL;
    }
    return t;
}

tui_msg *tui_msg_dup(const tui_msg *m)
{
    tui_msg *t = calloc(1, sizeof *t);

    if (!t)
        return NULL;
    *t = *m;
    t->from = strdup(m->from);
    t->to = strdup(m->to);
    t->body = malloc((m->body_len + 1) * sizeof *t->body);
    if (!t->from || !t->to || !t->body) {
        free(t->from);
        free(t->to);
        free(t->body);
        free(t);
        return NULL;
    }
    memcpy(t->body, m->body, (m->body_len + 1) * sizeof *t->body);
    t->selected = 0;
    t->drawn = 0;
    t->acking = 0;
    return t;
}

void tui_msg_free(tui_msg *m)
{
    if (!m)
        return;
    free(m->from);
    free(m->to);
    free(m->body);
    free(m);
}

void tui_list_clear(tui_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        tui_msg_free(l->v[i]);
    l->n = l->cur = l->top = 0;
}

void tui_list_free(tui_list *l)
{
    tui_list_clear(l);
    free(l->v);
    l->v = NULL;
    l->cap = 0;
}

static int grow(tui_list *l)
{
    if (l->n < l->cap)
        return 0;
    size_t ncap = l->cap ? l->cap * 2 : 32;
    tui_msg **nv = realloc(l->v, ncap * sizeof *nv);
    if (!nv)
        return -1;
    l->v = nv;
    l->cap = ncap;
    return 0;
}

int tui_list_push(tui_list *l, tui_msg *m)
{
    if (grow(l) != 0) {
        tui_msg_free(m);
        return -1;
    }
    l->v[l->n++] = m;
    return 0;
}

size_t tui_list_find(const tui_list *l, uint64_t id)
{
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i]->id == id)
            return i;
    return SIZE_MAX;
}

int tui_list_insert_sorted(tui_list *l, tui_msg *m, int descending)
{
    size_t at = 0;

    if (tui_list_find(l, m->id) != SIZE_MAX) {
        tui_msg_free(m);
        return 0;
    }
    if (grow(l) != 0) {
        tui_msg_free(m);
        return -1;
    }
    while (at < l->n && (descending ? l->v[at]->id > m->id : l->v[at]->id < m->id))
        at++;
    memmove(l->v + at + 1, l->v + at, (l->n - at) * sizeof *l->v);
    l->v[at] = m;
    l->n++;
    /* Keep the cursor on the item it was on. */
    if (l->n > 1 && at <= l->cur)
        l->cur++;
    if (l->n > 1 && at < l->top)
        l->top++;
    return 0;
}

void tui_list_remove(tui_list *l, size_t i)
{
    if (i >= l->n)
        return;
    tui_msg_free(l->v[i]);
    memmove(l->v + i, l->v + i + 1, (l->n - i - 1) * sizeof *l->v);
    l->n--;
    if (l->cur > i || (l->cur == l->n && l->cur > 0))
        l->cur--;
    if (l->top > i || (l->top >= l->n && l->top > 0))
        l->top--;
}

size_t tui_list_targets(const tui_list *l, uint64_t **ids)
{
    size_t n = 0, k = 0;

    *ids = NULL;
    for (size_t i = 0; i < l->n; i++)
        n += l->v[i]->selected ? 1 : 0;
    if (n == 0 && l->n == 0)
        return 0;
    *ids = malloc((n ? n : 1) * sizeof **ids);
    if (!*ids)
        return 0;
    if (n == 0) {
        (*ids)[0] = l->v[l->cur]->id;
        return 1;
    }
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i]->selected)
            (*ids)[k++] = l->v[i]->id;
    return n;
}
