#!/usr/bin/env bash
# Starts a local Redis Cluster to try sluice on: 3 masters + 3 replicas on ports
# FIRST_PORT..FIRST_PORT+5 (default 7000..7005; cluster bus on port + 10000), no persistence,
# configs and logs under target/redis-cluster/. Prints the `redis:` line for a sluice config,
# then runs until Ctrl-C, which stops every node.
#
#     tools/redis-cluster.sh                     # ports 7000..7005
#     FIRST_PORT=7100 tools/redis-cluster.sh     # ports 7100..7105
set -euo pipefail

FIRST_PORT="${FIRST_PORT:-7000}"
HOST=127.0.0.1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DATA="$ROOT/target/redis-cluster"

for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || {
    echo "$tool is not installed: run \`make deps\` (Debian: apt-get install redis-server)" >&2
    exit 1
  }
done
PATH="$PATH:/usr/sbin"

ports=()
for i in 0 1 2 3 4 5; do ports+=($((FIRST_PORT + i))); done

pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping the cluster"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

for port in "${ports[@]}"; do
  if redis-cli -h "$HOST" -p "$port" PING >/dev/null 2>&1; then
    echo "port $port already answers Redis: stop it or set FIRST_PORT" >&2
    exit 1
  fi
  dir="$DATA/$port"
  rm -rf "$dir" && mkdir -p "$dir"
  redis-server --port "$port" --bind "$HOST" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
    --save "" --appendonly no --dir "$dir" --logfile "$dir/redis.log" &
  pids+=($!)
done

for port in "${ports[@]}"; do
  for _ in $(seq 100); do
    redis-cli -h "$HOST" -p "$port" PING >/dev/null 2>&1 && continue 2
    sleep 0.1
  done
  echo "node $port did not answer; see $DATA/$port/redis.log" >&2
  exit 1
done

nodes=()
for port in "${ports[@]}"; do nodes+=("$HOST:$port"); done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$DATA/create.log"

for port in "${ports[@]}"; do
  for _ in $(seq 100); do
    redis-cli -h "$HOST" -p "$port" CLUSTER INFO | grep -q '^cluster_state:ok' && continue 2
    sleep 0.1
  done
  echo "node $port never reported cluster_state:ok; see $DATA/$port/redis.log" >&2
  exit 1
done

seeds=""
for port in "${ports[@]}"; do seeds+="${seeds:+, }\"redis://$HOST:$port\""; done
echo "Redis Cluster up (3 masters, 3 replicas; data in $DATA). For sluice's config:"
echo
echo "redis: { cluster: [$seeds] }"
echo
echo "Ctrl-C stops it."
wait
