/**
 * Putting an agent together from the command line's choices (README.md,
 * "Running it"): which config, which disk, where the state lives, which keys,
 * and the real machine behind the interfaces. On a host: /etc/abforge/agent.yaml,
 * the discovered boot disk, /var/lib/abforge, `reboot`. With `--disk IMAGE`:
 * the image stands for the boot disk, the slot GRUB would boot now counts as
 * booted, the state lives beside the image, and a reboot is only logged.
 */
import { BootDisk, findHostBootDisk } from "../bootloader/index.ts";
import { loadPublicKey } from "../bundle/index.ts";
import { systemClock } from "../clock.ts";
import type { Logger } from "../log.ts";
import { Agent, type AgentOptions } from "./agent.ts";
import { type AgentConfig, DEFAULT_CONFIG_PATH, defaultConfig, loadConfig } from "./config.ts";
import { ProcessHealthRunner } from "./health.ts";
import {
  bootStateBootedSlot,
  CmdlineBootedSlot,
  CommandRebooter,
  LogOnlyRebooter,
  RepoHttpClient,
  RootImageFiles,
  SquashfsImageFiles,
  systemRandom,
} from "./machine.ts";

export interface AgentCliOptions {
  config?: string;
  disk?: string;
  stateDir?: string;
  pubkey?: string[];
}

/** The state directory for a disk image: beside it. */
export function diskStateDir(disk: string): string {
  return `${disk}.abforge-state`;
}

/** Which config applies: --config; else the host's file; with --disk and no file, the defaults. */
export async function resolveConfig(o: AgentCliOptions): Promise<AgentConfig> {
  if (o.config) return loadConfig(o.config);
  if (o.disk) return defaultConfig();
  return loadConfig(DEFAULT_CONFIG_PATH);
}

export async function agentOptions(
  o: AgentCliOptions,
  log: Logger,
  overrides: Partial<AgentOptions> = {},
): Promise<AgentOptions> {
  const config = await resolveConfig(o);
  const onImage = o.disk !== undefined;
  const diskPath = o.disk ?? config.disk ?? (await findHostBootDisk());
  const stateDir = o.stateDir ?? (onImage ? diskStateDir(diskPath) : config.stateDir);
  const configKeys = await Promise.all(config.trustedKeys.map((p) => loadPublicKey(p)));
  const extraKeys = await Promise.all((o.pubkey ?? []).map((p) => loadPublicKey(p)));
  return {
    config,
    diskPath,
    stateDir,
    log,
    clock: systemClock,
    random: systemRandom,
    rebooter: onImage ? new LogOnlyRebooter(log) : new CommandRebooter(config.rebootCommand),
    http: new RepoHttpClient({
      stallTimeoutMs: config.downloadStallTimeoutMs,
      log,
      clock: systemClock,
    }),
    health: new ProcessHealthRunner(systemClock),
    bootedSlot: onImage ? bootStateBootedSlot : new CmdlineBootedSlot(),
    openBootDisk: (path, m) => BootDisk.open(path, m),
    imageFiles: onImage
      ? (_slot, range) => new SquashfsImageFiles(diskPath, range.offset)
      : () => new RootImageFiles("/"),
    configKeys,
    extraKeys,
    ...overrides,
  };
}

/** `readOnly`: for `status`, which never changes the state file (README.md, "State file"). */
export async function createAgent(
  o: AgentCliOptions,
  log: Logger,
  overrides: Partial<AgentOptions> = {},
  mode: { readOnly?: boolean } = {},
): Promise<Agent> {
  return Agent.open(await agentOptions(o, log, overrides), mode);
}
