# repository.cmake - tests of the identity task plugin (through its task
# table, the real .so dlopen'ed) and of the model repository (core/repository.c
# over a real registry and the build's plugins).
add_executable(test_identity ${CMAKE_CURRENT_LIST_DIR}/test_identity.c)
target_link_libraries(test_identity PRIVATE velo_sdk Threads::Threads ${CMAKE_DL_LIBS})
add_dependencies(test_identity velo_task_identity)
add_test(NAME identity COMMAND test_identity $<TARGET_FILE:velo_task_identity>)
set_tests_properties(identity PROPERTIES TIMEOUT 120)

add_executable(test_repository ${CMAKE_CURRENT_LIST_DIR}/test_repository.c)
target_link_libraries(test_repository PRIVATE velo_core Threads::Threads)
add_dependencies(test_repository velo_task_identity velo_task_textgen velo_backend_cpu)
add_test(NAME repository
         COMMAND test_repository ${VELO_PLUGIN_OUTPUT_DIR} ${VELO_SHARED_DIR})
set_tests_properties(repository PROPERTIES TIMEOUT 300)
