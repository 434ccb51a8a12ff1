#include "runtime/topology.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>

#include <fmt/format.h>

namespace ddp {

namespace {

constexpr size_t kHostBytes = 256;  // HOST_NAME_MAX + 1, rounded up

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

std::string rank_ranges(const std::vector<int>& ranks) {
  std::string out;
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    if (!out.empty()) out += ",";
    out += j == i ? fmt::format("{}", ranks[i]) : fmt::format("{}-{}", ranks[i], ranks[j]);
    i = j + 1;
  }
  return out;
}

}  // namespace

Topology discover_topology(Communicator& comm) {
  char name[kHostBytes] = {0};
  if (gethostname(name, sizeof(name) - 1) != 0) std::snprintf(name, sizeof(name), "unknown");
  std::vector<char> all(kHostBytes * static_cast<size_t>(comm.size()));
  comm.all_gather(name, all.data(), kHostBytes, DType::kUInt8);
  Topology t;
  std::map<std::string, int> seen;  // host -> ranks so far
  for (int r = 0; r < comm.size(); ++r) {
    const char* h = all.data() + kHostBytes * static_cast<size_t>(r);
    RankPlace p;
    p.host.assign(h, strnlen(h, kHostBytes));
    auto [it, fresh] = seen.emplace(p.host, 0);
    if (fresh) t.hosts.push_back(p.host);
    p.local_rank = it->second++;
    t.ranks.push_back(p);
  }
  for (auto& p : t.ranks) p.local_size = seen[p.host];
  t.mine = t.ranks[static_cast<size_t>(comm.rank())];
  return t;
}

std::vector<int> Topology::ranks_with_host_of(int rank) const {
  std::vector<int> out;
  const std::string& host = ranks.at(static_cast<size_t>(rank)).host;
  for (size_t r = 0; r < ranks.size(); ++r) {
    if (ranks[r].host == host) out.push_back(static_cast<int>(r));
  }
  return out;
}

std::string Topology::describe() const {
  std::map<std::string, std::vector<int>> by_host;
  for (size_t r = 0; r < ranks.size(); ++r) by_host[ranks[r].host].push_back(static_cast<int>(r));
  std::string out = fmt::format("{} rank{} on {} host{}", ranks.size(), ranks.size() == 1 ? "" : "s",
                                hosts.size(), hosts.size() == 1 ? "" : "s");
  if (hosts.size() <= 8) {
    out += ":";
    for (size_t i = 0; i < hosts.size(); ++i) {
      out += fmt::format("{} {} (ranks {})", i ? "," : "", hosts[i], rank_ranges(by_host[hosts[i]]));
    }
    return out;
  }
  std::map<size_t, int> hosts_with;  // ranks per host -> number of hosts
  for (const auto& [host, rs] : by_host) ++hosts_with[rs.size()];
  out += ":";
  bool first = true;
  for (const auto& [n, count] : hosts_with) {
    out += fmt::format("{} {} host{} with {} rank{}", first ? "" : ",", count, count == 1 ? "" : "s",
                       n, n == 1 ? "" : "s");
    first = false;
  }
  return out;
}

std::string network_summary(bool nccl) {
  std::string out = fmt::format("MPI transports {} (TCP interfaces: {})",
                                env_or("OMPI_MCA_btl", "Open MPI's choice"),
                                env_or("OMPI_MCA_btl_tcp_if_include",
                                       std::getenv("OMPI_MCA_btl_tcp_if_exclude")
                                           ? "all but OMPI_MCA_btl_tcp_if_exclude"
                                           : "Open MPI's choice"));
  if (nccl) {
    out += fmt::format("; NCCL interface {}, InfiniBand {}",
                       env_or("NCCL_SOCKET_IFNAME", "NCCL's choice"),
                       env_or("NCCL_IB_HCA", std::getenv("NCCL_IB_DISABLE") ? "disabled"
                                                                             : "NCCL's choice"));
  }
  ifaddrs* list = nullptr;
  std::string addrs;
  if (getifaddrs(&list) == 0) {
    for (ifaddrs* a = list; a; a = a->ifa_next) {
      if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET) continue;
      if (a->ifa_flags & IFF_LOOPBACK) continue;
      char ip[INET_ADDRSTRLEN] = {0};
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, ip, sizeof(ip));
      addrs += fmt::format("{}{} {}{}", addrs.empty() ? "" : ", ", a->ifa_name, ip,
                           (a->ifa_flags & IFF_UP) ? "" : " (down)");
    }
    freeifaddrs(list);
  }
  out += fmt::format("; this host's interfaces: {}", addrs.empty() ? "none with IPv4" : addrs);
  return out;
}

}  // namespace ddp
