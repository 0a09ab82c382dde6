# tests/deploy: the configurations of tools/deploy/ run by the real programs
# (Debian's HAProxy 2.6 and nginx 1.22, installed by tools/deps.sh) in front
# of three bidistreamd on loopback, driven by python3-grpcio
# (test_balancers.py). Labels deploy and e2e.
if(TARGET bidistreamd)
  bds_py_test(deploy.balancers deploy/test_balancers.py "deploy;e2e" 300 ARGS $<TARGET_FILE:bidistreamd>)
endif()
