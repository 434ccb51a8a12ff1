# Differential tests against real PyTorch Lightning (included by tests/CMakeLists.txt).
#
# modelcheckpoint_parity: runs ddp-train on ~20 ModelCheckpoint/Trainer configurations (one
# process each, a tiny MLP) and replays each run's metric sequence in real Lightning's
# ModelCheckpoint; the checkpoints kept, best, k-th best and last must be the same, or the case
# must be marked with an entry of docs/lightning-compat.md. Lightning lives in a venv created
# by tools/lightning_venv.sh at ${DDP_LIGHTNING_VENV}; the script is started with the system
# Python and re-runs itself with the venv's, so that a missing venv is a skip (exit 77), or a
# failure with CI=true in the environment.
set(DDP_LIGHTNING_VENV ${CMAKE_BINARY_DIR}/lightning-venv CACHE PATH
    "venv with PyTorch Lightning (over the system torch) for the Lightning differential tests")
set(DDP_LIGHTNING_LAUNCH_PYTHON /usr/bin/python3 CACHE FILEPATH
    "Python that starts the Lightning tests (they re-run themselves with the venv's Python)")

add_test(NAME lightning_modelcheckpoint_parity
         COMMAND ${DDP_LIGHTNING_LAUNCH_PYTHON}
                 ${CMAKE_CURRENT_LIST_DIR}/test_modelcheckpoint_parity.py
                 --ddp-train $<TARGET_FILE:ddp-train>
                 --python ${DDP_LIGHTNING_VENV}/bin/python
                 --config ${PROJECT_SOURCE_DIR}/configs/default.yaml)
set_tests_properties(lightning_modelcheckpoint_parity PROPERTIES
                     TIMEOUT 300
                     SKIP_RETURN_CODE 77
                     ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMP_NUM_THREADS=1")
