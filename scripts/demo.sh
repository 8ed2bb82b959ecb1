#!/usr/bin/env bash
# The quick-start demo: bash scripts/demo.sh
#
# Sets everything up (.ci/setup: a .venv/ with torch, the pack's requirements and the embedded ComfyUI host), then
# animates the example picture through the shipped image-to-video workflow (generate.py --demo). It always ends with
# a video in outputs/:
#   - outputs/demo.mp4 with the real DynamiCrafter 512 model when models/dynamicrafter/dynamicrafter_512.ckpt (or the
#     same name in a ComfyUI model folder) is there, or can be downloaded (online, with a CUDA GPU);
#   - otherwise outputs/demo.tiny-random-weights.mp4: the same graph on tiny random weights, a pipeline check, and
#     the exact file and folder to put the real model into.
# Extra arguments go to generate.py (e.g. --prompt "..." --image my.png). DEMO_REAL=1 runs the real model on a CPU.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../.ci/setup"   # cds to the repo root

say "running: .venv/bin/python generate.py --demo --out outputs/demo.mp4 $*"
exec "$VPY" generate.py --demo --out outputs/demo.mp4 "$@"
