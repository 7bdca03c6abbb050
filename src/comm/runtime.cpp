// MPI start-up and shut-down.
#include "comm/runtime.h"

#include <mpi.h>

#include "comm/mpi_backend.h"
#include "core/check.h"

namespace trident::comm {

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  int provided = MPI_THREAD_SINGLE;
  if (!initialized) {
    MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
    owns_ = true;
  } else {
    MPI_Query_thread(&provided);
  }
  TRI_CHECK(provided >= MPI_THREAD_MULTIPLE,
            "the MPI library provides thread level {} but Trident needs MPI_THREAD_MULTIPLE ({}); "
            "use an MPI built with thread support (OpenMPI: check `ompi_info | grep THREAD`)",
            provided, MPI_THREAD_MULTIPLE);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

std::unique_ptr<Communicator> MpiRuntime::world(std::string name) const {
  return make_mpi_communicator(MPI_COMM_WORLD, std::move(name));
}

MpiRuntime::~MpiRuntime() {
  if (!owns_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace trident::comm
