# Hosts made of network namespaces, for multi-host tests and benchmarks (sourced, bash).
#
#   source tests/multihost/hosts.sh
#   mh_require                      # root, ip netns, veth, mpirun; else skip (77) or fail (CI)
#   mh_create 2                     # hosts $MH_PREFIX-h0, -h1 on one bridge; trap cleans up
#   mh_local_disk /path/ckpt        # each host sees its own empty directory at /path/ckpt
#   mh_mpirun 2 1 -- build/bin/ddp-train ...   # 2 hosts x 1 rank, over TCP on the hosts' subnet
#   mh_link_down 1 / mh_link_up 1   # partition host 1 from everyone / heal it
#   mh_kill_host 1                  # every process in host 1's namespace killed (a dead host)
#   mh_pids 1                       # the processes still alive on host 1
#
# Addresses: one /24 inside 198.18.0.0/15 (RFC 2544's benchmarking range) per harness, chosen
# from the PID; the bridge (where mpirun runs, in the root namespace) is .1, host i is .(10+i).
# Nothing outside the namespaces created here is ever addressed. mh_cleanup (run on EXIT)
# kills every process left in them, unmounts, and removes namespaces, links and files.
#
# Each host runs its processes through rsh_agent.sh (Open MPI's plm_rsh_agent), which enters
# the host's namespace and gives it its own hostname; with mh_local_disk it first bind-mounts
# the host's own directory over the disk path in a private mount namespace.

MH_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MH_TAG=$(( $$ % 100000 ))
MH_PREFIX=mh$MH_TAG            # namespaces: mh123-h0 ...; links stay under 15 characters
MH_NET=198.18.$(( $$ % 250 + 1 ))
MH_SUBNET=$MH_NET.0/24
MH_BRIDGE=mhb$MH_TAG
MH_HOSTS=0
MH_WORK=
MH_AGENT=

mh_skip() {
  if [[ ${CI:-} == true ]]; then echo "FAIL (CI=true, cannot skip): $1"; exit 1; fi
  echo "SKIP: $1"
  exit 77
}

mh_require() {
  [[ $(id -u) == 0 ]] || mh_skip "multi-host tests need root (ip netns, mount)"
  command -v ip >/dev/null || mh_skip "no 'ip' command (iproute2)"
  command -v mpirun >/dev/null || mh_skip "no mpirun"
  if ! ip netns add "$MH_PREFIX-probe" 2>/dev/null; then
    mh_skip "cannot create network namespaces (ip netns add failed)"
  fi
  ip netns del "$MH_PREFIX-probe"
}

mh_host() { echo "$MH_PREFIX-h$1"; }

# mh_create N: N hosts on one bridge. Installs the EXIT trap.
mh_create() {
  local n=$1 i
  MH_WORK=$(mktemp -d /tmp/ddp-multihost.XXXXXX)
  trap mh_cleanup EXIT
  trap 'exit 130' INT TERM
  ip link add "$MH_BRIDGE" type bridge
  ip addr add "$MH_NET.1/24" dev "$MH_BRIDGE"
  ip link set "$MH_BRIDGE" up
  for ((i = 0; i < n; ++i)); do
    local h
    h=$(mh_host "$i")
    ip netns add "$h"
    ip link add "mh${MH_TAG}v$i" type veth peer name eth0 netns "$h"
    ip link set "mh${MH_TAG}v$i" master "$MH_BRIDGE" up
    ip -n "$h" addr add "$MH_NET.$((10 + i))/24" dev eth0
    ip -n "$h" link set eth0 up
    ip -n "$h" link set lo up
    MH_HOSTS=$((i + 1))
  done
  MH_AGENT=$MH_HERE/rsh_agent.sh
  export MH_DISKS=$MH_WORK/disks
  : >"$MH_WORK/hostfile"
}

# mh_local_disk PATH: every host sees its own directory at PATH (created empty; kept across
# jobs, as a node's disk is). The root namespace keeps seeing the real PATH.
mh_local_disk() {
  local at=$1 i
  mkdir -p "$at" "$MH_WORK/disks"
  for ((i = 0; i < MH_HOSTS; ++i)); do
    mkdir -p "$MH_WORK/disks/$(mh_host "$i")"
    echo "$at" >"$MH_WORK/disks/$(mh_host "$i").at"
  done
}
# mh_disk I: the directory that is host I's local disk.
mh_disk() { echo "$MH_WORK/disks/$(mh_host "$1")"; }

# mh_mpirun_cmd HOSTS RANKS_PER_HOST: prints the mpirun command line (hostfile written) that
# runs a job from the root namespace (as a login node would) on hosts 0..HOSTS-1,
# RANKS_PER_HOST slots each, over TCP on the hosts' subnet. For ddp-launch, which runs it itself.
# (Word-split by callers: no path in it holds a space.)
mh_mpirun_cmd() {
  local hosts=$1 per=$2 i
  : >"$MH_WORK/hostfile"
  for ((i = 0; i < hosts; ++i)); do echo "$(mh_host "$i") slots=$per" >>"$MH_WORK/hostfile"; done
  echo mpirun --allow-run-as-root -np $((hosts * per)) --hostfile "$MH_WORK/hostfile" \
    --mca plm_rsh_agent "$MH_AGENT" --mca btl tcp,self \
    --mca btl_tcp_if_include "$MH_SUBNET" --mca oob_tcp_if_include "$MH_SUBNET" \
    -x OMP_NUM_THREADS=1
}
# mh_mpirun HOSTS RANKS_PER_HOST [mpirun options...] -- command...: runs that job.
mh_mpirun() {
  local cmd opts=()
  read -ra cmd <<<"$(mh_mpirun_cmd "$1" "$2")"
  shift 2
  while [[ $# -gt 0 && $1 != -- ]]; do opts+=("$1"); shift; done
  [[ ${1:-} == -- ]] && shift
  "${cmd[@]}" "${opts[@]}" "$@"
}

mh_link_down() { ip -n "$(mh_host "$1")" link set eth0 down; }
mh_link_up() { ip -n "$(mh_host "$1")" link set eth0 up; }
# mh_rate I RATE: limits host I's egress (tc tbf), e.g. mh_rate 1 1gbit.
mh_rate() {
  ip netns exec "$(mh_host "$1")" tc qdisc replace dev eth0 root tbf rate "$2" burst 256kb \
    latency 50ms
}
mh_pids() { ip netns pids "$(mh_host "$1")" 2>/dev/null; }
mh_kill_host() {
  local p
  for p in $(mh_pids "$1"); do kill -9 "$p" 2>/dev/null || true; done
}
# mh_orphans: "host: pid command" for every process still alive in any host.
mh_orphans() {
  local i p
  for ((i = 0; i < MH_HOSTS; ++i)); do
    for p in $(mh_pids "$i"); do
      echo "$(mh_host "$i"): $p $({ tr '\0' ' ' </proc/"$p"/cmdline; } 2>/dev/null | cut -c1-100)"
    done
  done
}

# Never fails, also under the caller's `set -e` (a failing step must not leave the rest).
mh_cleanup() {
  local i
  for ((i = 0; i < MH_HOSTS; ++i)); do mh_kill_host "$i"; done
  sleep 0.2
  for ((i = 0; i < MH_HOSTS; ++i)); do
    ip netns del "$(mh_host "$i")" 2>/dev/null || true
    ip link del "mh${MH_TAG}v$i" 2>/dev/null || true  # usually gone with its namespace
  done
  ip link del "$MH_BRIDGE" 2>/dev/null || true
  [[ -z $MH_WORK ]] || rm -rf "$MH_WORK"
  MH_HOSTS=0
}
