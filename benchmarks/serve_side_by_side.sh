#!/bin/bash
# B4 (one model) or B6 (several on one GPU) through `corral serve` (one run per variant) and then through vLLM
# 0.26.0's OpenAI server (one server per model, each at an equal share of the GPU), on the same GPU in one call,
# driven by the same load client (the peer kit's load_client.py) on the same model folders (real configs, dummy
# bf16 weights, the word-level tokenizer of the peer kit's bench_model_dir.py). With several models, one client
# per model runs at once, rate by rate, once every server is ready.
#   PEER=.peer NAME=qwen3-4b RATES=4,16,inf VARIANTS="steps8:num_scheduler_steps=8 steps1:num_scheduler_steps=1" \
#       bash benchmarks/serve_side_by_side.sh
#   PEER=.peer NAME=qwen3-4b,llama-2-7b RATES=4,inf bash benchmarks/serve_side_by_side.sh      # B6
# A variant is LABEL:KEY=VALUE[,KEY=VALUE]: lines added to each model's section of the serve config, or with
# a server. prefix to its [server] section (B6 under elastic KV memory: VARIANTS="elastic:server.max_loaded_models=2,
# server.kv_sharing='elastic'": the budget is then the models' GPU shares together).
# CLIENT_ARGS are added to each client's arguments; REQUESTS_JSONL=FILE also writes each request's timings there,
# and KEEPALIVE=0 sends each request on a connection of its own (benchmarks/peer_load_client.py says why). VLLM=0 skips vLLM;
# VLLM_EXTRA_ARGS are added to each vLLM server's (an fp8 KV cache on both sides: VARIANTS="fp8:kv_cache_dtype='fp8'"
# VLLM_EXTRA_ARGS="--kv-cache-dtype fp8"). CPU_LOG=FILE samples each process's CPU share by role meanwhile
# (benchmarks/cpu_monitor.py; `python -m benchmarks.cpu_monitor --report FILE` sums it up). Output in $OUT:
# b4.jsonl (one JSON line per server, model and rate), corral_LABEL.log, vllm_MODEL.log, client logs.
set -u
START=$(date +%s)
BUDGET=${BUDGET:-590}
left() { echo $((BUDGET - ($(date +%s) - START))); }
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PEER=$(cd "${PEER:-.peer}" && pwd)
IFS=, read -r -a NAMES <<< "${NAME:-qwen3-4b}"
RATES=${RATES:-4,16,inf}
NUM_REQUESTS=${NUM_REQUESTS:-200}
VARIANTS=${VARIANTS:-default:}
PORT=${PORT:-18100}
SHARE=$(python3 -c "print(round(0.9 / ${#NAMES[@]}, 4))")
COMMIT=${CORRAL_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}
for name in "${NAMES[@]}"; do python3 "$PEER/bench_model_dir.py" "$PEER/models/$name" "/tmp/corral-models/$name" || exit 1; done

