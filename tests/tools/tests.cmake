# tests/tools: bidistreamd's flags and config file (tools/bidistreamd_config.c)
# and the bds client (tools/bds.c) against an independent gRPC server,
# tests/e2e/ref_server.py on Debian's python3-grpcio. Included from
# tests/CMakeLists.txt:
#   include(${CMAKE_CURRENT_SOURCE_DIR}/tools/tests.cmake OPTIONAL)
# Tests: tools.config, tools.client, tools.layering, tools.layering_catches,
# tools.exports, tools.exports_catches (label "tools").
bds_add_test_dir(tools LIBS bds_tool_config)
if(TARGET test_tools_client)
  target_compile_definitions(test_tools_client PRIVATE
    BDS_TEST_BDS="$<TARGET_FILE:bds>"
    BDS_TEST_PYTHON="/usr/bin/python3"
    BDS_TEST_REF_SERVER="${CMAKE_CURRENT_SOURCE_DIR}/e2e/ref_server.py")
  add_dependencies(test_tools_client bds)
endif()

# The layering (tools/layering.sh, also run by tools/test.sh): the tree passes,
# and each kind of include pointing up or sideways, planted in a copy, fails it.
add_test(NAME tools.layering COMMAND bash ${PROJECT_SOURCE_DIR}/tools/layering.sh ${PROJECT_SOURCE_DIR})
add_test(NAME tools.layering_catches
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/tools/layering_catches.sh ${PROJECT_SOURCE_DIR})
# The export map: libbidistream exports its public API and nothing else, and
# the check fails on a library that leaks a bds__ name and an undeclared one.
add_test(NAME tools.exports COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/tools/exports.sh
  $<TARGET_FILE:bidistream> ${PROJECT_SOURCE_DIR}/core/include/bidistream)
add_library(bds_test_exports_leak SHARED ${CMAKE_CURRENT_SOURCE_DIR}/tools/exports_leak.c)
add_test(NAME tools.exports_catches COMMAND bash -c
  "out=$(bash \"$0\" \"$1\" \"$2\"); rc=$?; echo \"$out\"; [ $rc = 1 ] && grep -q '^bds__leaked_internal$' <<<\"$out\" && grep -q '^bds_undeclared_public$' <<<\"$out\""
  ${CMAKE_CURRENT_SOURCE_DIR}/tools/exports.sh $<TARGET_FILE:bds_test_exports_leak>
  ${PROJECT_SOURCE_DIR}/core/include/bidistream)
set_tests_properties(tools.layering tools.layering_catches tools.exports tools.exports_catches
  PROPERTIES LABELS tools TIMEOUT 120)
