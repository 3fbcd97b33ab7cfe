/**
 * The image build: the public face of src/build (README.md). `build` runs the
 * whole pipeline from a spec; the steps are exported for tests and tools that
 * assemble an image from its pieces (test/qemu/bootchain.test.ts does).
 * The CLI loads this module only when it builds (src/cli/build.ts), so
 * `abforge --help` and the agent never load the build's dependencies.
 */
export { agentConfigOf, agentFiles } from "./agent.ts";
export { type AbforgeDiskImages, abforgePartitions, assembleDisk } from "./assemble.ts";
export { BuildError, type BuildErrorCode } from "./errors.ts";
export { buildStateFs } from "./filesystems.ts";
export { buildInitramfs, installRootfsBootFiles } from "./initramfs.ts";
export { fetchKernel, installKernel, type KernelTree, resolveModules } from "./kernel.ts";
export { applyLayers } from "./layers.ts";
export {
  type BuildOptions,
  type BuildReport,
  type BuildResult,
  build,
  defaultCacheDir,
  type StepReport,
} from "./pipeline.ts";
export { buildSlotImage, type SlotImage, veritySeed } from "./slot.ts";
export { type ImageSpec, loadSpec, parseSpec, type SpecIssue } from "./spec/index.ts";
export { buildSquashfs, type SquashfsCompression } from "./squashfs.ts";
