#!/bin/bash
# B4 through `corral serve` (one run per variant) and then vLLM 0.26.0's OpenAI server, on the same GPU in one
# call, driven by the same load client (the peer kit's load_client.py) on the same model folder (a real
# config, dummy bf16 weights, the word-level tokenizer of the peer kit's bench_model_dir.py).
#   PEER=.peer NAME=qwen3-4b RATES=4,16,inf VARIANTS="steps8:num_scheduler_steps=8 steps1:num_scheduler_steps=1" \
#       bash benchmarks/serve_side_by_side.sh
# A variant is LABEL:KEY=VALUE[,KEY=VALUE]: lines added to the model's section of the serve config.
# VLLM=0 skips vLLM. Output in $OUT: b4.jsonl (one JSON line per server and rate), corral_LABEL.log, vLLM's files.
set -u
START=$(date +%s)
BUDGET=${BUDGET:-590}
left() { echo $((BUDGET - ($(date +%s) - START))); }
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PEER=$(cd "${PEER:-.peer}" && pwd)
NAME=${NAME:-qwen3-4b}
RATES=${RATES:-4,16,inf}
NUM_REQUESTS=${NUM_REQUESTS:-200}
VARIANTS=${VARIANTS:-default:}
PORT=${PORT:-18100}
MODEL=/tmp/corral-models/$NAME
python3 "$PEER/bench_model_dir.py" "$PEER/models/$NAME" "$MODEL" || exit 1
COMMIT=${CORRAL_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}

for variant in $VARIANTS; do
  label=${variant%%:*}; settings=${variant#*:}
  config=/tmp/corral-serve-$label.toml
  { echo "[server]"; echo 'host = "127.0.0.1"'; echo "port = $PORT"
    echo "[models.\"$NAME\"]"; echo "model = \"$MODEL\""; echo 'load_format = "dummy"'
    echo 'reasoning_parser = "none"'; echo "max_model_len = 4096"; echo "gpu_memory_utilization = 0.9"
    echo "max_queue_len = 1024"
    [ -n "$settings" ] && tr ',' '\n' <<< "$settings"; } > "$config"
  log=$OUT/corral_$label.log
  setsid python3 -m corral.cli serve --config "$config" > "$log" 2>&1 &
  spid=$!
  ready=0
  for _ in $(seq 1 240); do
    kill -0 $spid 2>/dev/null || break
    if python3 -c "import urllib.request,json,sys; b=json.load(urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=3)); sys.exit(0 if b['models']['$NAME']['state']=='ready' else 1)" 2>/dev/null; then
      ready=1; break
    fi
    sleep 1
  done
  echo "== corral $label ($settings): ready=$ready after $(( $(date +%s) - START )) s"
  if [ $ready = 1 ]; then
    timeout $(( $(left) - 30 )) python3 "$PEER/load_client.py" --url http://127.0.0.1:$PORT --model "$NAME" \
        --rates "$RATES" --num-requests "$NUM_REQUESTS" --label "corral-$COMMIT-$label" --jsonl "$OUT/b4.jsonl" \
        2>> "$OUT/client.log" | cut -c1-400
  else
    tail -20 "$log"
  fi
  kill -TERM -- -$spid 2>/dev/null; for _ in $(seq 1 30); do kill -0 $spid 2>/dev/null || break; sleep 1; done
  kill -KILL -- -$spid 2>/dev/null; wait $spid 2>/dev/null
  grep -c -E "ERROR|Traceback" "$log" | sed 's/^/corral log ERROR\/Traceback lines: /'
done

if [ "${VLLM:-1}" = 1 ]; then
  OUT=$OUT NAME=$NAME RATES=$RATES NUM_REQUESTS=$NUM_REQUESTS BUDGET=$(( $(left) - 5 )) bash "$PEER/serve_vllm.sh" \
      | grep -E "^==|load client|!!" ; cat "$OUT/vllm_b4.jsonl" >> "$OUT/b4.jsonl" 2>/dev/null
  tail -n +1 "$OUT/vllm_b4.jsonl" 2>/dev/null | cut -c1-400
fi
