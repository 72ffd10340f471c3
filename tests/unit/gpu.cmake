# gpu.cmake - host-side tests of the GPU backends' numeric building blocks
# (backends/gpu_common/gpu_blocks.h), built and run on every machine, GPU
# or not.  The kernels themselves run only on a GPU: tests/gpu/run.sh.
add_executable(test_gpu_blocks ${CMAKE_CURRENT_LIST_DIR}/test_gpu_blocks.c)
target_include_directories(test_gpu_blocks PRIVATE ${CMAKE_SOURCE_DIR}/backends/gpu_common)
target_link_libraries(test_gpu_blocks PRIVATE velo_cpu_kernels m)
target_compile_options(test_gpu_blocks PRIVATE -ffp-contract=off)
add_test(NAME gpu_blocks
         COMMAND sh -c "/usr/bin/python3 '${CMAKE_CURRENT_LIST_DIR}/gpu_blocks_fixture.py' '${VELO_SHARED_DIR}' gpu_blocks.fixture && '$<TARGET_FILE:test_gpu_blocks>' gpu_blocks.fixture")
set_tests_properties(gpu_blocks PROPERTIES TIMEOUT 120 LABELS gpu)
