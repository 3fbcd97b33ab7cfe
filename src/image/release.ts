/**
 * The image's identity, `/etc/abforge/release.json` (README.md, "Release"):
 * written by the build, read by the agent for the host's compatible string.
 */
import { ImageError } from "./errors.ts";

export interface Release {
  name: string;
  version: string;
  compatible: string;
}

export function serializeRelease(r: Release): string {
  const value: Release = { name: r.name, version: r.version, compatible: r.compatible };
  return `${JSON.stringify(value, null, 2)}\n`;
}

/** `where` names the file in errors. CONFIG_INVALID when it is not a release. */
export function parseRelease(text: string, where: string): Release {
  let v: Partial<Release>;
  try {
    v = JSON.parse(text) as Partial<Release>;
  } catch (cause) {
    throw new ImageError("CONFIG_INVALID", `${where}: not JSON (${(cause as Error).message})`, {
      cause,
    });
  }
  if (
    typeof v?.name !== "string" ||
    typeof v.version !== "string" ||
    typeof v.compatible !== "string"
  )
    throw new ImageError(
      "CONFIG_INVALID",
      `${where}: needs string fields name, version, compatible`,
    );
  return { name: v.name, version: v.version, compatible: v.compatible };
}
