# oip.cmake - unit tests of the Open Inference Protocol front end
# (core/server/oip_*.c): the core's validation and conversion of
# ModelInferRequest messages, without a server.
add_executable(test_oip_validate ${CMAKE_CURRENT_LIST_DIR}/test_oip_validate.c)
target_link_libraries(test_oip_validate PRIVATE velo_server velo_proto velo_core)
add_test(NAME oip_validate COMMAND test_oip_validate)
set_tests_properties(oip_validate PROPERTIES TIMEOUT 60)
