# tests/services: the built-in services are applications of the public API
# (services/): their #include lines name public headers, generated messages
# and their own only (public_only.sh), and the check catches what it must.
# Their behaviour is tested through the server: tests/io/test_server.c
# (Health.Watch, Process work) and tests/e2e (grpcio, the interop service).
add_test(NAME services.public_only COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/services/public_only.sh)
add_test(NAME services.public_only_catches
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/services/public_only.sh --catches)
set_tests_properties(services.public_only services.public_only_catches PROPERTIES LABELS "services" TIMEOUT 60)
