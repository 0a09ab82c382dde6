/* mpsc.pml — a Promela model of core/mpsc.c under sequential consistency,
 * checked with spin (tests/model/tests.cmake runs it; docs/ARCHITECTURE.md).
 *
 * Modelled, one shared-memory access per step, as in mpsc.c:
 *   producers: push_burst of one item or of all that is left (the room check
 *     against _head_cache, the refresh from _head_pub, the stale-pos reload,
 *     ONE CAS on _tail for k slots), one store per slot, then should_ring
 *     (load _sleeping; exchange _bell_rung) and the bell. A full ring goes
 *     through want_space (set the bit; read _tail and _head_pub) and blocks on
 *     the producer's own doorbell when that returns false;
 *   the consumer: pop_burst (stops at the first NULL slot), the _head_pub
 *     store, take_want_space and the producers' bells, then, after any drain
 *     and at its choice, prepare_sleep, the block on its doorbell, woken.
 *     While awake it may reap doorbell deliveries already pending (io_uring
 *     reaps a MSG_RING CQE in any tick), and after an aborted sleep attempt
 *     it may or may not call woken.
 * Doorbells are counters (eventfd, CQEs): a delivery stays pending until the
 * sleeper reads it. _pushes is left out: under SC the slot store itself is
 * the producer's write in the sleep handshake (mpsc.c needs the counter only
 * because its slot stores are release, not seq_cst).
 *
 * Bounds: capacity 2; producer 0 pushes ITEMS0 items, producer 1 ITEMS1
 * (2 and 1 by default: the ring fills, wraps, and both producers can find
 * it full; -DITEMS1=2 is the bigger run).
 *
 * Properties (safety mode, no LTL):
 *   - no slot reused before consumed: a producer stores only into a NULL slot;
 *   - no loss, no duplicate, per-producer order: the consumer's asserts, and
 *     it ends only after receiving every item;
 *   - no lost wake-up: the consumer blocks only at wait_bell, a producer only
 *     at wait_room; neither is a valid end state, so a sleeper that is never
 *     rung (everybody else finished or blocked) is an invalid end state.
 *
 * Broken variants (spin -DBUG_...), each of which spin must catch
 * (tests.cmake expects an error from each: the model has teeth):
 *   BUG_RING_BEFORE_PUBLISH   should_ring runs before the slot stores;
 *   BUG_RESET_IN_WOKEN        _bell_rung is cleared only by woken, not by
 *                             prepare_sleep (io/'s bug of commit 40fae9b);
 *   BUG_NO_WANT_RECHECK       want_space only sets the bit, no second look
 *                             (a void want_space);
 *   BUG_CHECK_BEFORE_SLEEPING prepare_sleep looks at the head slot before it
 *                             sets _sleeping;
 *   BUG_PUBLISH_HEAD_EARLY    the consumer publishes _head_pub before it NULLs
 *                             the slot (a slot reused before consumed);
 *   BUG_SKIP_UNPUBLISHED      the consumer steps over a claimed, unpublished
 *                             slot instead of ending the burst (loss). */

#define CAP 2
#define PRODUCERS 2
#define ITEMS 2          /* the most any producer pushes (item encoding) */
#define ITEMS0 2
#ifndef ITEMS1
#define ITEMS1 1
#endif
#define COUNT(id) (id == 0 -> ITEMS0 : ITEMS1)
#define TOTAL (ITEMS0 + ITEMS1)

byte slot[CAP];          /* 0 = NULL; else 1 + producer * ITEMS + seq */
byte tail = 0;
byte head_pub = 0;
byte head_cache = 0;
bit sleeping = 0;
bit bell_rung = 0;
byte want = 0;           /* want_space mask */
byte bell = 0;           /* pending deliveries of the consumer's doorbell */
byte pbell[PRODUCERS];   /* pending deliveries of each producer's doorbell */

/* should_ring: load _sleeping, then (a separate step) exchange _bell_rung. */
#define SHOULD_RING                                                          \
        if                                                                   \
        :: sleeping == 1 -> atomic { ring = (bell_rung == 0); bell_rung = 1 } \
        :: else -> ring = false                                              \
        fi;                                                                  \
        if                                                                   \
        :: ring -> bell++                                                    \
        :: else                                                              \
        fi

