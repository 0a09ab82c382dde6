/* list.h — the one intrusive doubly linked list (internal, every layer).
 *
 * A circular list with a sentinel head, as the Linux kernel's list_head and
 * h2o's h2o_linklist_t: the head is a bds__dlist that is never an element, so
 * inserting and unlinking have no "first or last?" branches and unlinking
 * needs no pointer to the list. An object joins a list through a bds__dlist
 * member (its link) and is found back from the link with BDS_DLIST_ENTRY.
 *
 * A link is either on one list or unlinked; unlinked means it points to
 * itself (after bds__dlist_init or bds__dlist_unlink), so unlinking twice is
 * harmless and bds__dlist_linked tells which. A link or head that was never
 * initialized (zeroed memory: both pointers NULL) is a bug this header stops
 * at with BDS_ASSERT, instead of a crash somewhere later.
 *
 * Thread/Shard: no locking; a list and its elements belong to one thread.
 * Ownership: the list owns nothing: freeing an element is its owner's job,
 * after unlinking it. */
#ifndef BDS_CORE_LIST_H
#define BDS_CORE_LIST_H

#include <stdbool.h>

#include "base.h"

typedef struct bds__dlist {
    struct bds__dlist *prev, *next;
} bds__dlist;

/* Makes |l| an empty head, or an unlinked link. */
static inline void bds__dlist_init(bds__dlist *l) { l->prev = l->next = l; }

/* True when the list headed by |head| has no element. */
static inline bool bds__dlist_empty(const bds__dlist *head) {
    BDS_ASSERT(head->next != NULL);
    return head->next == head;
}

/* True when |link| is on a list (false once unlinked or only initialized). */
static inline bool bds__dlist_linked(const bds__dlist *link) {
    BDS_ASSERT(link->next != NULL);
    return link->next != link;
}

/* Puts the unlinked |link| between |prev| and |next|, which are adjacent. */
static inline void bds__dlist_between(bds__dlist *prev, bds__dlist *next, bds__dlist *link) {
    BDS_ASSERT(prev->next == next && next->prev == prev);
    BDS_ASSERT(link->next == link); /* on no other list: that one would be corrupted */
    link->prev = prev;
    link->next = next;
    prev->next = link;
    next->prev = link;
}

/* Inserts the unlinked |link| first in |head|'s list. */
static inline void bds__dlist_insert_head(bds__dlist *head, bds__dlist *link) {
    bds__dlist_between(head, head->next, link);
}

/* Inserts the unlinked |link| last in |head|'s list. */
static inline void bds__dlist_insert_tail(bds__dlist *head, bds__dlist *link) {
    bds__dlist_between(head->prev, head, link);
}

/* Takes |link| off its list and leaves it unlinked; a no-op when it already is. */
static inline void bds__dlist_unlink(bds__dlist *link) {
    BDS_ASSERT(link->next != NULL && link->prev != NULL);
    link->prev->next = link->next;
    link->next->prev = link->prev;
    link->prev = link->next = link;
}

/* The first element's link, or NULL when the list is empty. */
static inline bds__dlist *bds__dlist_first(const bds__dlist *head) {
    return bds__dlist_empty(head) ? NULL : head->next;
}

/* The object of type |type| whose member |member| is |link|. */
#define BDS_DLIST_ENTRY(link, type, member) BDS_CONTAINER_OF(link, type, member)

/* Visits every link of |head|'s list in order; the body may unlink (and free)
 * the element at |it|, since |nx| already holds the next one (it must not unlink
 * that one). Elements inserted during the walk may or may not be visited. */
#define BDS_DLIST_FOREACH_SAFE(it, nx, head) \
    for ((it) = (head)->next, (nx) = (it)->next; (it) != (head); (it) = (nx), (nx) = (it)->next)

#endif
