/* A stand-in for <criterion/criterion.h> in the TSan build only.
 *
 * Criterion's runner maps a shared arena at addresses ThreadSanitizer owns
 * and aborts at start ("Could not initialize inheritable arena", Criterion
 * issue #274, open). The TSan build therefore compiles the same test files
 * against this header, which implements the subset of Criterion the suite
 * uses — Test() with .timeout/.init/.fini, and the cr_assert family — and
 * runs them in one process with runner.c. Every other build uses Criterion. */
#ifndef BDS_TSAN_SHIM_CRITERION_H
#define BDS_TSAN_SHIM_CRITERION_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* cr_assert(x) with no message passes "" as the format. */
#pragma GCC diagnostic ignored "-Wformat-zero-length"

struct criterion_test_extra_data {
    double timeout; /* seconds; 0 = none */
    void (*init)(void);
    void (*fini)(void);
    int signal;     /* expected signal: such tests are skipped here */
    bool disabled;
    const char *description;
};

void bds_shim_register(const char *suite, const char *name, void (*fn)(void),
                       const struct criterion_test_extra_data *extra);
_Noreturn void bds_shim_fail(const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
_Noreturn void bds_shim_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define Test(suite, name, ...)                                                                      \
    static void suite##_##name##_impl(void);                                                        \
    static const struct criterion_test_extra_data suite##_##name##_extra = {__VA_ARGS__};           \
    __attribute__((constructor)) static void suite##_##name##_register(void) {                      \
        bds_shim_register(#suite, #name, suite##_##name##_impl, &suite##_##name##_extra);           \
    }                                                                                               \
    static void suite##_##name##_impl(void)

#define BDS_SHIM_CHECK(cond, expr, ...) \
    ((cond) ? (void)0 : bds_shim_fail(__FILE__, __LINE__, expr, "" __VA_ARGS__))

#define cr_assert(c, ...) BDS_SHIM_CHECK((c), #c, __VA_ARGS__)
#define cr_expect(c, ...) BDS_SHIM_CHECK((c), #c, __VA_ARGS__)
#define cr_assert_not(c, ...) BDS_SHIM_CHECK(!(c), "!(" #c ")", __VA_ARGS__)
#define cr_assert_eq(a, b, ...) BDS_SHIM_CHECK((a) == (b), #a " == " #b, __VA_ARGS__)
#define cr_assert_neq(a, b, ...) BDS_SHIM_CHECK((a) != (b), #a " != " #b, __VA_ARGS__)
#define cr_assert_lt(a, b, ...) BDS_SHIM_CHECK((a) < (b), #a " < " #b, __VA_ARGS__)
#define cr_assert_leq(a, b, ...) BDS_SHIM_CHECK((a) <= (b), #a " <= " #b, __VA_ARGS__)
#define cr_assert_gt(a, b, ...) BDS_SHIM_CHECK((a) > (b), #a " > " #b, __VA_ARGS__)
#define cr_assert_geq(a, b, ...) BDS_SHIM_CHECK((a) >= (b), #a " >= " #b, __VA_ARGS__)
#define cr_assert_null(p, ...) BDS_SHIM_CHECK((p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_assert_not_null(p, ...) BDS_SHIM_CHECK((p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...) BDS_SHIM_CHECK(strcmp((a), (b)) == 0, #a " streq " #b, __VA_ARGS__)
#define cr_assert_str_neq(a, b, ...) BDS_SHIM_CHECK(strcmp((a), (b)) != 0, #a " strneq " #b, __VA_ARGS__)
#define cr_assert_fail(...) bds_shim_fail(__FILE__, __LINE__, "cr_assert_fail", "" __VA_ARGS__)
#define cr_skip_test(...) bds_shim_skip("" __VA_ARGS__)
#define cr_log_info(...) (fprintf(stderr, __VA_ARGS__), fputc('\n', stderr))

#endif
