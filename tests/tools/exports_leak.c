/* exports_leak.c — a shared library that exports what libbidistream must not
 * (an internal bds__ name, a bds_ name no public header declares): the
 * tools.exports_catches test shows that tests/tools/exports.sh fails on it. */
int bds__leaked_internal(void);
int bds_undeclared_public(void);

__attribute__((visibility("default"))) int bds__leaked_internal(void) { return 1; }
__attribute__((visibility("default"))) int bds_undeclared_public(void) { return 2; }
