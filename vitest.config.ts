import { defineConfig } from "vitest/config";

// Unit tests and interop tests against the real reference tools.
export default defineConfig({
  test: {
    include: ["test/unit/**/*.test.ts", "test/interop/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: "forks",
  },
});
