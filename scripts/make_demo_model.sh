#!/usr/bin/env bash
# Make the demo model's weights, src/napari_samed2/models/weights/demo.safetensors (none ship yet):
# SAM 2.1's modules at 4.1 M parameters (models/configs/demo.yaml), trained from their own
# initial weights on 300 synthetic volumes (training/synthetic.py, seed 0), validated on 4
# held-out ones; the checkpoint with the best validation Dice is exported in bfloat16.
# 30-60 minutes on an otherwise idle 2-core CPU (1.1 s a step at first; subnormal floats slowed
# later steps in the first run, see docs/training.md). Not yet run end to end as written.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/demo}"
.venv/bin/python -m napari_samed2.train --synthetic 300 --model demo --from-scratch --train all \
  --steps 1750 --lr 4e-4 --grad-clip 1.0 --weight-decay 0.05 --prompt-probs box=0.5,click=0.25,mask=0.25 \
  --val-every 250 --save-every 250 --seed 0 --device cpu --out "$OUT"
mkdir -p src/napari_samed2/models/weights
.venv/bin/python -c "
import sys
from napari_samed2.training.checkpoints import export_weights
export_weights(sys.argv[1] + '/best.safetensors', 'src/napari_samed2/models/weights/demo.safetensors')
" "$OUT"
ls -l src/napari_samed2/models/weights/demo.safetensors
