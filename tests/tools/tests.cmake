# tests/tools: bidistreamd's flags and config file (tools/bidistreamd_config.c)
# and the bds client (tools/bds.c) against an independent gRPC server,
# tests/e2e/ref_server.py on Debian's python3-grpcio. Included from
# tests/CMakeLists.txt:
#   include(${CMAKE_CURRENT_SOURCE_DIR}/tools/tests.cmake OPTIONAL)
# Tests: tools.config, tools.client (label "tools").
bds_add_test_dir(tools LIBS bds_tool_config)
if(TARGET test_tools_client)
  target_compile_definitions(test_tools_client PRIVATE
    BDS_TEST_BDS="$<TARGET_FILE:bds>"
    BDS_TEST_PYTHON="/usr/bin/python3"
    BDS_TEST_REF_SERVER="${CMAKE_CURRENT_SOURCE_DIR}/e2e/ref_server.py")
  add_dependencies(test_tools_client bds)
endif()
