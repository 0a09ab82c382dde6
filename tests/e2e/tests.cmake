# tests/e2e: bidistreamd against an independent gRPC client (Debian's
# python3-grpcio through /usr/bin/python3), label e2e. Also run by the TSan
# build: the server then runs under ThreadSanitizer and any report fails.
if(TARGET bidistreamd)
  # The stream API (bidistream/server.h) through a server built on the public
  # API only, driven by grpcio (test_api.py).
  add_executable(api_server ${CMAKE_CURRENT_SOURCE_DIR}/e2e/api_server.c)
  target_link_libraries(api_server PRIVATE bidistream_static Threads::Threads)
  add_test(NAME e2e.api
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_api.py $<TARGET_FILE:api_server>)
  set_tests_properties(e2e.api PROPERTIES LABELS "e2e;tsan" TIMEOUT 600
    FAIL_REGULAR_EXPRESSION "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer")
  add_test(NAME e2e.grpcio
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_grpcio.py $<TARGET_FILE:bidistreamd>)
  set_tests_properties(e2e.grpcio PROPERTIES LABELS "e2e;tsan" TIMEOUT 900
    FAIL_REGULAR_EXPRESSION "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer")
  # grpc.testing.TestService beyond the interop client's cases (test_interop.py).
  add_test(NAME e2e.interop
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_interop.py $<TARGET_FILE:bidistreamd>)
  # TLS: streams, interop cases, mTLS, ALPN and protocol refusals, SIGHUP reload (test_tls.py).
  add_test(NAME e2e.tls
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_tls.py $<TARGET_FILE:bidistreamd>)
  set_tests_properties(e2e.tls PROPERTIES LABELS "e2e;tsan" TIMEOUT 600
    FAIL_REGULAR_EXPRESSION "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer")
  # The interop cases with @grpc/grpc-js over h2c and TLS (test_grpcjs.py; npm ci into the build tree).
  add_test(NAME e2e.grpcjs
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_grpcjs.py $<TARGET_FILE:bidistreamd>
            ${CMAKE_BINARY_DIR}/js)
  set_tests_properties(e2e.grpcjs PROPERTIES LABELS "e2e" TIMEOUT 900
    FAIL_REGULAR_EXPRESSION "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer")
  # Running as a systemd service: the readiness protocol, the unit file (test_service.py).
  add_test(NAME e2e.service
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_service.py $<TARGET_FILE:bidistreamd>)
  set_tests_properties(e2e.service PROPERTIES LABELS "e2e" TIMEOUT 300
    FAIL_REGULAR_EXPRESSION "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer")
  # grpc.reflection.v1/v1alpha (test_reflection.py).
  add_test(NAME e2e.reflection
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_reflection.py $<TARGET_FILE:bidistreamd>)
  set_tests_properties(e2e.reflection PROPERTIES LABELS "e2e" TIMEOUT 300
    FAIL_REGULAR_EXPRESSION "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer")
  # Message compression beyond the interop cases: Process, --compress-responses,
  # zip bombs with the server's peak RSS bounded (test_compress.py).
  add_test(NAME e2e.compress
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_compress.py $<TARGET_FILE:bidistreamd>)
  set_tests_properties(e2e.compress PROPERTIES LABELS "e2e" TIMEOUT 600
    ENVIRONMENT "BDS_SANITIZE=${BDS_SANITIZE}"
    FAIL_REGULAR_EXPRESSION "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer")
  # The bds client (tools/bds.c) against the real server.
  add_test(NAME e2e.bds_client
    COMMAND ${CMAKE_COMMAND} -E env BDS_CLIENT=$<TARGET_FILE:bds>
            /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_bds_client.py $<TARGET_FILE:bidistreamd>)
  set_tests_properties(e2e.bds_client PROPERTIES LABELS "e2e" TIMEOUT 600
    FAIL_REGULAR_EXPRESSION "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer")
  # HTTP/2 floods and malformed input through real sockets (docs/SERVICE.md): a clear
  # HTTP/2 error for the abuser, service for everyone else.
  add_test(NAME e2e.h2_floods
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_h2_floods.py $<TARGET_FILE:bidistreamd>)
  set_tests_properties(e2e.h2_floods PROPERTIES LABELS "e2e" TIMEOUT 600
    FAIL_REGULAR_EXPRESSION "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer")
  # The Prometheus endpoint (promtool, counters against what was sent, malformed
  # and oversized requests, the connection bound) and the key=value logs.
  add_test(NAME e2e.metrics
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_metrics.py $<TARGET_FILE:bidistreamd>)
  set_tests_properties(e2e.metrics PROPERTIES LABELS "e2e;tsan" TIMEOUT 600
    FAIL_REGULAR_EXPRESSION "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer")
  # Connection timers (handshake, idle, keepalive, client PING policy, send stall, age and its grace).
  add_test(NAME e2e.conn_timers
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_conn_timers.py $<TARGET_FILE:bidistreamd>)
  set_tests_properties(e2e.conn_timers PROPERTIES LABELS "e2e" TIMEOUT 600
    FAIL_REGULAR_EXPRESSION "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer")
  # A short soak (tools/soak.sh runs the long one): mixed load, then RSS,
  # descriptors, every buffer and session accounted for.
  add_test(NAME e2e.soak
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/soak.py $<TARGET_FILE:bidistreamd> 45 --shards 2)
  set_tests_properties(e2e.soak PROPERTIES LABELS "e2e" TIMEOUT 400
    FAIL_REGULAR_EXPRESSION "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer")
  # BDS_SANITIZE: peak-RSS bounds allow for TSan's shadow memory (~4x the heap).
  set_tests_properties(e2e.interop PROPERTIES LABELS "e2e;tsan" TIMEOUT 600
    ENVIRONMENT "BDS_SANITIZE=${BDS_SANITIZE}"
    FAIL_REGULAR_EXPRESSION "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer")
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
  add_test(NAME e2e.grpcpp
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_grpcio.py $<TARGET_FILE:bidistream-grpcpp>
            ${bds_grpcpp_e2e})
  set_tests_properties(e2e.grpcpp PROPERTIES LABELS "${bds_grpcpp_labels}" TIMEOUT 900
    ENVIRONMENT "${bds_grpcpp_env}"
    FAIL_REGULAR_EXPRESSION "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer")
endif()
