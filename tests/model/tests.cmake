# tests/model: Promela models checked with spin (label `model`). Each broken
# variant must be caught, which shows the model can fail.
set(BDS_MODEL_DIR ${CMAKE_CURRENT_SOURCE_DIR}/model)
add_test(NAME model.mpsc
  COMMAND ${BDS_MODEL_DIR}/run_spin.sh ${BDS_MODEL_DIR}/mpsc.pml ${CMAKE_CURRENT_BINARY_DIR}/spin-mpsc expect-ok)
add_test(NAME model.mpsc_bug_reset_bell_on_wake
  COMMAND ${BDS_MODEL_DIR}/run_spin.sh ${BDS_MODEL_DIR}/mpsc.pml ${CMAKE_CURRENT_BINARY_DIR}/spin-mpsc-b1
          expect-error -DBUG_RESET_IN_WOKEN)
add_test(NAME model.mpsc_bug_ring_before_publish
  COMMAND ${BDS_MODEL_DIR}/run_spin.sh ${BDS_MODEL_DIR}/mpsc.pml ${CMAKE_CURRENT_BINARY_DIR}/spin-mpsc-b2
          expect-error -DBUG_RING_BEFORE_PUBLISH)
set_tests_properties(model.mpsc model.mpsc_bug_reset_bell_on_wake model.mpsc_bug_ring_before_publish
  PROPERTIES LABELS model TIMEOUT 300)
