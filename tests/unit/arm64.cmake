# The CPU backend's portable kernels on arm64 (aarch64), run under qemu user
# emulation: the x86-64 SIMD variants must compile away cleanly elsewhere
# (issue 5), and the portable C path they fall back on must pass the same
# unit tests there (a different compiler target, libm and memory model).
# The CPU kernel sources are cross-compiled once into objects with
# aarch64-linux-gnu-gcc (Debian's gcc-aarch64-linux-gnu) and linked
# statically into each test, which qemu-aarch64 (Debian's qemu-user) runs.
# scripts/install-deps.sh installs both; without them the tests are
# registered to fail with a message saying what to install.
find_program(VELO_AARCH64_CC aarch64-linux-gnu-gcc)
find_program(VELO_QEMU_AARCH64 qemu-aarch64)
set(VELO_ARM64_TESTS fp16 quant kquant ops)

if(NOT VELO_AARCH64_CC OR NOT VELO_QEMU_AARCH64)
  foreach(name ${VELO_ARM64_TESTS})
    add_test(NAME cpu_${name}_arm64 COMMAND sh -c
      "echo 'needs aarch64-linux-gnu-gcc and qemu-aarch64: run scripts/install-deps.sh (packages gcc-aarch64-linux-gnu, qemu-user), then re-run cmake'; exit 1")
    set_tests_properties(cpu_${name}_arm64 PROPERTIES LABELS "cpu;arm64")
  endforeach()
  return()
endif()

# The sources of velo_cpu_kernels (backends/cpu/CMakeLists.txt) and the
# shared op validator; plugin.c (the module entry) is not part of it.
file(GLOB VELO_ARM64_CPU_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/backends/cpu/*.c)
list(FILTER VELO_ARM64_CPU_SOURCES EXCLUDE REGEX "/plugin\\.c$")
list(APPEND VELO_ARM64_CPU_SOURCES ${CMAKE_SOURCE_DIR}/backends/common/op_check.c)

# The flags the kernels are specified under (no FMA contraction, see
# backends/cpu/CMakeLists.txt), warnings as errors so that an unguarded
# x86 intrinsic or a missing #else fails here.
set(VELO_ARM64_FLAGS -std=c11 -D_GNU_SOURCE -O2 -ffp-contract=off -Wall -Wextra -Wshadow
    -Wno-unused-parameter -Werror -pthread
    -I${CMAKE_SOURCE_DIR}/sdk/include -I${CMAKE_SOURCE_DIR}/backends/cpu
    -I${CMAKE_CURRENT_LIST_DIR})
set(VELO_ARM64_DIR ${CMAKE_BINARY_DIR}/arm64)
set(VELO_ARM64_OBJECTS)
foreach(src ${VELO_ARM64_CPU_SOURCES})
  get_filename_component(stem ${src} NAME_WE)
  set(obj ${VELO_ARM64_DIR}/${stem}.o)
  add_custom_command(OUTPUT ${obj}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${VELO_ARM64_DIR}
    COMMAND ${VELO_AARCH64_CC} ${VELO_ARM64_FLAGS} -c ${src} -o ${obj}
    DEPENDS ${src} IMPLICIT_DEPENDS C ${src}
    COMMENT "arm64: compiling ${stem}.c" VERBATIM)
  list(APPEND VELO_ARM64_OBJECTS ${obj})
endforeach()

set(VELO_ARM64_BINARIES)
foreach(name ${VELO_ARM64_TESTS})
  set(src ${CMAKE_CURRENT_LIST_DIR}/test_cpu_${name}.c)
  set(bin ${VELO_ARM64_DIR}/test_cpu_${name})
  add_custom_command(OUTPUT ${bin}
    COMMAND ${VELO_AARCH64_CC} ${VELO_ARM64_FLAGS} -static ${src} ${VELO_ARM64_OBJECTS} -lm
            -o ${bin}
    DEPENDS ${src} ${VELO_ARM64_OBJECTS} IMPLICIT_DEPENDS C ${src}
    COMMENT "arm64: linking test_cpu_${name}" VERBATIM)
  list(APPEND VELO_ARM64_BINARIES ${bin})
  add_test(NAME cpu_${name}_arm64 COMMAND ${VELO_QEMU_AARCH64} ${bin})
  set_tests_properties(cpu_${name}_arm64 PROPERTIES TIMEOUT 600 LABELS "cpu;arm64")
endforeach()
add_custom_target(velo_arm64_tests ALL DEPENDS ${VELO_ARM64_BINARIES})
