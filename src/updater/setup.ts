/**
 * Putting an agent together from the command line's choices (README.md,
 * "Running it"): which config, which disk, where the state lives, which keys,
 * and the real machine behind the interfaces. On a host: /etc/abforge/agent.yaml,
 * the discovered boot disk, /var/lib/abforge, `reboot`. With `--disk IMAGE`:
 * the image stands for the boot disk, the slot GRUB would boot now counts as
 * booted, and the agent reads what a host booted from it reads: the config,
 * the trusted keys and the release inside that slot. The state lives beside
 * the image, a reboot is only logged (or runs `--reboot-command`, for a test
 * or a simulation to observe), and the image's health checks (commands for
 * the host it boots) are not run here.
 *
 * Trust: `--pubkey` limits it to the keys given (as `bundle verify --pubkey`
 * does); otherwise the config's trustedKeys, else the image's keys directory.
 * The agent logs each trusted key with where it came from.
 */
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { BootDisk, findHostBootDisk, nextBootSlot } from "../bootloader/index.ts";
import { loadPublicKey } from "../bundle/index.ts";
import { type Clock, offsetClock, systemClock } from "../clock.ts";
import {
  AGENT_CONFIG_PATH,
  type AgentConfig,
  DEFAULT_CONFIG_PATH,
  defaultConfig,
  loadConfig,
  parseConfig,
} from "../image/index.ts";
import { RebootLock } from "../lock/index.ts";
import type { Logger } from "../log.ts";
import { Agent, type AgentOptions, type TrustedKey } from "./agent.ts";
import { ProcessHealthRunner } from "./health.ts";
import { SystemKexec } from "./kexec.ts";
import {
  bootStateBootedSlot,
  CmdlineBootedSlot,
  CommandRebooter,
  LogOnlyRebooter,
  MACHINE_ID_PATH,
  RepoHttpClient,
  RootImageFiles,
  readMachineId,
  SquashfsImageFiles,
  systemHostFacts,
  systemRandom,
} from "./machine.ts";

export interface AgentCliOptions {
  config?: string;
  disk?: string;
  stateDir?: string;
  pubkey?: string[];
  /** With --disk: run this (`/bin/sh -c`) where a host would reboot. */
  rebootCommand?: string;
}

/** Test only: names a file holding milliseconds the agent's wall clock runs ahead (README.md, "A clock for tests"). */
export const TEST_CLOCK_ENV = "ABFORGE_TEST_CLOCK_FILE";

/**
 * The agent's clock: the system's, or with `--disk` and ABFORGE_TEST_CLOCK_FILE
 * set, the system's moved by the offset in that file (an unreadable or bad
 * file counts as 0). Only with `--disk`: a host's agent never runs on it.
 */
function agentClock(onImage: boolean, log: Logger): Clock {
  const file = process.env[TEST_CLOCK_ENV];
  if (!onImage || !file) return systemClock;
  log.warn({ file }, `test clock: the wall clock is moved by the milliseconds in ${file}`);
  return offsetClock(() => {
    try {
      const n = Number(readFileSync(file, "utf8").trim());
      return Number.isSafeInteger(n) ? n : 0;
    } catch {
      return 0;
    }
  });
}

/** An image file's host name: its file name without the extension, as an RFC 1123 label. */
export function imageHostname(disk: string): string {
  const label = basename(disk)
    .replace(/\.[^.]*$/, "")
    .replace(/[^A-Za-z0-9-]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 63)
    .replace(/-+$/, "");
  return label || "image";
}

/** The state directory for a disk image: beside it. */
export function diskStateDir(disk: string): string {
  return `${disk}.abforge-state`;
}

/** The config, and its trusted keys loaded with where each came from. */
export interface ResolvedConfig {
  config: AgentConfig;
  keys: TrustedKey[];
}

/**
 * Which config applies: --config; else the host's file; with --disk, the one
 * inside the slot the image boots (the defaults when it carries none).
 */
