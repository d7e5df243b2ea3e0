#!/usr/bin/env bash
# Regenerates the README's pictures (docs/img/*.png): bash docs/img/make_pictures.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python -c "from hdp.data.synthetic import sample_lengths; print(*sample_lengths('byted', 2**25, 2**21, 0), sep='\n')" > "$tmp/byted.txt"
hdp plot --lengths "$tmp/byted.txt" --out docs/img/lengths.png --title "Byted-like 32M-token batch"
hdp plan --dist byted --tokens 262144 --max-len 65536 --ranks 8 --capacity 16384 --out "$tmp/plan8.json" > /dev/null
hdp plot "$tmp/plan8.json" --out docs/img/plan-8.png --title "256K tokens"
hdp plan --lengths "$tmp/byted.txt" --ranks 1024 --capacity 8192 --out "$tmp/plan1024.json" > /dev/null
hdp plot "$tmp/plan1024.json" --out docs/img/plan-1024.png --title "Byted-like 32M tokens"
hdp train --steps 20 --metrics "$tmp/run.jsonl" --no-progress
hdp plot "$tmp/run.jsonl" --out docs/img/run.png --title "hdp train (tiny, 4 CPU ranks)"
