#!/usr/bin/env bash
# A/B of front-end call merging on one GPU machine (not part of `make test`): the same tree served
# with merging off (labels 0-*) and on (1-*), in the order given, e.g.
#
#     OUT=/tmp/ab bash tests/perf/ab_merge_engine_calls.sh 0-a 1-a 0-b 1-b
#
# Each label is one `bench_gpu.py --frontends 8` run of the MiniLM loads (32-text, stream, unary,
# lone) with SEMSERVE_MERGE_ENGINE_CALLS set from the label; JSON and logs go to $OUT.
set -u
mkdir -p "$OUT"
start=$(date +%s)
for v in "$@"; do
  SEMSERVE_MERGE_ENGINE_CALLS=${v%%-*} timeout 170 python3 tests/perf/bench_gpu.py --minilm .models/minilm \
    --frontends 8 --skip peers,bert,rerank,search --duration 6 --warmup 2 --out "$OUT/m$v.json" > "$OUT/m$v.log" 2>&1
  echo "merge $v rc=$? $(( $(date +%s) - start ))s"
  python3 - "$OUT/m$v.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["semserve"]
for k in ("embed_32", "stream_1", "unary_1", "lone_1"):
    x = d.get(k, {}); u = x.get("usage", {})
    print("  ", k, {a: x.get(a) for a in ("items_per_s", "p50_ms", "p99_ms", "mean_batch_items")}, u.get("cores"),
          u.get("gpu_util_percent"))
PY
done