export async function resolveConfig(o: AgentCliOptions): Promise<ResolvedConfig> {
  if (o.config || !o.disk) {
    const path = o.config ?? DEFAULT_CONFIG_PATH;
    const config = await loadConfig(path);
    const keys = await Promise.all(
      config.trustedKeys.map(async (k) => ({
        key: await loadPublicKey(k),
        source: `${k} (trustedKeys in ${path})`,
      })),
    );
    return { config, keys };
  }
  return imageConfig(o.disk);
}

/** The config a host booted from `disk` reads: /etc/abforge/agent.yaml in the slot it boots. */
async function imageConfig(disk: string): Promise<ResolvedConfig> {
  const boot = await BootDisk.open(disk, { readOnly: true });
  let slot: ReturnType<typeof nextBootSlot>;
  let range: { offset: number; size: number } | undefined;
  try {
    slot = nextBootSlot(await boot.readState());
    if (slot !== null) range = boot.slotRange(slot);
  } finally {
    await boot.close();
  }
  // nothing bootable: the agent refuses with its own message when it opens
  if (slot === null || range === undefined) return { config: defaultConfig(), keys: [] };
  const files = new SquashfsImageFiles(disk, range.offset);
  const where = `${disk} (slot ${slot}) ${AGENT_CONFIG_PATH}`;
  const text = await files.text(AGENT_CONFIG_PATH);
  if (text === undefined) return { config: defaultConfig(), keys: [] };
  const config = parseConfig(text, where);
  // host settings that do not apply to an image file
  config.disk = null;
  config.healthChecks = [];
  config.builtinChecks = [];
  const loaded = await files.keys(config.trustedKeys);
  const keys = loaded.map((key, i) => ({
    key,
    source: `${config.trustedKeys[i]} in ${disk} (slot ${slot}, trustedKeys in its ${AGENT_CONFIG_PATH})`,
  }));
  return { config, keys };
}

export async function agentOptions(
  o: AgentCliOptions,
  log: Logger,
  overrides: Partial<AgentOptions> = {},
): Promise<AgentOptions> {
  const { config, keys: configKeys } = await resolveConfig(o);
  const onImage = o.disk !== undefined;
  const diskPath = o.disk ?? config.disk ?? (await findHostBootDisk());
  const stateDir = o.stateDir ?? (onImage ? diskStateDir(diskPath) : config.stateDir);
  const clock = agentClock(onImage, log);
  const pubkeys = await Promise.all(
    (o.pubkey ?? []).map(async (p) => ({ key: await loadPublicKey(p), source: `--pubkey ${p}` })),
  );
  return {
    config,
    diskPath,
    stateDir,
    log,
    clock,
    random: systemRandom,
    rebooter: !onImage
      ? new CommandRebooter(config.rebootCommand)
      : o.rebootCommand
        ? new CommandRebooter(["/bin/sh", "-c", o.rebootCommand])
        : new LogOnlyRebooter(log),
    // an image file stands for a host of its own: its name is the file's
    ...(onImage ? { host: systemHostFacts(imageHostname(diskPath)) } : {}),
    ...(onImage
      ? {}
      : {
          machineId: () => readMachineId(MACHINE_ID_PATH),
          kexec: new SystemKexec({ log, clock: systemClock, rebootCommand: config.rebootCommand }),
        }),
    rebootLock: (etcd) => {
      const lock = new RebootLock({
        endpoints: etcd.endpoints,
        ...(etcd.ca ? { ca: etcd.ca } : {}),
        ...(etcd.cert ? { cert: etcd.cert } : {}),
        ...(etcd.key ? { key: etcd.key } : {}),
        group: etcd.group,
        lockTTLMs: etcd.lockTTLMs,
        log,
      });
      return {
        acquire: async (id) => {
          const r = await lock.acquire(id);
          return {
            acquired: r.acquired,
            holders: r.semaphore.holders,
            max: r.semaphore.max,
            removedStale: r.removedStale,
          };
        },
        release: (id) => lock.release(id),
      };
    },
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
    pubkeys,
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
