# Fuzzing of the parsers of hostile input (fuzz/README.md): the config loader, the checkpoint
# reader and the sidecar / latest.json readers, under AddressSanitizer + UBSan, 45 s per target
# on the saved corpus, then every saved regression input replayed once.
# fuzz/run.sh builds with clang++ and libFuzzer by itself (the main build uses g++); without
# them it exits 77 and the test is reported as skipped, not failed.
add_test(NAME fuzz_smoke COMMAND bash ${PROJECT_SOURCE_DIR}/fuzz/run.sh 45)
set_tests_properties(fuzz_smoke PROPERTIES
  TIMEOUT 900
  LABELS fuzz
  SKIP_RETURN_CODE 77
  ENVIRONMENT "FUZZ_BUILD=${CMAKE_BINARY_DIR}/fuzz")
