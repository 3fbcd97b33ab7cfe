/**
 * Errors of the image contract (README.md): a file the build wrote into an
 * image (the agent config, the release identity) that does not hold to it.
 * CONFIG_INVALID maps to the agent's exit code 70 in src/cli/exit-codes.ts.
 */
import { BaseError } from "../errors.ts";

export type ImageErrorCode = "CONFIG_INVALID";

export class ImageError extends BaseError<ImageErrorCode> {}
