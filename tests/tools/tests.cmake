# tests/tools: bidistreamd's flags and config file (tools/bidistreamd_config.c)
# and the bds client against an independent gRPC server (python3-grpcio).
# Included from tests/CMakeLists.txt:
#   include(${CMAKE_CURRENT_SOURCE_DIR}/tools/tests.cmake OPTIONAL)
# Tests: tools.config (label "tools").
bds_add_test_dir(tools LIBS bds_tool_config)
