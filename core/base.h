/* base.h — internal macros shared by every layer: assertions, branch hints,
 * container_of, cache-line alignment. Not installed. */
#ifndef BDS_BASE_H
#define BDS_BASE_H

#include <stddef.h>
#include <stdint.h>

#define BDS_CACHELINE 64

#define BDS_LIKELY(x)   __builtin_expect(!!(x), 1)
#define BDS_UNLIKELY(x) __builtin_expect(!!(x), 0)

#define BDS_CONTAINER_OF(ptr, type, member) ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* Always compiled in: a broken invariant is our bug and must stop the process
 * loudly, with the expression and where (Redis serverAssert). */
_Noreturn void bds__assert_fail(const char *expr, const char *file, int line);
#define BDS_ASSERT(x) \
    (BDS_LIKELY(x) ? (void)0 : bds__assert_fail(#x, __FILE__, __LINE__))
#define BDS_UNREACHABLE() bds__assert_fail("unreachable", __FILE__, __LINE__)
#ifdef NDEBUG
#define BDS_DASSERT(x) ((void)0)
#else
#define BDS_DASSERT(x) BDS_ASSERT(x)
#endif
/* A caller broke a public API's contract (a call used after it ended, done
 * twice): it cannot go on safely, so stop the process with a message that
 * names the API function, the same way every time. */
_Noreturn void bds__misuse(const char *api, const char *what);
#define BDS_STATIC_ASSERT(x, msg) _Static_assert(x, msg)

#endif
