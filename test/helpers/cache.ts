/**
 * A download cache shared by the tests (kernel packages and their extracted
 * trees), kept between runs: ABFORGE_CACHE_DIR or `.cache/` in the repository.
 */
import { fileURLToPath } from "node:url";

export const CACHE_DIR =
  process.env.ABFORGE_CACHE_DIR ?? fileURLToPath(new URL("../../.cache", import.meta.url));

/** The kernel package the demo image and the boot tests use. */
export const KERNEL_PACKAGE = "linux-image-cloud-amd64";