proctype producer(byte id) {
    byte seq = 0;
    byte n, k, pos, head, room, i, t, h;
    bool fresh, ring;
    do
    :: seq == COUNT(id) -> break
    :: else ->
        if
        :: n = 1
        :: n = COUNT(id) - seq
        fi;
push:   /* push_burst(items[seq..seq+n)) */
        pos = tail;
        head = head_cache;
        fresh = false;
claim:  if
        :: pos < head -> pos = tail; fresh = false; goto claim
        :: else
        fi;
        d_step { /* local arithmetic: one step */
            room = (pos - head < CAP -> CAP - (pos - head) : 0);
            k = (room < n -> room : n)
        };
        if
        :: room < n && !fresh ->
            head = head_pub;
            head_cache = head;
            fresh = true;
            goto claim
        :: else
        fi;
        if
        :: k == 0 ->
            /* full: want_space */
            want = want | (1 << id);
#ifdef BUG_NO_WANT_RECHECK
            room = 0;
#else
            t = tail;
            h = head_pub;
            d_step { room = (t - h < CAP -> 1 : 0); t = 0; h = 0 };
#endif
            if
            :: room -> goto push
            :: else ->
wait_room:      atomic { pbell[id] > 0 -> pbell[id] = 0 };
                goto push
            fi
        :: else
        fi;
        /* the CAS */
        if
        :: atomic { tail == pos -> tail = pos + k }
        :: atomic { tail != pos -> pos = tail }; fresh = false; goto claim
        fi;
#ifdef BUG_RING_BEFORE_PUBLISH
        SHOULD_RING;
#endif
        i = 0;
        do
        :: i == k -> break
        :: else ->
            assert(slot[(pos + i) % CAP] == 0);   /* no slot reused before consumed */
            slot[(pos + i) % CAP] = 1 + id * ITEMS + seq + i;
            i++
        od;
        i = 0;
#ifndef BUG_RING_BEFORE_PUBLISH
        SHOULD_RING;
#endif
        d_step { seq = seq + k; k = 0; n = 0; room = 0; pos = 0; head = 0; ring = false; fresh = false }
    od
}

proctype consumer() {
    byte head = 0;
    byte got = 0;
    byte next[PRODUCERS];
    byte item, p, n, w;
    do
    :: got == TOTAL -> break
    :: else ->
        /* an awake tick may reap doorbell deliveries already pending */
        if
        :: bell > 0 -> bell = 0
        :: true
        fi;
        /* pop_burst */
        n = 0;
        do
        :: slot[head % CAP] != 0 ->
            d_step {
                item = slot[head % CAP] - 1;
                p = item / ITEMS;
                assert(item % ITEMS == next[p]);   /* per-producer order, no loss, no duplicate */
                next[p]++;
                item = 0;
                p = 0
            };
#ifdef BUG_PUBLISH_HEAD_EARLY
            head_pub = head + 1;
#endif
            slot[head % CAP] = 0;
            d_step { head++; got++; n++ }
#ifdef BUG_SKIP_UNPUBLISHED
        :: slot[head % CAP] == 0 && tail > head + 1 && slot[(head + 1) % CAP] != 0 ->
            head++   /* steps over a claimed, unpublished slot */
#endif
        :: else -> break
        od;
        if
        :: n > 0 -> head_pub = head
        :: else
        fi;
        /* take_want_space, then ring those producers */
        if
        :: want != 0 ->
            atomic { w = want; want = 0 };
            d_step { /* the bells, one step: they do not interact */
                p = 0;
                do
                :: p == PRODUCERS -> break
                :: else ->
                    if
                    :: w & (1 << p) -> pbell[p]++
                    :: else
                    fi;
                    p++
                od;
                p = 0;
                w = 0
            }
        :: else
        fi;
        if
        :: got == TOTAL -> break
        :: got < TOTAL && n > 0     /* keep draining */
        :: got < TOTAL ->           /* or try to sleep, after any drain */
            /* prepare_sleep */
#ifndef BUG_RESET_IN_WOKEN
            bell_rung = 0;
#endif
#ifdef BUG_CHECK_BEFORE_SLEEPING
            if
            :: slot[head % CAP] != 0 -> goto awake
            :: else
            fi;
            sleeping = 1;
            skip;
#else
            sleeping = 1;
            skip;            /* the seq_cst load of _pushes: nothing to model under SC */
            if
            :: slot[head % CAP] != 0 -> sleeping = 0; goto aborted
            :: else
            fi;
#endif
wait_bell:  atomic { bell > 0 -> bell = 0 };
            sleeping = 0;    /* woken */
            bell_rung = 0;
            goto awake;
aborted:    if               /* woken after an aborted attempt: may be forgotten */
            :: sleeping = 0; bell_rung = 0
            :: true
            fi;
awake:      skip
        fi;
        n = 0
    od;
    assert(got == TOTAL)
}

init {
    atomic {
        run consumer();
        run producer(0);
        run producer(1)
    }
}
