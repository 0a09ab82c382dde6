# tests/io: the io_uring runtime against loopback sockets (127.0.0.1, ephemeral ports).
# test_server drives the gRPC server with an nghttp2 client, hence nghttp2.
bds_add_test_dir(io LIBS bds_io bds_core_internal PkgConfig::NGHTTP2)
