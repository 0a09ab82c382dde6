# tests/proto: one Criterion test per tests/proto/test_*.c (proto.<name>).
# The h2 tests drive an in-memory nghttp2 CLIENT session, so they link nghttp2 too.
bds_add_test_dir(proto LIBS bds_proto bds_core_internal PkgConfig::NGHTTP2)
