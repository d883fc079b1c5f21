#!/bin/bash
# The clustering guide's "Manual Multi-Node Setup" as a script: set NODE_ID,
# CLUSTER_ENABLED, BIND_ADDRESS, CLUSTER_NODES, REPLICATION_FACTOR and DATA_DIR, check
# them, then exec count-server (so a supervisor's signals reach it directly).
set -u

usage() {
  cat <<'USAGE'
usage: start_node.sh [-h|--help] [--node-id ID] [--bind HOST:PORT]
                     [--nodes HOST:PORT,...] [--rf N] [--data-dir DIR] [--single]

Starts one Count node of a cluster, as the clustering guide's manual setup does:

  export NODE_ID=1
  export CLUSTER_ENABLED=true
  export BIND_ADDRESS=0.0.0.0:8080
  export CLUSTER_NODES=192.168.1.10:8080,192.168.1.11:8080,192.168.1.12:8080
  export REPLICATION_FACTOR=2
  export DATA_DIR=/opt/count/data
  ./count-server

Each option sets the variable of the same meaning; the environment is used for
the rest, then the guide's values: BIND_ADDRESS 0.0.0.0:8080, REPLICATION_FACTOR 2,
CLUSTER_ENABLED true (--single: false, a node of its own). NODE_ID and DATA_DIR
have no default here (two nodes with one id, or data in whatever directory the
script ran from, are mistakes), nor CLUSTER_NODES in a cluster. Every other
setting (count-server --help lists them) is taken from the environment.

count-server is $COUNT_SERVER, else the one in this checkout's .venv, else the
one on PATH. Before it starts, `count-server --check` validates every setting.

Exit status: 2 bad usage or settings (the message names the variable),
127 count-server not found; otherwise count-server's own: 0 clean stop (SIGTERM
or SIGINT), 1 a process of the node died.
USAGE
}

fail() { echo "start_node.sh: $*" >&2; exit 2; }

single=false
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --node-id|--bind|--nodes|--rf|--data-dir)
      [ $# -ge 2 ] && [ -n "$2" ] || fail "$1 needs a value"
      case "$1" in
        --node-id) NODE_ID=$2 ;;
        --bind) BIND_ADDRESS=$2 ;;
        --nodes) CLUSTER_NODES=$2 ;;
        --rf) REPLICATION_FACTOR=$2 ;;
        --data-dir) DATA_DIR=$2 ;;
      esac
      shift 2 ;;
    --single) single=true; shift ;;
    *) echo "start_node.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

if $single; then
  CLUSTER_ENABLED=false
else
  CLUSTER_ENABLED=${CLUSTER_ENABLED:-true}
fi
BIND_ADDRESS=${BIND_ADDRESS:-0.0.0.0:8080}
REPLICATION_FACTOR=${REPLICATION_FACTOR:-2}
[ -n "${NODE_ID:-}" ] || fail "NODE_ID is not set (--node-id): every node needs its own"
[ -n "${DATA_DIR:-}" ] || fail "DATA_DIR is not set (--data-dir), e.g. /opt/count/data"
case "$CLUSTER_ENABLED" in
  1|true|yes|on|TRUE|True)
    [ -n "${CLUSTER_NODES:-}" ] || fail "CLUSTER_NODES is not set (--nodes): list every member, this node included" ;;
esac
export NODE_ID CLUSTER_ENABLED BIND_ADDRESS REPLICATION_FACTOR DATA_DIR
[ -n "${CLUSTER_NODES:-}" ] && export CLUSTER_NODES

mkdir -p -- "$DATA_DIR" 2>/dev/null || fail "DATA_DIR: cannot create $DATA_DIR"
[ -w "$DATA_DIR" ] || fail "DATA_DIR: $DATA_DIR is not writable by $(id -un)"

here=$(cd "$(dirname "$0")" && pwd)
server=${COUNT_SERVER:-}
if [ -z "$server" ]; then
  if [ -x "$here/../.venv/bin/count-server" ]; then
    server="$here/../.venv/bin/count-server"
  else
    server=$(command -v count-server) || { echo "start_node.sh: count-server not found (set COUNT_SERVER, or install Count: make run)" >&2; exit 127; }
  fi
fi
[ -x "$server" ] || { echo "start_node.sh: $server is not an executable" >&2; exit 127; }

"$server" --check || exit 2
exec "$server"