# ready PID CHECK...: wait until every CHECK (a python expression over the JSON of a URL, "URL|EXPR") holds
ready() {
  local pid=$1; shift
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || return 1
    local all=1
    for check in "$@"; do
      python3 -c "import urllib.request,json,sys; r=urllib.request.urlopen('${check%%|*}', timeout=3); b=json.loads(r.read() or b'{}'); sys.exit(0 if (${check#*|}) else 1)" 2>/dev/null || { all=0; break; }
    done
    [ $all = 1 ] && return 0
    sleep 1
  done
  return 1
}
# load LABEL PORT...: one client per model (model i on port i), all at once, one rate at a time so that the
# models' loads overlap; each client warms its server up before the first rate only. The k-th rate draws its
# prompts with seed k: with one seed, each run's prompts would repeat the last run's, served from the prefix cache
load() {
  local label=$1; shift
  local warmup=() client=("$PEER/load_client.py") seed=0
  [ -n "${REQUESTS_JSONL:-}${KEEPALIVE:-}" ] && client=(-m benchmarks.peer_load_client "$PEER")
  for rate in ${RATES//,/ }; do
    local i=0 pids=()
    for name in "${NAMES[@]}"; do
      local port=${@:$((i + 1)):1}
      timeout $(( $(left) - 30 )) python3 "${client[@]}" --url http://127.0.0.1:$port --model "$name" \
          --rates "$rate" --seed $seed --num-requests "$NUM_REQUESTS" --label "$label" --jsonl "$OUT/b4.jsonl" ${CLIENT_ARGS:-} \
          "${warmup[@]}" 2>> "$OUT/client_$name.log" | cut -c1-400 &
      pids+=($!); i=$((i + 1))
    done
    wait "${pids[@]}"
    warmup=(--warmup 0) seed=$((seed + 1))
  done
}
stop() {
  kill -TERM -- -"$1" 2>/dev/null; for _ in $(seq 1 30); do kill -0 "$1" 2>/dev/null || break; sleep 1; done
  kill -KILL -- -"$1" 2>/dev/null; wait "$1" 2>/dev/null
}

if [ -n "${CPU_LOG:-}" ]; then
  python3 -m benchmarks.cpu_monitor --out "$CPU_LOG" &
  monitor=$!
  trap 'kill $monitor 2>/dev/null' EXIT
fi

for variant in $VARIANTS; do
  label=${variant%%:*}; settings=${variant#*:}
  config=/tmp/corral-serve-$label.toml
  lines=$(tr ',' '\n' <<< "$settings")
  { echo "[server]"; echo 'host = "127.0.0.1"'; echo "port = $PORT"
    grep '^server\.' <<< "$lines" | sed 's/^server\.//'
    for name in "${NAMES[@]}"; do
      echo "[models.\"$name\"]"; echo "model = \"/tmp/corral-models/$name\""; echo 'load_format = "dummy"'
      echo 'reasoning_parser = "none"'; echo "max_model_len = 4096"; echo "gpu_memory_utilization = $SHARE"
      echo "max_queue_len = 1024"
      grep -v -e '^server\.' -e '^$' <<< "$lines"
    done; } > "$config"
  log=$OUT/corral_$label.log
  setsid python3 -m corral.cli serve --config "$config" > "$log" 2>&1 &
  spid=$!
  checks=(); ports=()
  for name in "${NAMES[@]}"; do checks+=("http://127.0.0.1:$PORT/health|b['models']['$name']['state']=='ready'"); ports+=($PORT); done
  if ready $spid "${checks[@]}"; then
    echo "== corral $label ($settings): ready after $(( $(date +%s) - START )) s"
    load "corral-$COMMIT-$label" "${ports[@]}"
  else
    echo "== corral $label ($settings): not ready after $(( $(date +%s) - START )) s"; tail -20 "$log"
  fi
  stop $spid
  grep -c -E "ERROR|Traceback" "$log" | sed 's/^/corral log ERROR\/Traceback lines: /'
done

if [ "${VLLM:-1}" = 1 ]; then
  OUT=$OUT STEPS=import bash "$PEER/serve_vllm.sh" | grep -E "OK|rror" | tail -2  # unpacks the bundle and its wheels
  export PYTHONPATH=/tmp/site:/tmp/vserve VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
         VLLM_USE_FLASHINFER_SAMPLER=0 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
  pids=(); ports=(); i=0; ok=1
  for name in "${NAMES[@]}"; do
    port=$((18000 + i))
    setsid python3 -m vllm.entrypoints.openai.api_server --model /tmp/corral-models/$name --load-format dummy \
        --dtype bfloat16 --max-model-len 4096 --gpu-memory-utilization $SHARE --host 127.0.0.1 --port $port \
        --served-model-name $name ${VLLM_EXTRA_ARGS:-} > "$OUT/vllm_$name.log" 2>&1 &
    pids+=($!); ports+=($port)
    # each counts what the device's free memory loses while it profiles as its own: the next starts once
    # this one is ready, its KV cache allocated (a 20 s delay left the second, Llama-2-7B, a 7.4 GiB KV cache
    # where its share leaves about 21)
    ready ${pids[$i]} "http://127.0.0.1:$port/v1/models|True" || { ok=0; tail -20 "$OUT/vllm_$name.log"; break; }
    i=$((i + 1))
  done
  echo "== vLLM ready=$ok after $(( $(date +%s) - START )) s"
  [ $ok = 1 ] && load vllm-0.26.0 "${ports[@]}"
  for pid in "${pids[@]}"; do stop $pid; done
fi
