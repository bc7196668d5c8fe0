#!/usr/bin/env bash
# One device session: timings of the full 3 x 20-epoch run on the GPU, 1-epoch accuracy, then the recipe sweep.
set -u
export PYTHONUNBUFFERED=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "== full 20-epoch runs, one at a time (timing)"
python3 -m tools.tune --out "$OUT/full_gpu.jsonl" --device cuda --workers 1 --seeds 1 --recipes base --val 0
echo "== 1-epoch runs on the full data"
python3 -m tools.tune --out "$OUT/one_epoch.jsonl" --device cuda --workers 9 --seeds 1 --recipes base,lr0.1,lr0.2 --val 0 --epochs 1
echo "== recipe sweep on the validation split"
timeout "${SWEEP_SECONDS:-330}" python3 -m tools.tune --out "$OUT/tune.jsonl" --device cuda --workers 12 --seeds 2
echo "done"
