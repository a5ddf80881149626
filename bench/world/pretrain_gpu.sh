#!/usr/bin/env bash
# Pre-train BLIP-2 world models on one GPU for a fixed wall-clock budget, several variants side by side (one
# process each, the 14 data workers shared out), then pack each checkpoint folder into one archive
# ($OUT/world-<i>.tar.gz). How the committed blip2-world checkpoint was made (bench/README.md); the CPU recipe
# is `pretrain.py blip2` (from scratch) with the same options.
#   bench/world/pretrain_gpu.sh OUT_DIR SECONDS "VARIANT OPTIONS" ["VARIANT OPTIONS" ...]
# e.g. the runs of 2026-11-26 (the first variant is the committed blip2-world; the slot loss is off by default):
#   base="--vision-hidden 160 --vision-layers 6 --text-layers 3"
#   bench/world/pretrain_gpu.sh $OUT 390 "$base" "$base --qformer-hidden 256 --qformer-layers 4" \
#       "$base --qformer-hidden 256 --qformer-layers 4 --slot-weight 20"
set -u
out=${1:?output folder}
budget=${2:?seconds}
shift 2
[ $# -ge 1 ] || set -- ""
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
workers=$((14 / $#))
export PYTHONUNBUFFERED=1
i=0
for variant in "$@"; do
    i=$((i + 1))
    # shellcheck disable=SC2086  # the variant's options are meant to split into words
    timeout $((budget + 60)) python3 bench/world/pretrain.py blip2 --device cuda --workers "$workers" --batch 128 \
        --time-budget "$budget" --checkpoint-every 120 --no-eval --warmup 300 --log-every 200 \
        --out /tmp/world-$i $variant >"$out/$i.log" 2>&1 &
done
wait
for j in $(seq 1 $i); do
    [ -d /tmp/world-$j ] && tar -czf "$out/world-$j.tar.gz" -C /tmp/world-$j .
    tail -3 "$out/$j.log"
done
ls -la "$out"
