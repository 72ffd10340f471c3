# GGUF reader unit tests (core/gguf.c).  The reader is compiled into the test
# directly, so the test needs nothing else of libvelo and runs while the rest
# of the core is being built.  The shared data folder is passed as argv[1].
add_executable(test_gguf
  ${CMAKE_CURRENT_LIST_DIR}/test_gguf.c
  ${CMAKE_CURRENT_LIST_DIR}/../../core/gguf.c)
target_include_directories(test_gguf PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/../../core
  ${CMAKE_CURRENT_LIST_DIR}/../../sdk/include)
target_compile_definitions(test_gguf PRIVATE VELO_SHARED_DIR="${VELO_SHARED_DIR}")
add_test(NAME gguf COMMAND test_gguf ${VELO_SHARED_DIR})
set_tests_properties(gguf PROPERTIES TIMEOUT 300)
