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

# K-quant models (synth-kq-*.gguf) against llama.cpp's ids and logits, and
# batch invariance on Q4_K/Q5_K/Q6_K weights.
add_executable(test_kquant_reference ${CMAKE_CURRENT_LIST_DIR}/test_kquant_reference.c)
target_link_libraries(test_kquant_reference PRIVATE velo_textgen_core velo_cpu_kernels velo_core)
add_test(NAME kquant_reference
         COMMAND sh -c "/usr/bin/python3 '${CMAKE_CURRENT_LIST_DIR}/kq_fixture.py' '${VELO_SHARED_DIR}/reference/synth-kquants.json' synth-kquants.fixture && '$<TARGET_FILE:test_kquant_reference>' '${VELO_SHARED_DIR}' synth-kquants.fixture")
set_tests_properties(kquant_reference PROPERTIES TIMEOUT 300)
