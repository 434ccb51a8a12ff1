#!/bin/bash
# Open MPI rsh agent (plm_rsh_agent) for hosts made by tests/multihost/hosts.sh:
#   rsh_agent.sh [options] <host> <command...>
# runs the command inside the host: its network namespace, its own hostname (a UTS
# namespace), and, when $MH_DISKS/<host>.at names a path, the host's own directory
# $MH_DISKS/<host> bind-mounted over that path (in the mount namespace ip netns exec makes),
# as a node-local disk would be.
while [[ $1 == -* ]]; do shift; done
host=$1
shift
src= at=
if [[ -n ${MH_DISKS:-} && -f $MH_DISKS/$host.at ]]; then
  src=$MH_DISKS/$host
  at=$(cat "$MH_DISKS/$host.at")
fi
# shellcheck disable=SC2016
exec ip netns exec "$host" unshare --uts /bin/bash -c \
  'hostname "$0" && { [[ -z $1 ]] || mount --bind "$1" "$2"; } && exec /bin/sh -c "$3"' \
  "$host" "$src" "$at" "$*"
