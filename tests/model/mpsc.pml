/* mpsc.pml — a Promela model of core/mpsc.c: claim (CAS on tail against the
 * published head), publish (slot store, then the push counter), pop, and the
 * sleep/wake latch (DESIGN §5.3), under sequential consistency.
 *
 * Checked by spin in safety mode:
 *   - "no slot reused before consumed": a producer only writes an empty slot;
 *   - no loss, no duplicate, per-producer order: asserted by the consumer;
 *   - "no lost wake-up": the consumer may block on the bell only at the
 *     labelled wait; if it is still blocked there after every producer has
 *     finished, spin reports an invalid end state.
 *
 * Variants (spin -D...): BUG_RESET_IN_WOKEN clears bell_rung on wake instead
 * of before sleeping; BUG_RING_BEFORE_PUBLISH checks `sleeping` before the
 * slot is published. Both must be caught (tests.cmake runs them and expects
 * errors), which shows the model has teeth. */

#define CAP 2
#define PRODUCERS 2
#define ITEMS 2          /* per producer */
#define TOTAL (PRODUCERS * ITEMS)

byte slot[CAP];          /* 0 = empty; else 1 + producer * ITEMS + seq */
byte tail = 0;
byte head_pub = 0;
byte pushes = 0;
bit sleeping = 0;
bit bell_rung = 0;
byte bell = 0;           /* pending doorbell deliveries (eventfd count / CQEs) */
byte done_producers = 0;

/* should_ring: load `sleeping`, then (a separate step) exchange bell_rung. */
#define SHOULD_RING                                         \
        if                                                  \
        :: sleeping == 1 -> atomic { ring = (bell_rung == 0); bell_rung = 1 } \
        :: else -> ring = false                             \
        fi

proctype producer(byte id) {
    byte seq = 0;
    byte pos;
    bool ring;
    do
    :: seq == ITEMS -> break
    :: else ->
        /* claim: one CAS on tail, only with room against the published head */
        atomic {
            (tail - head_pub < CAP) ->
            pos = tail;
            tail++
        };
#ifdef BUG_RING_BEFORE_PUBLISH
        SHOULD_RING;
#endif
        assert(slot[pos % CAP] == 0);          /* no slot reused before consumed */
        slot[pos % CAP] = 1 + id * ITEMS + seq;
        pushes++;
#ifndef BUG_RING_BEFORE_PUBLISH
        SHOULD_RING;
#endif
        if
        :: ring -> bell++
        :: else
        fi;
        seq++
    od;
    done_producers++
}

proctype consumer() {
    byte head = 0;
    byte seen = 0;
    byte got = 0;
    byte next[PRODUCERS];
    byte item, p;
    do
    :: got == TOTAL -> break
    :: else ->
        /* an awake tick may reap doorbell completions that are already pending */
        if
        :: bell > 0 -> bell = 0
        :: true
        fi;
        /* pop_burst */
        seen = pushes;
        do
        :: slot[head % CAP] != 0 ->
            item = slot[head % CAP] - 1;
            p = item / ITEMS;
            assert(item % ITEMS == next[p]);     /* per-producer order, no loss, no duplicate */
            next[p]++;
            slot[head % CAP] = 0;
            head++;
            got++
        :: else -> break
        od;
        head_pub = head;
        if
        :: got == TOTAL -> break
        :: else
        fi;
        /* prepare_sleep */
#ifndef BUG_RESET_IN_WOKEN
        bell_rung = 0;
#endif
        sleeping = 1;
        if
        :: pushes != seen || slot[head % CAP] != 0 -> sleeping = 0
        :: else ->
wait:       (bell > 0) -> bell--;
            sleeping = 0;
#ifdef BUG_RESET_IN_WOKEN
            bell_rung = 0;
#endif
        fi
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
