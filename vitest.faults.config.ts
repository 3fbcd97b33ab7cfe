import { defineConfig } from "vitest/config";

// The fault suite: crashes, power loss, hostile inputs, fuzzed parsers (test/faults/README.md).
export default defineConfig({
  test: {
    include: ["test/faults/**/*.test.ts"],
    globalSetup: [
      // The power-loss scenarios boot the same images as the QEMU suite (cached by source hash).
      "test/qemu/build-images.ts",
      // Collects each file's figures and prints them after the run.
      "test/faults/figures.ts",
    ],
    testTimeout: 900_000,
    hookTimeout: 1_800_000,
    fileParallelism: false,
    pool: "forks",
  },
});
