#!/usr/bin/env bash
# Busy-poll layouts on 2 vCPUs: tcp-rr, 1 connection, 64 B, with the upstream
# echo busy-polling too, in three placements; direct and through ringfwd,
# 2 interleaved repetitions of 1 s warmup + 3 s. Writes runs/*.json and
# summary.md next to this script. Every process it starts is ended by PID.
set -euo pipefail
cd "$(dirname "$0")"
B=${RINGFWD:-../../../target/release/ringfwd}
mkdir -p runs
: > summary.tsv
run_layout() { # name echo_cpu gen_busy
  local name=$1 ecpu=$2 gflags=$3 e f
  taskset -c "$ecpu" "$B" echo --tcp 127.0.0.1:25800 --shards 1 --cpus "$ecpu" --busy-poll 50us >"runs/$name-echo.log" 2>&1 & e=$!
  taskset -c 0 "$B" run --tcp 127.0.0.1:25801=127.0.0.1:25800 --shards 1 --cpus 0 --busy-poll 50us >"runs/$name-fwd.log" 2>&1 & f=$!
  sleep 1
  for r in 1 2; do
    for t in direct:25800 ringfwd:25801; do
      local tgt=${t%%:*} port=${t##*:} j="runs/$name-${t%%:*}-r$r.json"
      # shellcheck disable=SC2086
      taskset -c 1 "$B" bench tcp-rr --target 127.0.0.1:$port --connections 1 --size 64 \
        --duration 3s --warmup 1s --shards 1 --cpus 1 $gflags --json "$j" --quiet >/dev/null
      python3 -c "import json,sys;d=json.load(open('$j'));print('$name','$tgt',$r,round(d['rate']),d['latency_us']['p50'],d['latency_us']['p99'],sep='\t')" >> summary.tsv
    done
  done
  kill "$e" "$f"; wait "$e" "$f" 2>/dev/null || true
}
run_layout echo-cpu1-gen-plain 1 ""
run_layout echo-cpu1-gen-busy 1 "--busy-poll 50us"
run_layout echo-cpu0-gen-busy 0 "--busy-poll 50us"
{
  echo "# Busy-poll layouts, tcp-rr 1 connection 64 B"
  echo
  echo "Forwarder: \`ringfwd run --busy-poll 50us\` on CPU 0. Echo: \`ringfwd echo --busy-poll 50us\` on the CPU the layout names. Generator: \`ringfwd bench\` on CPU 1, busy-polling where the layout says. Commands: run.sh."
  echo
  echo "| layout | target | rep | req/s | p50 µs | p99 µs |"
  echo "|---|---|---:|---:|---:|---:|"
  awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s |\n",$1,$2,$3,$4,$5,$6}' summary.tsv
} > summary.md
rm summary.tsv
