# gpu.cmake - host-side tests of the GPU backends' numeric building blocks
# (backends/gpu_common/gpu_blocks.h), built and run on every machine, GPU
# or not.  The kernels themselves run on a GPU in tests/gpu/run.sh, and on
# the CPU in gpu_emu below.
add_executable(test_gpu_blocks ${CMAKE_CURRENT_LIST_DIR}/test_gpu_blocks.c)
target_include_directories(test_gpu_blocks PRIVATE ${CMAKE_SOURCE_DIR}/backends/gpu_common)
target_link_libraries(test_gpu_blocks PRIVATE velo_cpu_kernels m)
target_compile_options(test_gpu_blocks PRIVATE -ffp-contract=off)
add_test(NAME gpu_blocks
         COMMAND sh -c "/usr/bin/python3 '${CMAKE_CURRENT_LIST_DIR}/gpu_blocks_fixture.py' '${VELO_SHARED_DIR}' gpu_blocks.fixture && '$<TARGET_FILE:test_gpu_blocks>' gpu_blocks.fixture")
set_tests_properties(gpu_blocks PROPERTIES TIMEOUT 120 LABELS gpu)

# Every kernel of backends/gpu_common/gpu_kernels.cu executed on the CPU
# through tests/gpu/emu/emu.h (threads for a block's lanes, 32- and 64-wide
# warps), under AddressSanitizer and UBSan, against the CPU backend: catches
# wrong results, out-of-bounds tails and CDNA wavefront assumptions without a
# GPU.  About 3.5 minutes on two cores.
add_test(NAME gpu_emu COMMAND ${CMAKE_SOURCE_DIR}/tests/gpu/emu/run_emu.sh ${CMAKE_BINARY_DIR})
set_tests_properties(gpu_emu PROPERTIES TIMEOUT 1200 LABELS gpu)
