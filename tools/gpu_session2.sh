#!/usr/bin/env bash
# Second device session: 1-epoch robustness of small-batch recipes, then a sweep of gentler learning rates.
set -u
export PYTHONUNBUFFERED=1
echo "== 1-epoch runs on the full data"
python3 -m tools.tune --out "$OUT/one_epoch2.jsonl" --device cuda --workers 12 --seeds 2 --recipes bs32_lr0.03,bs64_lr0.03 --val 0 --epochs 1
echo "== recipe sweep on the validation split"
timeout "${SWEEP_SECONDS:-250}" python3 -m tools.tune --out "$OUT/tune2.jsonl" --device cuda --workers 14 --seeds 1 --recipes lr0.02,lr0.03,lr0.03_pct0.3,lr0.02_bs64,lr0.05_pct0.35,lr0.03_mom0.95,lr0.02_bs64_gn2
echo "done"
