/**
 * The name rules (README.md, "Names"): one rule per kind of name, used by the
 * spec, the agent config, the bundle manifest and the channel index alike, so
 * a name one side accepts the other never refuses.
 */

/** A channel name: `<repo>/channels/<channel>.json`. Lowercase, as URLs and file systems agree on it. */
export const CHANNEL_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
export const CHANNEL_NAME_RULE =
  "a channel name: 1-64 of a-z 0-9 . _ -, starting with a letter or digit";

/** A `compatible` string: the board an image is for; an update installs only on an equal one. */
export const COMPATIBLE_NAME = /^[A-Za-z0-9][A-Za-z0-9._+:-]{0,127}$/;
export const COMPATIBLE_NAME_RULE =
  "a compatible string: 1-128 of A-Z a-z 0-9 . _ + : -, starting with a letter or digit";

/**
 * Why a repository URL (spec `update.repo`, agent config `repoUrl`) is not
 * one, or undefined: an http:// or https:// URL that the WHATWG URL parser
 * (the agent's) accepts, with a port of 1-65535 when it names one.
 */
export function repoUrlProblem(s: string): string | undefined {
  const port = /^[a-z]+:\/\/[^/?#]*:(\d+)(?:[/?#]|$)/i.exec(s)?.[1];
  if (port !== undefined && !(Number(port) >= 1 && Number(port) <= 65535)) {
    return `port ${port} is out of range (1-65535)`;
  }
  let url: URL;
  try {
    url = new URL(s);
  } catch {
    return "not a URL";
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    return "not an http:// or https:// URL";
  return undefined;
}

export function isChannelName(s: unknown): s is string {
  return typeof s === "string" && CHANNEL_NAME.test(s);
}

export function isCompatibleName(s: unknown): s is string {
  return typeof s === "string" && COMPATIBLE_NAME.test(s);
}
