#!/bin/bash
# The clustering guide's health monitoring script ("Monitoring Clusters / Health
# Monitoring"), with its logic unchanged: a node is healthy when GET /health answers 200.
# Count answers 200 for healthy and degraded nodes and 503 for unhealthy ones (fewer than
# a majority of the members alive, or storage not writable); a node that does not answer
# at all counts as failed too (curl reports 000).
#
# Added to the guide's version: the node list can be given, a bound on each request, --help.
usage() {
  cat <<'USAGE'
usage: check_health.sh [-h|--help] [HOST:PORT ...]

Checks GET /health on every node and prints "All nodes healthy" or
"Failed nodes: ..." (the guide's output), plus, on stderr, one line per failed
node with the HTTP status it gave (000: no answer).

Nodes: the arguments, else $NODES (separated by spaces or commas), else the
guide's localhost:8081 localhost:8082 localhost:8083.
Environment: TIMEOUT_S  seconds allowed for each request (default 5).

Exit status: 0 every node answered 200, 1 some node did not, 2 bad usage.
USAGE
}

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  -*) echo "check_health.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
esac

if [ $# -gt 0 ]; then
  NODES=("$@")
elif [ -n "${NODES:-}" ]; then
  read -r -a NODES <<< "${NODES//,/ }"
else
  NODES=("localhost:8081" "localhost:8082" "localhost:8083")
fi
TIMEOUT_S=${TIMEOUT_S:-5}
if ! [[ "$TIMEOUT_S" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
  echo "check_health.sh: TIMEOUT_S must be a number of seconds, got '$TIMEOUT_S'" >&2
  exit 2
fi
FAILED_NODES=()

for node in "${NODES[@]}"; do
  response=$(curl -s --max-time "$TIMEOUT_S" -w "%{http_code}" "http://$node/health" -o /dev/null)
  if [ "$response" != "200" ]; then
    FAILED_NODES+=("$node")
    echo "$node: HTTP $response" >&2
  fi
done

if [ ${#FAILED_NODES[@]} -eq 0 ]; then
  echo "All nodes healthy"
  exit 0
else
  echo "Failed nodes: ${FAILED_NODES[*]}"
  exit 1
fi
