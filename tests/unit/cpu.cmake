# Unit tests of the CPU backend (backends/cpu).  Each test_cpu_<name>.c is
# one executable that prints "cpu: N checks passed" and exits non-zero on
# failure.  Included from tests/unit/CMakeLists.txt.
set(VELO_CPU_TESTS fp16 quant kquant ops plugin)
foreach(name ${VELO_CPU_TESTS})
  add_executable(test_cpu_${name} ${CMAKE_CURRENT_LIST_DIR}/test_cpu_${name}.c)
  target_link_libraries(test_cpu_${name} PRIVATE velo_cpu_kernels m)
  add_test(NAME cpu_${name} COMMAND test_cpu_${name})
  set_tests_properties(cpu_${name} PROPERTIES TIMEOUT 300 LABELS cpu)
endforeach()

# The plugin test loads the built module with dlopen and lists its dynamic
# symbols with nm.
add_dependencies(test_cpu_plugin velo_backend_cpu)
target_link_libraries(test_cpu_plugin PRIVATE ${CMAKE_DL_LIBS})
target_compile_definitions(test_cpu_plugin PRIVATE
  VELO_CPU_PLUGIN_PATH="$<TARGET_FILE:velo_backend_cpu>"
  VELO_NM="${CMAKE_NM}")

# test_cpu_perf is a benchmark, not a test (speed is never asserted in the
# suite): built with the tests, run by hand as build/bin/test_cpu_perf.
add_executable(test_cpu_perf ${CMAKE_CURRENT_LIST_DIR}/test_cpu_perf.c)
target_link_libraries(test_cpu_perf PRIVATE velo_cpu_kernels m)
