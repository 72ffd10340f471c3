# text.cmake - the text pieces of the text-generation plugin as one static
# library: the SentencePiece tokenizer read from GGUF metadata, the sampler,
# and the streaming text helpers (UTF-8 assembly, stop strings).  Included by
# plugins/textgen/CMakeLists.txt; the unit tests (tests/unit/textgen.cmake)
# link the same library.
add_library(velo_textgen_text STATIC
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer.c
  ${CMAKE_CURRENT_LIST_DIR}/sampling.c
  ${CMAKE_CURRENT_LIST_DIR}/textstream.c)
target_include_directories(velo_textgen_text PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(velo_textgen_text PUBLIC velo_sdk m)
