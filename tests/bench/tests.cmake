# tests/bench: the load generator's units (bench/loadgen): histogram, open-loop
# schedule, Frame codec. Include from tests/CMakeLists.txt:
#   include(${CMAKE_CURRENT_SOURCE_DIR}/bench/tests.cmake OPTIONAL)
# It needs the bds_bench_core target, which exists when bench/CMakeLists.txt has
# add_subdirectory(loadgen) and BDS_BUILD_BENCH is ON; otherwise nothing is added.
# Tests: bench.hist, bench.openloop, bench.bframe (label "bench").
if(TARGET bds_bench_core)
  bds_add_test_dir(bench LIBS bds_bench_core)
endif()
