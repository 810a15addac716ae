#!/usr/bin/env bash
# Copy a finished compare folder's report and each job's done.json / metrics / confusion.csv into
# benchmarks/results/NAME (the evidence behind a README table, without images or weights).
#   bash benchmarks/export_runs.sh runs/bf16 bf16_runs
set -euo pipefail
src=$1; dst=benchmarks/results/$2
rm -rf "$dst"; mkdir -p "$dst/jobs"
cp "$src/plan.json" "$dst/" 2>/dev/null || true
[ -d "$src/report" ] && cp -r "$src/report" "$dst/report" && find "$dst/report" -name '*.png' -delete
for job in "$src"/jobs/*/; do
  name=$(basename "$job")
  [ -f "$job/done.json" ] || continue
  cp "$job/done.json" "$dst/jobs/$name.done.json"
  [ -f "$job/eval/metrics.json" ] && cp "$job/eval/metrics.json" "$dst/jobs/$name.metrics.json"
  [ -f "$job/eval/confusion.csv" ] && cp "$job/eval/confusion.csv" "$dst/jobs/$name.confusion.csv"
  [ -f "$job/train/log.jsonl" ] && gzip -c "$job/train/log.jsonl" > "$dst/jobs/$name.log.jsonl.gz"
done
echo "exported $(ls "$dst/jobs" | grep -c done.json) jobs to $dst"
