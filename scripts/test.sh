#!/usr/bin/env bash
# Sets up and runs every test: lint and types, unit and interop tests against
# the real tools, the QEMU boot and update tests, and the fault suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# Setup must leave the tree as it found it (README, quick start): compare
# git's view of the tree before and after it.
before=$(git status --porcelain 2>/dev/null || true)
scripts/setup.sh
after=$(git status --porcelain 2>/dev/null || true)
if [ "$before" != "$after" ]; then
  echo "test: scripts/setup.sh changed the tree:" >&2
  diff <(printf '%s\n' "$before") <(printf '%s\n' "$after") >&2 || true
  exit 1
fi
npm run lint
npm run test:unit
npm run test:qemu
npm run test:faults
