"""Tune the training recipe on a validation split carved from the training set.

The last `--val` training images are held out as validation data; the test set
is never used here. Each run trains one (recipe, norm, seed) with the project's
own `fit()`; runs go to a pool of worker processes (on a GPU they share it), and
each finished run is appended as one JSON line to `--out`, so a cut-off sweep
still leaves its results.

    python -m tools.tune --out tune.jsonl --workers 8
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import time
from dataclasses import replace

# The model and loss settings of the default before the third sweep.
PREV = {"weight_std": False, "transition": True, "label_smoothing": 0.0, "grad_clip": 0.0}
# Recipes to compare, as changes to params.yaml's train/model settings (the first two sweeps changed the
# params.yaml of their day, whose model and loss settings were PREV's).
RECIPES = {
    "base": {},
    "lr0.1": {"lr": 0.1},
    "lr0.2": {"lr": 0.2},
    "lr0.1_bs64": {"lr": 0.1, "batch_size": 64},
    "lr0.1_wd5e-4": {"lr": 0.1, "weight_decay": 5e-4},
    "lr0.1_drop0.05": {"lr": 0.1, "dropout": 0.05},
    "lr0.2_rot10": {"lr": 0.2, "rotation": 10.0},
    "lr0.4_bs256": {"lr": 0.4, "batch_size": 256},
    "bs64": {"batch_size": 64},
    "bs32": {"batch_size": 32},
    "bs32_lr0.03": {"batch_size": 32, "lr": 0.03},
    "bs64_lr0.03": {"batch_size": 64, "lr": 0.03},
    "lr0.02": {"lr": 0.02},
    "lr0.03": {"lr": 0.03},
    "lr0.03_pct0.3": {"lr": 0.03, "pct_start": 0.3},
    "lr0.02_bs64": {"lr": 0.02, "batch_size": 64},
    "lr0.05_pct0.35": {"pct_start": 0.35},
    "lr0.03_mom0.95": {"lr": 0.03, "momentum": 0.95},
    "lr0.02_bs64_gn2": {"lr": 0.02, "batch_size": 64, "gn_groups": 2},
    "trans0.1": {"translate": 0.1},
    "trans0.05": {"translate": 0.05},
    "ls0.1": {"label_smoothing": 0.1},
    "clip1": {"grad_clip": 1.0},
    "trans0.1_ls0.1_bs64": {"translate": 0.1, "label_smoothing": 0.1, "batch_size": 64},
    # Third sweep, spelled out in full so that it means the same whatever params.yaml now holds:
    # `prev` is the default before it, `base` (params.yaml as it is) its winner.
    "prev": PREV,
    "prev_ws": {**PREV, "weight_std": True},
    "prev_ls0.1_clip1": {**PREV, "label_smoothing": 0.1, "grad_clip": 1.0},
    "prev_ws_ls0.1_clip1": {**PREV, "weight_std": True, "label_smoothing": 0.1, "grad_clip": 1.0},
    # Fourth sweep (GPU), on the default of the third.
    "ema0.999": {"ema": 0.999},
    "ema0.9995": {"ema": 0.9995},
    "rot10_trans0.05": {"rotation": 10.0, "translate": 0.05},
    "wd1e-4": {"weight_decay": 1e-4},
    "ls0.2": {"label_smoothing": 0.2},
    "gn2": {"gn_groups": 2},
    # Fifth sweep: a capacity probe over the 10k limit (21,994 parameters); bn_l1 and ln only, since
    # GroupNorm's 4 groups do not divide its 18 channels.
    "w24": {"width": 24},
    # Sixth sweep (GPU), on the default.
    "drop0.05": {"dropout": 0.05},
}


def run_one(job: dict) -> dict:
    import torch

    from src.data import load_data
    from src.engine import fit, make_model, pick_device
    from src.params import load_params
    from src.train import MODEL_FIELDS, variant_configs

    model_cfg, cfg = variant_configs(load_params(), job["variant"])  # as params.yaml defines the variant
    changes = RECIPES[job["recipe"]]
    model_cfg = replace(model_cfg, **{k: v for k, v in changes.items() if k in MODEL_FIELDS})
    cfg = replace(cfg, **{k: v for k, v in changes.items() if k not in MODEL_FIELDS},  # training settings
                  seed=job["seed"], epochs=job["epochs"])
    device = pick_device(job["device"])
    torch.set_num_threads(1)  # one thread per worker: several workers share the cores
    data = load_data(job["data"])
    if job["val"]:  # hold out the end of the training set; the test set stays untouched
        n = len(data.train_images) - job["val"]
        data = replace(data, test_images=data.train_images[n:], test_labels=data.train_labels[n:],
                       train_images=data.train_images[:n], train_labels=data.train_labels[:n])
    data = data.to(device)
    start = time.perf_counter()
    history = fit(make_model(model_cfg, cfg.seed), data, cfg, device, progress=False)
    return {**job, "seconds": time.perf_counter() - start, "final": history[-1]["test_acc"],
            "best": max(r["test_acc"] for r in history), "train_acc": history[-1]["train_acc"],
            "curve": [round(r["test_acc"], 2) for r in history]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default="data/dataset.npz")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--val", type=int, default=10000, help="training images held out for validation")
    ap.add_argument("--seeds", type=int, default=2, help="how many seeds per recipe and variant")
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--variants", default="bn_l1,gn,ln")
    args = ap.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [{"recipe": r, "variant": v, "seed": s, "epochs": args.epochs, "val": args.val,
             "device": args.device, "data": args.data}
            for s, r, v in itertools.product(seeds, args.recipes.split(","), args.variants.split(","))]
    with mp.get_context("spawn").Pool(args.workers) as pool, open(args.out, "a") as f:
        for result in pool.imap_unordered(run_one, jobs):
            f.write(json.dumps(result) + "\n")
            f.flush()
            print(f"{result['recipe']:>16} {result['variant']:>6} seed {result['seed']}: "
                  f"final {result['final']:.2f} best {result['best']:.2f} ({result['seconds']:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
