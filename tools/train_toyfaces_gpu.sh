#!/usr/bin/env bash
# Trains the embedded generator and the small CLIP side by side on one GPU within a wall-clock budget (a short
# GPU loan); renders come from CPU worker processes (half the cores each).
#
#   tools/train_toyfaces_gpu.sh OUTDIR [MINUTES]
#
# Generator stage, by G_INIT:
#   unset     stage 1: from scratch, synthesis from the attribute code (train_generator --mode code)
#   a file    stage 3: end-to-end pixel distillation of G(z) from that export (--mode e2e), normally the output
#             of stage 2, `python -m styleclip.toyfaces.fit_mapping` on a CPU; with G_MODE=code, stage 1
#             continued from that export (its code encoder included) instead
# CLIP continues from CLIP_INIT (default: the shipped weights), half of each batch in contrast groups; TRAIN_CLIP=0
# trains the generator alone, with all but one core rendering for it.
# G_BATCH (default 64) and G_REUSE (default 1: every sample fresh; R: each rendered batch serves R steps, drawn
# from a buffer of recent renders, for when the GPU outpaces the render workers) set the generator's batches;
# G_EXTRA adds train_generator options (e.g. "--detail-weight 16 --freeze-mapping").
# Writes OUTDIR/{generator.pt,clip.pt,generator.log,clip.log}; each log names the step count the budget allowed,
# and `--steps N` with that count reproduces the run on any device.
set -u
OUTDIR=${1:?usage: $0 OUTDIR [MINUTES]}
MINUTES=${2:-7}
DEVICE=${DEVICE:-cuda}
CLIP_INIT=${CLIP_INIT:-assets/toyfaces/clip.pt}
STATEDIR=${STATEDIR:-$OUTDIR}  # training states (large: keep them out of a size-limited OUTDIR)
CPUS=$(nproc)
TRAIN_CLIP=${TRAIN_CLIP:-1}
G_BATCH=${G_BATCH:-64}
G_REUSE=${G_REUSE:-1}
if [ "$TRAIN_CLIP" = 1 ]; then G_WORKERS=$((CPUS / 2)); else G_WORKERS=$((CPUS - 1)); fi
mkdir -p "$OUTDIR" "$STATEDIR"
export PYTHONUNBUFFERED=1 STYLECLIP_OPS_IMPL=ref
if [ -z "${G_INIT:-}" ]; then
  G_ARGS=(--restart --mode code --steps 20000 --ema 0.998 --warmup 300)
else
  G_ARGS=(--init "$G_INIT" --mode "${G_MODE:-e2e}" --steps 40000 --ema 0.998)
fi
# shellcheck disable=SC2086  # G_EXTRA is a list of options
python3 -m styleclip.toyfaces.train_generator "${G_ARGS[@]}" ${G_EXTRA:-} --device "$DEVICE" --workers "$G_WORKERS" \
  --batch "$G_BATCH" --reuse "$G_REUSE" --minutes "$MINUTES" --log-every 200 --save-minutes 2 \
  --state "$STATEDIR/generator_state.pt" --export "$OUTDIR/generator.pt" >"$OUTDIR/generator.log" 2>&1 &
G_PID=$!
[ "$TRAIN_CLIP" = 1 ] && python3 -m styleclip.toyfaces.train_clip --device "$DEVICE" --workers $((CPUS / 2 - 2)) --batch 256 \
  --minutes "$MINUTES" --steps 8000 --log-every 50 --save-minutes 2 --init "$CLIP_INIT" --group-frac 0.5 \
  --state "$STATEDIR/clip_state.pt" --export "$OUTDIR/clip.pt" >"$OUTDIR/clip.log" 2>&1 &
wait "$G_PID"
G_STATUS=$?  # the generator's exit status is the script's, so a pipeline stops when its trainer fails
wait
tail -n 3 "$OUTDIR"/*.log
exit "$G_STATUS"
