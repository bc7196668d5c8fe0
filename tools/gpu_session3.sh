#!/usr/bin/env bash
# Fourth sweep, one device session: GPU epoch time of the current model, then recipes on the validation split.
# The dataset travels as .gpu/mnist.npz (data/dataset.npz recompressed; ignored by git).
set -u
export PYTHONUNBUFFERED=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
echo "== 2-epoch runs on the full data, one at a time (timing)"
python3 -m tools.tune --data .gpu/mnist.npz --out "$OUT/time_gpu.jsonl" --device cuda --workers 1 --seeds 1 --recipes base,ema0.999 --val 0 --epochs 2
echo "== recipe sweep on the validation split"
timeout "${SWEEP_SECONDS:-400}" python3 -m tools.tune --data .gpu/mnist.npz --out "$OUT/tune4_gn.jsonl" --device cuda --workers 1 --seeds 3 --recipes gn2 --variants gn &
timeout "${SWEEP_SECONDS:-400}" python3 -m tools.tune --data .gpu/mnist.npz --out "$OUT/tune4.jsonl" --device cuda --workers 14 --seeds 3 \
  --recipes base,ema0.999,ema0.9995,lr0.1,rot10_trans0.05,wd1e-4,ls0.2
wait
echo "done"
