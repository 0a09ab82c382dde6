# tests/e2e: bidistreamd against an independent gRPC client (Debian's
# python3-grpcio through /usr/bin/python3), label e2e. Also run by the TSan
# build: the server then runs under ThreadSanitizer and any report fails.
# bds_py_test is in tests/CMakeLists.txt.
if(TARGET bidistreamd)
  set(d $<TARGET_FILE:bidistreamd>)
  # The stream API (bidistream/server.h) through a server built on the public
  # API only, driven by grpcio (test_api.py).
  add_executable(api_server ${CMAKE_CURRENT_SOURCE_DIR}/e2e/api_server.c)
  target_link_libraries(api_server PRIVATE bidistream_static Threads::Threads)
  bds_py_test(e2e.api e2e/test_api.py "e2e;tsan" 600 ARGS $<TARGET_FILE:api_server>)
  bds_py_test(e2e.grpcio e2e/test_grpcio.py "e2e;tsan" 900 ARGS ${d})
  # grpc.testing.TestService beyond the interop client's cases (test_interop.py).
  # BDS_SANITIZE: peak-RSS bounds allow for TSan's shadow memory (~4x the heap).
  bds_py_test(e2e.interop e2e/test_interop.py "e2e;tsan" 600 ENV "BDS_SANITIZE=${BDS_SANITIZE}" ARGS ${d})
  # TLS: streams, interop cases, mTLS, ALPN and protocol refusals, SIGHUP reload (test_tls.py).
  bds_py_test(e2e.tls e2e/test_tls.py "e2e;tsan" 600 ARGS ${d})
  # The interop cases with @grpc/grpc-js over h2c and TLS (test_grpcjs.py; npm ci into the build tree).
  bds_py_test(e2e.grpcjs e2e/test_grpcjs.py "e2e" 900 ARGS ${d} ${CMAKE_BINARY_DIR}/js)
  # Running as a systemd service: the readiness protocol, the unit file (test_service.py).
  bds_py_test(e2e.service e2e/test_service.py "e2e" 300 ARGS ${d})
  # grpc.reflection.v1/v1alpha (test_reflection.py).
  bds_py_test(e2e.reflection e2e/test_reflection.py "e2e" 300 ARGS ${d})
  # Message compression beyond the interop cases: Process, --compress-responses,
  # zip bombs with the server's peak RSS bounded (test_compress.py).
  bds_py_test(e2e.compress e2e/test_compress.py "e2e" 600 ENV "BDS_SANITIZE=${BDS_SANITIZE}" ARGS ${d})
  # The bds client (tools/bds.c) against the real server.
  bds_py_test(e2e.bds_client e2e/test_bds_client.py "e2e" 600 ENV "BDS_CLIENT=$<TARGET_FILE:bds>" ARGS ${d})
  # HTTP/2 floods and malformed input through real sockets (docs/SERVICE.md): a clear
  # HTTP/2 error for the abuser, service for everyone else.
  bds_py_test(e2e.h2_floods e2e/test_h2_floods.py "e2e" 600 ARGS ${d})
  # The Prometheus endpoint (promtool, counters against what was sent, malformed
  # and oversized requests, the connection bound) and the key=value logs.
  bds_py_test(e2e.metrics e2e/test_metrics.py "e2e;tsan" 600 ARGS ${d})
  # Connection timers (handshake, idle, keepalive, client PING policy, send stall, age and its grace).
  bds_py_test(e2e.conn_timers e2e/test_conn_timers.py "e2e" 600 ARGS ${d})
  # A short soak (tools/soak.sh runs the long one): mixed load, then RSS,
  # descriptors, every buffer and session accounted for.
  bds_py_test(e2e.soak e2e/soak.py "e2e" 400 ARGS ${d} 45 --shards 2)
endif()
# The same pipeline tests against gRPC C++ with the pipeline in front
# (adapters/grpcpp; bidistream-grpcpp takes bidistreamd's flags): keyed FIFO,
# the half-close drain, failure, malformed Frames, deadline and cancel, every
# bound on what a fast or non-reading client makes the server hold (inbound
# capacity and bytes, outbound capacity), and the graceful shutdown. Left
# out: what bidistreamd's own HTTP/2 and services do (interop, memory
# budgets, example_server, its health scanner's answer to a malformed
# request, its flags' errors).
if(BDS_GRPCPP AND TARGET bidistream-grpcpp)
  set(bds_grpcpp_e2e "Pipeline.test_key,Pipeline.test_half_close,Pipeline.test_fail,Pipeline.test_field_numbers")
  string(APPEND bds_grpcpp_e2e ",Pipeline.test_malformed,Pipeline.test_deadline,Pipeline.test_client_cancel")
  string(APPEND bds_grpcpp_e2e ",Pipeline.test_message_over,Pipeline.test_unknown_method,Pipeline.test_interop_test_service")
  string(APPEND bds_grpcpp_e2e ",Pipeline.test_health_check_serving,Admission,NeverReads,FastSender,PartialMessages,Shutdown")
  set(bds_grpcpp_labels "e2e")
  set(bds_grpcpp_env "")
  if(BDS_SANITIZE STREQUAL "tsan")
    # The TSan build checks the adapter's threads (gRPC's callback threads,
    # the pipeline threads) on the concurrent groups; the bounds' RSS checks
    # are left to the ASan build. gRPC itself is not instrumented:
    # adapters/grpcpp/tsan.supp drops the reports inside it.
    set(bds_grpcpp_e2e "Pipeline.test_key,Pipeline.test_half_close,Pipeline.test_fail,Admission,Shutdown")
    set(bds_grpcpp_labels "e2e;tsan")
    set(bds_grpcpp_env "TSAN_OPTIONS=suppressions=${PROJECT_SOURCE_DIR}/adapters/grpcpp/tsan.supp")
  endif()
  bds_py_test(e2e.grpcpp e2e/test_grpcio.py "${bds_grpcpp_labels}" 900 ENV "${bds_grpcpp_env}"
              ARGS $<TARGET_FILE:bidistream-grpcpp> ${bds_grpcpp_e2e})
endif()
