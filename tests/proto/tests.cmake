# tests/proto: one Criterion test per tests/proto/test_*.c (proto.<name>).
# The h2 tests drive an in-memory nghttp2 CLIENT session, so they link nghttp2 too;
# the compression tests make and read their inputs with zlib's own coder.
# Not the pipeline (bds_core_internal): that proto's tests link without it
# shows that proto uses nothing of core but its base (status, asserts).
bds_add_test_dir(proto LIBS bds_proto PkgConfig::NGHTTP2 PkgConfig::ZLIB)
