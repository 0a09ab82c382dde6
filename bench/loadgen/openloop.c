/* openloop: see openloop.h. Times are computed from the index, not by adding
 * a period repeatedly, so the schedule never drifts (1e9/rate is rarely an
 * integer) and a late sender cannot shift the times of later messages. */
#include "openloop.h"

#include <assert.h>

void bds_openloop_init(bds_openloop *ol, uint64_t start_ns, uint64_t rate_per_s, uint64_t end_ns)
{
    assert(rate_per_s > 0);
    ol->start_ns = start_ns;
    ol->rate = rate_per_s;
    ol->next = 0;
    ol->end_ns = end_ns;
}

uint64_t bds_openloop_intended(const bds_openloop *ol, uint64_t i)
{
    /* 128-bit product: i * 1e9 would overflow 64 bits after 1.8e10 messages. */
    unsigned __int128 off = (unsigned __int128)i * 1000000000u / ol->rate;
    return ol->start_ns + (uint64_t)off;
}

uint64_t bds_openloop_next_ns(const bds_openloop *ol)
{
    uint64_t t = bds_openloop_intended(ol, ol->next);
    return t >= ol->end_ns ? UINT64_MAX : t;
}

uint64_t bds_openloop_due(const bds_openloop *ol, uint64_t now_ns)
{
    if (now_ns < ol->start_ns)
        return 0;
    uint64_t until = now_ns < ol->end_ns ? now_ns : ol->end_ns - 1;
    if (ol->end_ns <= ol->start_ns || until < ol->start_ns)
        return 0;
    /* With d = until - start: intended(i) <= until
     *   <=> floor(i * 1e9 / rate) <= d  <=> i * 1e9 < (d + 1) * rate
     *   <=> i < ceil((d + 1) * rate / 1e9), so that ceiling counts them. */
    unsigned __int128 d1 = (unsigned __int128)(until - ol->start_ns) + 1u;
    uint64_t total = (uint64_t)((d1 * ol->rate + 999999999u) / 1000000000u);
    return total > ol->next ? total - ol->next : 0;
}

bool bds_openloop_take(bds_openloop *ol, uint64_t now_ns, uint64_t *intended_ns)
{
    uint64_t t = bds_openloop_next_ns(ol);
    if (t == UINT64_MAX || t > now_ns)
        return false;
    *intended_ns = t;
    ol->next++;
    return true;
}
