#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md and RESULTS.md, in one script that survives
# short machine leases: every phase can be cut off and rerun.
#
#   benchmarks/gpu_protocol.sh bench            # meta_step.py, JAX and torch.func, one JSON line each
#   benchmarks/gpu_protocol.sh train SECONDS    # Finn et al.'s MAML 5-way and 20-way 1-shot
#   benchmarks/gpu_protocol.sh natural          # issues 18/19: a ViT-S/16 P>M>F (ProtoNet) step;
#                                               # 1,000 ViT-S/16 episodes, embed-once and P>M>F
#                                               # fine-tuning; ResNet-12 ProtoNet / MetaOptNet on
#                                               # CIFAR-FS shapes against torch
#   benchmarks/gpu_protocol.sh scaling          # issue 20: benchmarks/scaling.py --real
#   benchmarks/gpu_protocol.sh backbones        # issue 19: benchmarks/backbones.py, torch on cuda
#
# `train` runs the published protocols (experiments/configs/maml_omniglot.py
# and its :20way variant: 60k steps each) side by side on one GPU for at most
# SECONDS, then stops them with SIGTERM, which makes experiments.meta_train
# save a checkpoint; the same command resumes them (it needs workdirs/gpu_* to
# be there again) and, once training is done, evaluates on the `lake` test
# split. Logs and results go to $OUT (default /tmp/gpu_protocol), with the
# workdirs packed as $OUT/gpu_workdirs.tgz.
# Data: TFDS_DATA_DIR must hold a prepared Omniglot (see BUILD.md).
# RUNS overrides the runs, as space-separated name=config pairs.
set -u
OUT=${OUT:-/tmp/gpu_protocol}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# The scripts under benchmarks/ import fsl_jax from this checkout.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Two trainings share the GPU: no process may take 75% of its memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PYTHON:-python3}
RUNS=${RUNS:-"gpu_maml5=experiments/configs/maml_omniglot.py gpu_maml20=experiments/configs/maml_omniglot.py:20way"}

case "${1:-}" in
  bench)
    steps=${BENCH_STEPS:-50}
    for algo in maml fomaml; do
      $PY benchmarks/meta_step.py --algo=$algo --ways=5 --shots=1 --queries=15 --meta_batch=32 \
        --inner_steps=5 --steps="$steps" --compare_torch 2>>"$OUT/bench.err" | tee -a "$OUT/bench.jsonl"
    done
    for algo in anil protonet; do
      $PY benchmarks/meta_step.py --algo=$algo --ways=5 --shots=1 --queries=15 --meta_batch=32 \
        --inner_steps=5 --steps="$steps" 2>>"$OUT/bench.err" | tee -a "$OUT/bench.jsonl"
    done
    ;;
  natural)
    steps=${BENCH_STEPS:-20}
    size=${VIT_SIZE:-224}
    $PY benchmarks/meta_step.py --model=vit_s16 --image_size=$size --algo=protonet --ways=5 --shots=5 \
      --queries=15 --meta_batch=1 --steps="$steps" 2>>"$OUT/natural.err" | tee -a "$OUT/natural.jsonl"
    $PY benchmarks/evaluation.py --model=vit_s16 --image_size=$size --classes=20 --per_class=100 \
      --episodes=1000 --per_episode_episodes=20 2>>"$OUT/natural.err" | tee -a "$OUT/natural.jsonl"
    $PY benchmarks/evaluation.py --model=vit_s16 --image_size=$size --classes=20 --per_class=100 \
      --learner=finetune --episodes=1000 --per_episode_episodes=20 --shots=5 \
      2>>"$OUT/natural.err" | tee -a "$OUT/natural.jsonl"
    for algo in protonet metaopt; do
      $PY benchmarks/meta_step.py --model=resnet12 --image_size=32 --algo=$algo --ways=5 --shots=1 \
        --queries=15 --meta_batch=8 --steps="$steps" --compare_torch 2>>"$OUT/natural.err" \
        | tee -a "$OUT/natural.jsonl"
    done
    ;;
  scaling)
    # One line per local device count (a single-GPU machine gives the 1-device row).
    n=$($PY -c "import jax; print(jax.local_device_count())")
    $PY benchmarks/scaling.py --real --devices=$(seq -s, 1 "$n") --out="$OUT/scaling" \
      2>>"$OUT/scaling.err" | tee -a "$OUT/scaling.jsonl"
    ;;
  backbones)
    # Forward images/s, ours against torch, both on the GPU (batch 32, 224x224).
    $PY benchmarks/backbones.py --torch_device=cuda --steps=10 --rounds=3 ${MODELS:+--models=$MODELS} \
      2>>"$OUT/backbones.err" | tee -a "$OUT/backbones.jsonl"
    ;;
  train)
    secs=${2:?"usage: $0 train SECONDS"}
    pids=()
    for run in $RUNS; do
      name=${run%%=*}
      cfg=${run#*=}
      timeout -s TERM "$secs" $PY -m experiments.meta_train --config="$cfg" \
        --workdir="workdirs/$name" >>"$OUT/$name.log" 2>&1 &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; echo "exit $?"; done
    for run in $RUNS; do
      name=${run%%=*}
      grep -E "step [0-9]+/|accuracy|Resumed|SIGTERM|Error|error" "$OUT/$name.log" | tail -4
    done
    tar czf "$OUT/gpu_workdirs.tgz" $(for run in $RUNS; do echo "workdirs/${run%%=*}"; done)
    ;;
  *)
    echo "usage: $0 bench | train SECONDS | natural | scaling | backbones" >&2
    exit 2
    ;;
esac
