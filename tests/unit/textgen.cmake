# textgen.cmake - unit tests of the text-generation plugin's text pieces
# (plugins/textgen/text.cmake): tokenizer, sampler, text stream helpers.
# Each test takes the shared data folder as its first argument.
if(NOT TARGET velo_textgen_text)
  include(${CMAKE_SOURCE_DIR}/plugins/textgen/text.cmake)
endif()

add_executable(test_tokenizer ${CMAKE_CURRENT_LIST_DIR}/test_tokenizer.c)
# velo_core provides the host's GGUF reader (velo_gguf_reader).
target_link_libraries(test_tokenizer PRIVATE velo_textgen_text velo_core)
add_test(NAME textgen_tokenizer COMMAND test_tokenizer ${VELO_SHARED_DIR})

add_executable(test_sampling ${CMAKE_CURRENT_LIST_DIR}/test_sampling.c)
target_link_libraries(test_sampling PRIVATE velo_textgen_text)
add_test(NAME textgen_sampling COMMAND test_sampling ${VELO_SHARED_DIR})

add_executable(test_textstream ${CMAKE_CURRENT_LIST_DIR}/test_textstream.c)
target_link_libraries(test_textstream PRIVATE velo_textgen_text)
add_test(NAME textgen_textstream COMMAND test_textstream ${VELO_SHARED_DIR})

set_tests_properties(textgen_tokenizer textgen_sampling textgen_textstream
                     PROPERTIES TIMEOUT 120 LABELS textgen)

# The paged KV cache bookkeeping (plugins/textgen/kvpool.c).
add_executable(test_kvpool ${CMAKE_CURRENT_LIST_DIR}/test_kvpool.c
               ${CMAKE_SOURCE_DIR}/plugins/textgen/kvpool.c)
target_include_directories(test_kvpool PRIVATE ${CMAKE_SOURCE_DIR}/plugins/textgen
                           ${CMAKE_SOURCE_DIR}/sdk/include)
add_test(NAME textgen_kvpool COMMAND test_kvpool)
set_tests_properties(textgen_kvpool PROPERTIES TIMEOUT 60 LABELS textgen)
