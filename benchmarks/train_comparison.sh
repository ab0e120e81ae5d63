#!/usr/bin/env bash
# Train every model of docs/COMPARISON.md, one after the other, with the same wall-time budget
# (minutes; default 8) into runs/compare/, then the paper's MNIST baseline, then writes docs/COMPARISON.md
# (benchmarks/make_comparison.py). Rerunning it resumes
# unfinished runs and leaves finished ones as they are.
#     bash benchmarks/train_comparison.sh [BUDGET_MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-8}
for recipe in paper default-paper srgan esrgan real-esrgan swinir resshift mnist-baseline; do
    run=runs/compare/$recipe
    [ -f "$run/model.safetensors" ] && continue
    resume=$([ -d "$run/checkpoints" ] && echo --resume || true)
    limit=$([ "$recipe" = mnist-baseline ] || echo "--set time_budget_minutes=$budget")
    medsr train "configs/$recipe.yaml" --set out_dir=runs/compare $limit $resume
done
python benchmarks/make_comparison.py  # then write docs/COMPARISON.md from the runs
