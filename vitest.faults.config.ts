import { defineConfig } from "vitest/config";

// The fault suite: crashes, power loss, hostile inputs, fuzzed parsers.
export default defineConfig({
  test: {
    include: ["test/faults/**/*.test.ts"],
    testTimeout: 900_000,
    hookTimeout: 1_800_000,
    fileParallelism: false,
    pool: "forks",
  },
});
