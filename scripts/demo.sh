#!/usr/bin/env bash
# The README's main-job command: set up `.venv` if needed, then run the most end-to-end thing the
# toolkit has so far. Until the trainer and its embedded demo exist, that is: the component
# catalogue (every registry of every installed package, through its entry points), then a real
# photo encoded by the tiny, random-initialised encoder of each family.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_env.sh"
python="$root/.venv/bin/python"
cli="$root/.venv/bin/sphinx-pipeline"

echo "== Registered components (the training demo replaces this once sphinx-pipeline train exists)"
"$cli" components

photo="$(mktemp --suffix=.png)"
trap 'rm -f "$photo"' EXIT
"$python" -c "import sys; from PIL import Image; from skimage import data; Image.fromarray(data.astronaut()).save(sys.argv[1])" "$photo"
echo
echo "== The scikit-image astronaut through the tiny encoder of each family (random weights)"
encoders=(tiny_clip_vit tiny_clip_convnext tiny_dinov2_reg4 tiny_siglip tiny_timm_convnet
  tiny_hf_clip tiny_hf_dinov2 tiny_blip2_qformer)
"$cli" encode "$photo" "${encoders[@]/#/--encoder=}"
