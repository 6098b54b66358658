#!/usr/bin/env bash
# Create the REFERENCE virtual environment used only to (re)generate tests/fixtures/reference/ with
# scripts/make_reference_fixtures.py. It holds Lightricks' ltx-video 0.1.2 (Apache-2.0) and its own pins; it is never a
# runtime dependency of ltxserve and ltxserve never imports from it.
#
#   scripts/setup_reference_env.sh [VENV_DIR]        # default: ${XDG_CACHE_HOME:-~/.cache}/ltxserve/refenv
#   VENV_DIR/bin/python scripts/make_reference_fixtures.py
#
# Pins and why:
#   ltx-video==0.1.2       the reference implementation (ltx_video.inference.infer, 0.9.7-era pipeline code)
#   transformers<4.52      ltx-video 0.1.2 predates transformers 5 (T5Tokenizer/T5EncoderModel APIs as of 4.51)
#   sentencepiece          the tiny T5 tokenizer is trained locally by the fixture script
#   av, imageio, imageio-ffmpeg, torchvision, pyyaml, safetensors, einops: used by ltx_video's inference path
#   torch, torchvision     default torch==2.14.1 + torchvision==0.29.1 from PyPI: the versions that made the
#                          committed fixtures (cases.json "reference_versions"), so regenerating reproduces them
#                          bit for bit. A CUDA build (~6 GB venv) that runs fine on CPU. The local CPU wheel
#                          `pip install torch==2.13.0` also serves ltx_video, but no torchvision wheel available here
#                          matches it (torchvision 0.28.0 then fails to import: "operator torchvision::nms does not
#                          exist"); to use it set TORCH_SPEC=torch==2.13.0 TORCHVISION_SPEC=<a matching CPU build>.
#                          Other versions move a few pixels by one level, which the fidelity tolerance absorbs.
#   av                     keep the SAME PyAV wheel as ltxserve's venv: the CRF round-trip of the conditioning image is
#                          only bit-identical with the same bundled libx264.
set -euo pipefail

VENV_DIR="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/ltxserve/refenv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1}"
TORCHVISION_SPEC="${TORCHVISION_SPEC:-torchvision==0.29.1}"
AV_SPEC="${AV_SPEC:-av==18.1.0}"

if [[ -x "$VENV_DIR/bin/python" ]]; then
    echo "reference venv already exists at $VENV_DIR (delete it to rebuild)" >&2
else
    mkdir -p "$(dirname "$VENV_DIR")"
    "$PYTHON" -m venv "$VENV_DIR"
fi

"$VENV_DIR/bin/python" -m pip install --upgrade pip
# torch first, so that ltx-video's unpinned "torch" requirement is already satisfied.
"$VENV_DIR/bin/python" -m pip install "$TORCH_SPEC" "$TORCHVISION_SPEC"
"$VENV_DIR/bin/python" -m pip install \
    "ltx-video==0.1.2" \
    "transformers<4.52" \
    "diffusers==0.39.0" \
    sentencepiece \
    "$AV_SPEC" imageio imageio-ffmpeg \
    pyyaml safetensors einops pillow numpy

"$VENV_DIR/bin/python" - <<'EOF'
import importlib.metadata as m
for name in ("ltx-video", "torch", "transformers", "diffusers", "av", "sentencepiece"):
    print(f"{name}=={m.version(name)}")
import torchvision  # noqa: F401  (a torch/torchvision mismatch fails here, not mid-run)
import ltx_video.inference  # noqa: F401  (fails loudly if the reference cannot import)
EOF
echo "reference venv ready: $VENV_DIR/bin/python scripts/make_reference_fixtures.py"
