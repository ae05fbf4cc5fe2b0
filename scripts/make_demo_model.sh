#!/usr/bin/env bash
# Make the demo model's weights, src/napari_samed2/models/weights/demo.safetensors:
# SAM 2.1's modules at 4.1 M parameters (models/configs/demo.yaml), trained from their own
# initial weights on 300 synthetic volumes (training/synthetic.py, seed 0; their look-alike
# blobs are objects too, so that the prompt decides what to segment) plus 30 volumes of the
# sample family (seeds 1-30, never 0), in two stages, as SAM-2 itself is trained (images
# first, then videos), four clips per optimiser step:
#   1. single slices (clips of 1): a box or a click, then 2 simulated correction clicks, so the
#      encoder and mask decoder learn to segment a prompted object: 1,500 steps from scratch,
#      then 4,000 more from there with a fresh schedule (0.7 s a step);
#   2. clips of 8 slices tracked with memory from the first slice's prompt, validated on 4
#      held-out volumes every 100 steps (4-5 s a step);
#   3. tracking: clips of 12 slices, half of them starting at the object's middle slice and
#      running past its end (--middle-start 0.5), so the model learns to let an object go when
#      it ends; the image encoder frozen, the object score weighted 10 (4.4 s a step);
#   4. ends beside a neighbour: as stage 3, but 40 % of the clips show their object end while
#      another object goes on beside it (--end-start 0.4), where stage 3's model ran on into
#      the neighbour (4.6 s a step).
# The checkpoint with the best validation Dice of stage 4 is exported in bfloat16. About
# 3 h 10 min on an otherwise idle 2-core CPU; anything else running on the CPU slows it a lot.
# This is run 8 of docs/training.md, the weights that ship.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/demo}"
COMMON=(--synthetic 300 --synthetic-distractors --weight-decay 0.05 --loss-weights dice=20 --device cpu
        --sample-volumes 30 --batch 4)
IMAGE=(--train all --clip-length 1 --prompt-probs box=0.6,click=0.4 --correction-frames 1 --correction-clicks 2 --grad-clip 1.0
       --val-every 0 --save-every 250)
.venv/bin/python -m napari_samed2.train "${COMMON[@]}" "${IMAGE[@]}" --model demo --from-scratch --seed 0 \
  --steps 1500 --lr 4e-4 --out "$OUT/image"
.venv/bin/python -m napari_samed2.train "${COMMON[@]}" "${IMAGE[@]}" --model "$OUT/image/model.safetensors" --seed 1 \
  --steps 4000 --lr 3e-4 --out "$OUT/image2"
.venv/bin/python -m napari_samed2.train "${COMMON[@]}" --train all --model "$OUT/image2/model.safetensors" --seed 0 \
  --clip-length 8 --steps 300 --lr 2e-4 --grad-clip 8.0 --prompt-probs box=0.6,click=0.2,mask=0.2 \
  --val-every 100 --save-every 100 --out "$OUT/video"
.venv/bin/python -m napari_samed2.train "${COMMON[@]}" --train decoder,memory --model "$OUT/video/best.safetensors" --seed 2 \
  --clip-length 12 --middle-start 0.5 --steps 600 --lr 2e-4 --grad-clip 8.0 --loss-weights dice=20,object_score=10 \
  --prompt-probs box=0.6,click=0.2,mask=0.2 --val-every 100 --save-every 100 --out "$OUT/track"
.venv/bin/python -m napari_samed2.train "${COMMON[@]}" --train decoder,memory --model "$OUT/track/best.safetensors" --seed 4 \
  --clip-length 12 --middle-start 0.5 --end-start 0.4 --steps 500 --lr 1e-4 --grad-clip 8.0 \
  --loss-weights dice=20,object_score=10 --prompt-probs box=0.6,click=0.2,mask=0.2 --val-every 100 --save-every 100 \
  --out "$OUT/ends"
mkdir -p src/napari_samed2/models/weights
.venv/bin/python -c "
import sys
from napari_samed2.training.checkpoints import export_weights
export_weights(sys.argv[1] + '/ends/best.safetensors', 'src/napari_samed2/models/weights/demo.safetensors')
" "$OUT"
ls -l src/napari_samed2/models/weights/demo.safetensors
