# tests/model: Promela models checked with spin (label `model`). spin is a
# declared dependency: when it is missing these tests fail, they do not skip.
#   model.mpsc          core/mpsc.c's ring, want_space and sleep/wake latch,
#                       2 producers, capacity 2, 2 + 1 items (under a second)
#   model.mpsc_2x2      the same with 2 + 2 items (~14M states, ~20 s)
#   model.mpsc_bug_*    broken variants that spin must catch: the model has teeth
set(BDS_MODEL_DIR ${CMAKE_CURRENT_SOURCE_DIR}/model)
set(BDS_MODEL_RUN ${BDS_MODEL_DIR}/run_spin.sh ${BDS_MODEL_DIR}/mpsc.pml)
set(BDS_MODEL_WORK ${CMAKE_CURRENT_BINARY_DIR}/model)
add_test(NAME model.mpsc COMMAND ${BDS_MODEL_RUN} ${BDS_MODEL_WORK}/mpsc expect-ok)
add_test(NAME model.mpsc_2x2 COMMAND ${BDS_MODEL_RUN} ${BDS_MODEL_WORK}/mpsc_2x2 expect-ok -DITEMS1=2)
set(BDS_MODEL_TESTS model.mpsc model.mpsc_2x2)
foreach(bug RING_BEFORE_PUBLISH RESET_IN_WOKEN NO_WANT_RECHECK CHECK_BEFORE_SLEEPING
            PUBLISH_HEAD_EARLY SKIP_UNPUBLISHED)
  string(TOLOWER ${bug} name)
  add_test(NAME model.mpsc_bug_${name}
    COMMAND ${BDS_MODEL_RUN} ${BDS_MODEL_WORK}/mpsc_bug_${name} expect-error -DBUG_${bug})
  list(APPEND BDS_MODEL_TESTS model.mpsc_bug_${name})
endforeach()
set_tests_properties(${BDS_MODEL_TESTS} PROPERTIES LABELS model TIMEOUT 300)
