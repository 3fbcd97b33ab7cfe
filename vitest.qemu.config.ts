import { defineConfig } from "vitest/config";
import { QemuSequencer } from "./test/qemu/sequencer.ts";

// Boot and update scenarios under QEMU: slow, so run one file at a time.
export default defineConfig({
  test: {
    include: ["test/qemu/**/*.test.ts"],
    globalSetup: ["test/qemu/build-images.ts"],
    testTimeout: 900_000,
    hookTimeout: 1_800_000,
    fileParallelism: false,
    pool: "forks",
    sequence: { sequencer: QemuSequencer },
  },
});
