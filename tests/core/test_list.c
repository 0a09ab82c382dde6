/* test_list.c — the intrusive doubly linked list (core/list.h). */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "list.h"

typedef struct item {
    int id;
    bds__dlist link;
} item;

/* Asserts that |head|'s list holds exactly |ids| in order, walking both ways. */
static void expect_ids(const bds__dlist *head, const int *ids, int n) {
    int i = 0;
    for (const bds__dlist *l = head->next; l != head; l = l->next, i++) {
        cr_assert_lt(i, n, "more than %d elements", n);
        cr_assert_eq(BDS_DLIST_ENTRY(l, item, link)->id, ids[i], "element %d", i);
        cr_assert_eq(l->next->prev, l, "next->prev of element %d", i);
    }
    cr_assert_eq(i, n, "%d elements, want %d", i, n);
    for (const bds__dlist *l = head->prev; l != head; l = l->prev) {
        cr_assert_eq(BDS_DLIST_ENTRY(l, item, link)->id, ids[--i], "backwards, element %d", i);
    }
    cr_assert_eq(bds__dlist_empty(head), n == 0);
}

Test(list, a_new_head_is_empty_and_a_new_link_is_unlinked) {
    bds__dlist head, link;
    bds__dlist_init(&head);
    bds__dlist_init(&link);
    cr_assert(bds__dlist_empty(&head));
    cr_assert_null(bds__dlist_first(&head));
    cr_assert_not(bds__dlist_linked(&link));
}

Test(list, insert_head_and_tail_keep_their_order) {
    bds__dlist head;
    item it[4] = {{.id = 0}, {.id = 1}, {.id = 2}, {.id = 3}};
    bds__dlist_init(&head);
    for (int i = 0; i < 4; i++) bds__dlist_init(&it[i].link);
    bds__dlist_insert_tail(&head, &it[1].link);
    bds__dlist_insert_tail(&head, &it[2].link);
    bds__dlist_insert_head(&head, &it[0].link);
    bds__dlist_insert_tail(&head, &it[3].link);
    expect_ids(&head, (int[]){0, 1, 2, 3}, 4);
    cr_assert_eq(bds__dlist_first(&head), &it[0].link);
    for (int i = 0; i < 4; i++) cr_assert(bds__dlist_linked(&it[i].link));
}

Test(list, unlink_first_middle_and_last_leaves_the_rest_intact) {
    bds__dlist head;
    item it[5];
    bds__dlist_init(&head);
    for (int i = 0; i < 5; i++) {
        it[i].id = i;
        bds__dlist_init(&it[i].link);
        bds__dlist_insert_tail(&head, &it[i].link);
    }
    bds__dlist_unlink(&it[2].link);
    expect_ids(&head, (int[]){0, 1, 3, 4}, 4);
    bds__dlist_unlink(&it[0].link);
    expect_ids(&head, (int[]){1, 3, 4}, 3);
    bds__dlist_unlink(&it[4].link);
    expect_ids(&head, (int[]){1, 3}, 2);
    bds__dlist_unlink(&it[1].link);
    bds__dlist_unlink(&it[3].link);
    expect_ids(&head, NULL, 0);
    for (int i = 0; i < 5; i++) cr_assert_not(bds__dlist_linked(&it[i].link), "item %d", i);
}

Test(list, unlinking_twice_is_harmless_and_the_link_can_join_again) {
    bds__dlist head;
    item a = {.id = 7}, b = {.id = 8};
    bds__dlist_init(&head);
    bds__dlist_init(&a.link);
    bds__dlist_init(&b.link);
    bds__dlist_insert_tail(&head, &a.link);
    bds__dlist_insert_tail(&head, &b.link);
    bds__dlist_unlink(&a.link);
    bds__dlist_unlink(&a.link);
    expect_ids(&head, (int[]){8}, 1);
    bds__dlist_insert_tail(&head, &a.link);
    expect_ids(&head, (int[]){8, 7}, 2);
}

Test(list, foreach_safe_visits_every_element_while_the_body_frees_them) {
    bds__dlist head, *it, *nx;
    bds__dlist_init(&head);
    for (int i = 0; i < 6; i++) {
        item *x = malloc(sizeof *x);
        cr_assert_not_null(x);
        x->id = i;
        bds__dlist_init(&x->link);
        bds__dlist_insert_tail(&head, &x->link);
    }
    int seen = 0;
    BDS_DLIST_FOREACH_SAFE(it, nx, &head) {
        item *x = BDS_DLIST_ENTRY(it, item, link);
        cr_assert_eq(x->id, seen++);
        if (x->id % 2 == 0) { /* free every other one mid-walk */
            bds__dlist_unlink(&x->link);
            free(x);
        }
    }
    cr_assert_eq(seen, 6);
    expect_ids(&head, (int[]){1, 3, 5}, 3);
    BDS_DLIST_FOREACH_SAFE(it, nx, &head) {
        bds__dlist_unlink(it);
        free(BDS_DLIST_ENTRY(it, item, link));
    }
    cr_assert(bds__dlist_empty(&head));
}

/* A link from zeroed memory was never initialized: using it stops the process
 * at once rather than corrupting a list. */
Test(list, unlinking_a_never_initialized_link_aborts, .signal = SIGABRT) {
    bds__dlist link;
    memset(&link, 0, sizeof link);
    bds__dlist_unlink(&link);
}

Test(list, inserting_a_link_that_is_on_another_list_aborts, .signal = SIGABRT) {
    bds__dlist one, two;
    item a = {.id = 1};
    bds__dlist_init(&one);
    bds__dlist_init(&two);
    bds__dlist_init(&a.link);
    bds__dlist_insert_tail(&one, &a.link);
    bds__dlist_insert_tail(&two, &a.link);
}
