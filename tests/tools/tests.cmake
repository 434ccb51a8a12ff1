# Python interop tests for tools/ (included by tests/CMakeLists.txt).
#
# ckpt_to_lightning_interop: trains tiny runs with ddp-train under mpirun, converts their
# checkpoints with tools/ckpt_to_lightning.py and checks the .ckpt with torch.load. Needs a
# Python with torch, h5py and numpy (Debian: python3-torch, python3-h5py); the script exits
# 77 (ctest: skipped) when they are missing.
set(DDP_TOOLS_PYTHON /usr/bin/python3 CACHE FILEPATH
    "Python with torch, h5py and numpy that runs the tools/ interop tests")

add_test(NAME ckpt_to_lightning_interop
         COMMAND ${DDP_TOOLS_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_ckpt_to_lightning.py
                 --ddp-train $<TARGET_FILE:ddp-train> --mpirun ${MPIEXEC_EXECUTABLE})
set_tests_properties(ckpt_to_lightning_interop PROPERTIES
                     TIMEOUT 300
                     PROCESSORS 2
                     SKIP_RETURN_CODE 77
                     ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMP_NUM_THREADS=1")

# lightning_interop: export to and import from REAL PyTorch Lightning (2.2.5), run by the venv
# that tools/lightning_venv.sh makes at <build>/lightning-venv. Without the venv the system
# Python runs the script, which exits 77 (skipped) -- or fails when CI=true.
set(DDP_LIGHTNING_PYTHON ${CMAKE_BINARY_DIR}/lightning-venv/bin/python CACHE FILEPATH
    "Python with pytorch_lightning for the Lightning interop test (tools/lightning_venv.sh)")
add_test(NAME lightning_interop
         COMMAND /bin/sh -c "py=\"$1\"; shift; [ -x \"$py\" ] || py=\"$1\"; shift; exec \"$py\" \"$@\""
                 lightning_interop ${DDP_LIGHTNING_PYTHON} ${DDP_TOOLS_PYTHON}
                 ${CMAKE_CURRENT_LIST_DIR}/test_lightning_interop.py
                 --ddp-train $<TARGET_FILE:ddp-train>
                 --ddp-checkpoint $<TARGET_FILE:ddp-checkpoint>
                 --mpirun ${MPIEXEC_EXECUTABLE})
set_tests_properties(lightning_interop PROPERTIES
                     TIMEOUT 300
                     PROCESSORS 2
                     SKIP_RETURN_CODE 77
                     ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMP_NUM_THREADS=1")
