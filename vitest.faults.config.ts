import { defineConfig } from "vitest/config";

// The fault suite: crashes, power loss, hostile inputs, fuzzed parsers.
export default defineConfig({
  test: {
    include: ["test/faults/**/*.test.ts"],
    // The power-loss scenarios boot the same images as the QEMU suite (cached by source hash).
    globalSetup: ["test/qemu/build-images.ts"],
    testTimeout: 900_000,
    hookTimeout: 1_800_000,
    fileParallelism: false,
    pool: "forks",
  },
});
