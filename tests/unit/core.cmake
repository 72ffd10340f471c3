# core.cmake - tests of the llama forward pass against llama.cpp's
# references, through the plugin's C API.
add_executable(test_model_reference ${CMAKE_CURRENT_LIST_DIR}/test_model_reference.c)
target_link_libraries(test_model_reference PRIVATE velo_textgen_core velo_cpu_kernels velo_core)
add_test(NAME model_reference
         COMMAND sh -c "/usr/bin/python3 '${CMAKE_CURRENT_LIST_DIR}/ref_fixture.py' '${VELO_SHARED_DIR}/reference/stories260K.json' stories260K.fixture && '$<TARGET_FILE:test_model_reference>' '${VELO_SHARED_DIR}' stories260K.fixture")
set_tests_properties(model_reference PROPERTIES TIMEOUT 300)

# The KV cache size parser (core/size.c), behind --kv-cache-size and the
# repository's kv_cache_size.
add_executable(test_size ${CMAKE_CURRENT_LIST_DIR}/test_size.c)
target_link_libraries(test_size PRIVATE velo_core)
add_test(NAME size COMMAND test_size)
set_tests_properties(size PROPERTIES TIMEOUT 60)
