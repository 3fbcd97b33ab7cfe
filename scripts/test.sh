#!/usr/bin/env bash
# Sets up and runs every test: lint and types, unit and interop tests against
# the real tools, the QEMU boot and update tests, and the fault suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
npm run lint
npm run test:unit
npm run test:qemu
npm run test:faults
