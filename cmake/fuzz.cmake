# Fuzz targets: tests/fuzz/<name>_fuzz.cpp, each driving one parser of untrusted bytes (see
# tests/fuzz/fuzz_target.h). With DS_FUZZ=ON (Clang): fuzz_<name>, libFuzzer executables built from the parser's own
# sources and ds_core only, so the sanitized build stays small (`cmake --build B --target fuzz`). In the test
# build: fuzz_<name>_replay, and a ctest per target replaying the fixed inputs of tests/fuzz/corpus/<name>/.
set(DS_FUZZ_TARGETS completion config safetensors manifest chat_template)
set(DS_FUZZ_completion_SOURCES src/ds/serve/openai_protocol.cpp src/ds/data/bpe_tokenizer.cpp)
set(DS_FUZZ_chat_template_SOURCES src/ds/serve/chat_template.cpp src/ds/serve/openai_protocol.cpp
                                  src/ds/data/bpe_tokenizer.cpp)
file(GLOB DS_FUZZ_config_SOURCES RELATIVE ${CMAKE_SOURCE_DIR} ${CMAKE_SOURCE_DIR}/src/ds/config/*.cpp)
set(DS_FUZZ_safetensors_SOURCES src/ds/ckpt/safetensors.cpp)
set(DS_FUZZ_manifest_SOURCES src/ds/ckpt/checkpoint_format.cpp src/ds/ckpt/safetensors.cpp)

if(DS_FUZZ)
  add_custom_target(fuzz)
  foreach(t ${DS_FUZZ_TARGETS})
    list(TRANSFORM DS_FUZZ_${t}_SOURCES PREPEND ${CMAKE_SOURCE_DIR}/)
    add_executable(fuzz_${t} ${CMAKE_SOURCE_DIR}/tests/fuzz/${t}_fuzz.cpp ${DS_FUZZ_${t}_SOURCES})
    target_link_libraries(fuzz_${t} PRIVATE ds_core ZLIB::ZLIB PkgConfig::PCRE2)
    target_include_directories(fuzz_${t} PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_SOURCE_DIR}/tests)
    target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
    set_target_properties(fuzz_${t} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)
    add_dependencies(fuzz fuzz_${t})
  endforeach()
elseif(DS_BUILD_TESTS)
  foreach(t ${DS_FUZZ_TARGETS})
    add_executable(fuzz_${t}_replay ${CMAKE_SOURCE_DIR}/tests/fuzz/${t}_fuzz.cpp
                                    ${CMAKE_SOURCE_DIR}/tests/fuzz/replay_main.cpp)
    target_link_libraries(fuzz_${t}_replay PRIVATE ds)
    target_include_directories(fuzz_${t}_replay PRIVATE ${CMAKE_SOURCE_DIR}/tests)
    ds_warnings(fuzz_${t}_replay)
    set_target_properties(fuzz_${t}_replay PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
    add_test(NAME fuzz.${t}.replay COMMAND fuzz_${t}_replay ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus/${t})
    set_tests_properties(fuzz.${t}.replay PROPERTIES LABELS unit TIMEOUT 300)
  endforeach()
endif()
