# tests/deploy: the configurations of tools/deploy/ run by the real programs
# (Debian's HAProxy 2.6 and nginx 1.22, installed by tools/deps.sh) in front
# of three bidistreamd on loopback, driven by python3-grpcio
# (test_balancers.py). Labels deploy and e2e.
if(TARGET bidistreamd)
  add_test(NAME deploy.balancers
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/deploy/test_balancers.py $<TARGET_FILE:bidistreamd>)
  set_tests_properties(deploy.balancers PROPERTIES LABELS "deploy;e2e" TIMEOUT 300
    FAIL_REGULAR_EXPRESSION "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer")
endif()
