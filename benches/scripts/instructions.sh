#!/usr/bin/env bash
# Instructions per request (valgrind --tool=callgrind), repeatable on a noisy machine where
# req/s is not: `make bench-instructions [BINS="old/sluice new/sluice"]`. For each sluice build
# and scenario (passthrough, cache hit) it runs the build under callgrind pinned to CPU 0,
# warms it up with wrk, counts instructions only while wrk (CPU 1) sends for a fixed time, and
# divides by the requests wrk completed. Writes target/bench/instructions.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(target/release/sluice)
mock=target/release/mock-llm
[ -x "$mock" ] || { echo "instructions: $mock missing (make bench-instructions builds it)"; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"m","messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
LUA
up=$(port)
taskset -c 1 "$mock" --listen "127.0.0.1:$up" --threads 1 >/dev/null 2>&1 &
wait_port "$up"
out=target/bench/instructions.md
mkdir -p target/bench
{
  echo "# Instructions per request (callgrind)"
  echo
  echo "Each build under \`valgrind --tool=callgrind\` on CPU 0 (1 worker thread, default logging), wrk -c4 on CPU 1 against mock-llm; counted over 5 s after a 2 s warm-up."
  echo
  echo "| build | scenario | requests | instructions per request |"
  echo "|---|---|---|---|"
} > "$out"
for bin in "${bins[@]}"; do
  for scenario in passthrough cache_hit; do
    listen=$(port); admin=$(port)
    cache=""
    [ "$scenario" = cache_hit ] && cache="    cache: { ttl: 10m, key: { scope: none } }"
    cat > "$work/cfg.yaml" <<YAML
server:
  listen: ["127.0.0.1:$listen"]
  threads: 1
admin:
  listen: 127.0.0.1:$admin
upstreams:
  up:
    endpoints: [ { url: "http://127.0.0.1:$up" } ]
routes:
  - name: bench
    upstream: up
$cache
YAML
    taskset -c 0 valgrind --tool=callgrind --instr-atstart=no \
      --callgrind-out-file="$work/cg.out" "$bin" run --config "$work/cfg.yaml" >"$work/sluice.log" 2>&1 &
    vg=$!
    wait_port "$listen" || { cat "$work/sluice.log"; exit 1; }
    taskset -c 1 wrk -t1 -c4 -d2s -s "$work/post.lua" "http://127.0.0.1:$listen/v1/chat/completions" >/dev/null
    callgrind_control -i on "$vg" >/dev/null
    taskset -c 1 wrk -t1 -c4 -d5s -s "$work/post.lua" "http://127.0.0.1:$listen/v1/chat/completions" >"$work/wrk.txt"
    callgrind_control -i off "$vg" >/dev/null
    kill -INT "$vg"; wait "$vg" 2>/dev/null || true
    requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
    total=$(callgrind_annotate "$work/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",","",$1); print $1; done=1}')
    [ -n "$requests" ] && [ "$requests" -gt 0 ] || { echo "instructions: wrk completed no request"; exit 1; }
    per=$((total / requests))
    echo "| \`$bin\` | $scenario | $requests | $per |" >> "$out"
    echo "$bin $scenario: $requests requests, $per instructions per request"
    rm -f "$work/cg.out"
  done
done
echo "written: $out"
