# Tests that need mpirun: the MPI backend's test binary at 2 and 4 ranks, and a job with an injected failure
# that must end non-zero well inside its timeout (a hang would time out, which WILL_FAIL does not excuse).
# Included from the tests section of CMakeLists.txt. As root, OpenMPI needs the allow-run-as-root pair; more
# ranks than cores need oversubscription (reference/machine-notes.md, MPI).
if(MPI_CXX_FOUND AND TARGET comm_mpi_test)
  if(NOT MPIEXEC_EXECUTABLE)
    find_program(MPIEXEC_EXECUTABLE NAMES mpirun mpiexec)
  endif()
  if(MPIEXEC_EXECUTABLE)
    set(DS_MPI_TEST_ENV OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
        OMPI_MCA_rmaps_base_oversubscribe=1)
    foreach(np 2 4)
      add_test(NAME mpi.comm.np${np}
               COMMAND ${MPIEXEC_EXECUTABLE} --allow-run-as-root --oversubscribe -np ${np}
                       $<TARGET_FILE:comm_mpi_test>)
      set_tests_properties(mpi.comm.np${np} PROPERTIES LABELS mpi TIMEOUT 240 ENVIRONMENT "${DS_MPI_TEST_ENV}")
    endforeach()
    add_test(NAME mpi.comm.abort
             COMMAND ${MPIEXEC_EXECUTABLE} --allow-run-as-root --oversubscribe -np 2 $<TARGET_FILE:comm_mpi_test>
                     --gtest_filter=CommMpi.InjectedFailureAbortsTheJob)
    set_tests_properties(mpi.comm.abort PROPERTIES LABELS mpi TIMEOUT 30 WILL_FAIL TRUE
                         ENVIRONMENT "${DS_MPI_TEST_ENV};DS_TEST_INJECT_FAILURE_RANK=1")
  else()
    message(STATUS "mpirun not found: the mpi.comm.* tests are not registered")
  endif()
endif()
