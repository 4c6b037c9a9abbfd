# `dspeed launch` end to end under OpenMPI (tests/cli/launch.sh): ranks start, a failing rank ends the job within
# seconds, signals reach the ranks, bad input gives one error line. Exit 77 (no mpirun on this machine) is a skip.
add_test(NAME cli.launch COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli/launch.sh $<TARGET_FILE:dspeed>)
set_tests_properties(cli.launch PROPERTIES LABELS "cli;mpi" TIMEOUT 180 SKIP_RETURN_CODE 77)
