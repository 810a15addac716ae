#!/usr/bin/env bash
# Export a finished compare folder: its summary into the repository, its per-job evidence into an archive
# outside it (per-job dumps are not source; benchmarks/results/ keeps summaries only, see .gitignore).
#   bash benchmarks/export_runs.sh runs/bf16 bf16_runs [ARCHIVE_DIR]
# writes benchmarks/results/bf16_runs/{plan.json,report/} (tables, csv, json; no images) and
# ARCHIVE_DIR/bf16_runs-jobs.tar.gz (each job's done.json, eval metrics, confusion.csv and training log;
# ARCHIVE_DIR defaults to ../cat-adapter-runs beside the checkout).
set -euo pipefail
src=$1; name=$2
root=$(cd "$(dirname "$0")/.." && pwd)
archive_dir=${3:-$root/../cat-adapter-runs}
dst=$root/benchmarks/results/$name
rm -rf "$dst"; mkdir -p "$dst" "$archive_dir"
cp "$src/plan.json" "$dst/" 2>/dev/null || true
[ -d "$src/report" ] && cp -r "$src/report" "$dst/report" && find "$dst/report" -name '*.png' -delete
stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name/jobs"
for job in "$src"/jobs/*/; do
  job_name=$(basename "$job")
  [ -f "$job/done.json" ] || continue
  cp "$job/done.json" "$stage/$name/jobs/$job_name.done.json"
  [ -f "$job/eval/metrics.json" ] && cp "$job/eval/metrics.json" "$stage/$name/jobs/$job_name.metrics.json"
  [ -f "$job/eval/confusion.csv" ] && cp "$job/eval/confusion.csv" "$stage/$name/jobs/$job_name.confusion.csv"
  [ -f "$job/train/log.jsonl" ] && gzip -c "$job/train/log.jsonl" > "$stage/$name/jobs/$job_name.log.jsonl.gz"
done
tar -czf "$archive_dir/$name-jobs.tar.gz.tmp" -C "$stage" "$name"
mv "$archive_dir/$name-jobs.tar.gz.tmp" "$archive_dir/$name-jobs.tar.gz"
echo "exported $(ls "$stage/$name/jobs" | grep -c done.json) jobs: summary in $dst, evidence in $archive_dir/$name-jobs.tar.gz"
