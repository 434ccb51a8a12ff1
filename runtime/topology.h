// Where the ranks run: which host each rank is on, its rank within the host, and the network
// the job talks over — what rank 0 logs at start so that a multi-node job can be checked at a
// glance, and what decides each rank's GPU.
//
// Hosts are told apart by hostname (gethostname), so the answer does not depend on the
// launcher (mpirun, srun) exporting a local rank. Local rank = the rank's index among the
// ranks of its host, in rank order.
//
// Collective: discover_topology is called by every rank of `comm` at the same point.
// Thread-safety: plain values.
#pragma once

#include <string>
#include <vector>

#include "collectives/communicator.h"

namespace ddp {

struct RankPlace {
  std::string host;
  int local_rank = 0;
  int local_size = 1;  // ranks on this host
};

struct Topology {
  std::vector<RankPlace> ranks;    // by global rank
  std::vector<std::string> hosts;  // in order of their first rank
  RankPlace mine;

  // "4 ranks on 2 hosts: node-a (ranks 0-1), node-b (ranks 2-3)"; more than 8 hosts are
  // summarised by their rank counts.
  std::string describe() const;
  // The ranks on the same host as `rank`, ascending.
  std::vector<int> ranks_with_host_of(int rank) const;
};

Topology discover_topology(Communicator& comm);

// This process's view of the network the collectives use, one line: Open MPI's transports and
// TCP interface selection (from the OMPI_MCA_* settings mpirun passes on), NCCL's interface
// and InfiniBand selection (NCCL_SOCKET_IFNAME, NCCL_IB_HCA), and this host's IPv4
// interfaces other than loopback.
std::string network_summary(bool nccl);

}  // namespace ddp
