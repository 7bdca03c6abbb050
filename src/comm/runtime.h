// MpiRuntime: RAII around MPI_Init_thread / MPI_Finalize for main() and the MPI tests.
// Works under mpirun, under Slurm's srun and launched alone (a singleton world of 1).
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"

namespace trident::comm {

class MpiRuntime {
 public:
  // Initialises MPI with MPI_THREAD_MULTIPLE (the communicator's group threads need it);
  // throws trident::Error if the MPI library cannot provide it. If MPI is already running,
  // this object neither initialises nor finalises it.
  MpiRuntime(int* argc = nullptr, char*** argv = nullptr);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  int world_rank() const { return rank_; }
  int world_size() const { return size_; }
  // A Communicator over (a duplicate of) MPI_COMM_WORLD, the launcher's order of ranks.
  std::unique_ptr<Communicator> world(std::string name = "launcher") const;

 private:
  bool owns_ = false;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace trident::comm
