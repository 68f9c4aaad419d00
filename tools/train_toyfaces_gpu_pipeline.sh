#!/usr/bin/env bash
# The embedded generator's three stages in one GPU call (a 15-minute loan leaves room for one machine start):
#
#   tools/train_toyfaces_gpu_pipeline.sh OUTDIR [STAGE1_MINUTES] [STAGE3_MINUTES]
#
#   stage 1  synthesis from the attribute code, from scratch            (train_toyfaces_gpu.sh, --mode code)
#            or, with STAGE1_INIT=EXPORT, continued from that export and its code encoder
#   stage 2  the mapping refitted to the code encoder                    (fit_mapping, on the same device)
#   stage 3  end-to-end pixel distillation with the mapping frozen      (train_toyfaces_gpu.sh, --mode e2e)
#
# Both pixel stages weight the small features' pixels (train_generator --detail-weight, DETAIL, default 16): the
# shipped generator draws mouth, eye colour, earrings, lipstick, blush, nose and wrinkles as their most common
# value, and its end-to-end stage let the mapping drop them (benchmarks/bench_generator_latents.py), hence the
# frozen mapping in stage 3. Writes OUTDIR/stage1/, OUTDIR/stage2.{pt,log}, OUTDIR/stage3/ (its generator.pt is
# the result); the training states go under STATEDIR (default OUTDIR), which can be kept out of a size-limited
# OUTDIR. G_BATCH (128) and G_REUSE (4) as in train_toyfaces_gpu.sh.
#
# Stage 2 continues the stage-1 mapping (FIT_ARGS, default "--steps 4000 --lr 3e-4"): on the 2026-11-27 H200 run the
# former default, a fresh threshold-detector mapping ("--n-mlp 6 --fresh --sharpness 30 --steps 8000 --lr 3e-3"),
# took 138 s and decoded hair colour from w at 45%, where the continued fit decodes every attribute at 78% or
# more (4 min on one CPU thread; generator card, "GPU run of 2026-11-27"). One call of at most 600 s holds
# stage 1 of 4 minutes, stage 2 and stage 3 of 2 minutes with the start-up of each: the defaults.
#
# Stage 1 also keeps each discrete attribute's values apart in the code encoder's w (train_generator
# --margin-weight MARGIN, default 1): without it the encoder moves w by 2-5% of its spread for lipstick, blush and
# earrings, with it by 11% at the same pixel loss (1,000 CPU steps; BENCHMARKS.md, "Keeping the small attributes
# apart in w").
set -eu
OUTDIR=${1:?usage: $0 OUTDIR [STAGE1_MINUTES] [STAGE3_MINUTES]}
STAGE1_MINUTES=${2:-4}
STAGE3_MINUTES=${3:-2}
FIT_ARGS=${FIT_ARGS:---steps 4000 --lr 3e-4}
DETAIL=${DETAIL:-16}
MARGIN=${MARGIN:-1}
STATEDIR=${STATEDIR:-$OUTDIR}
export TRAIN_CLIP=0 DEVICE=${DEVICE:-cuda} G_BATCH=${G_BATCH:-128} G_REUSE=${G_REUSE:-4}
HERE=$(dirname "$0")
mkdir -p "$OUTDIR"

STATEDIR="$STATEDIR/stage1" G_EXTRA="--detail-weight $DETAIL --margin-weight $MARGIN" G_INIT=${STAGE1_INIT:-} G_MODE=code \
  bash "$HERE/train_toyfaces_gpu.sh" "$OUTDIR/stage1" "$STAGE1_MINUTES"
# shellcheck disable=SC2086  # FIT_ARGS is a list of options
python3 -m styleclip.toyfaces.fit_mapping --generator "$OUTDIR/stage1/generator.pt" --out "$OUTDIR/stage2.pt" \
  $FIT_ARGS --pool 100000 --device "$DEVICE" --threads "$(nproc)" >"$OUTDIR/stage2.log" 2>&1
tail -n 1 "$OUTDIR/stage2.log"
STATEDIR="$STATEDIR/stage3" G_INIT="$OUTDIR/stage2.pt" G_EXTRA="--detail-weight $DETAIL --freeze-mapping" \
  bash "$HERE/train_toyfaces_gpu.sh" "$OUTDIR/stage3" "$STAGE3_MINUTES"
