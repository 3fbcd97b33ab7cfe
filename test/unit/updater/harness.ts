/**
 * The updater tests' agent: the real code over a disk image standing for
 * the boot disk (as `abforge agent --disk`), with a log the tests can read
 * and a reboot that is only recorded.
 */
import { Writable } from "node:stream";
import { pino } from "pino";
import { BootDisk, type BootState } from "../../../src/bootloader/index.ts";
import type { Logger } from "../../../src/log.ts";
import {
  Agent,
  type AgentConfig,
  type AgentOptions,
  bootStateBootedSlot,
  defaultConfig,
  diskStateDir,
  LogOnlyRebooter,
  ProcessHealthRunner,
  RepoHttpClient,
  SquashfsImageFiles,
  systemClock,
} from "../../../src/updater/index.ts";

/** `reboot: manual`: install and wait (the tests that watch what an install leaves). */
export const REBOOT_OFF: AgentConfig["reboot"] = {
  strategy: "off",
  window: null,
  method: "reboot",
  etcd: null,
};

export interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

export function captureLog(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split("\n")) if (l.trim()) lines.push(JSON.parse(l) as LogLine);
      cb();
    },
  });
  return { log: pino({ level: "debug", base: undefined }, sink), lines };
}

export interface TestAgent {
  agent: Agent;
  lines: LogLine[];
  reboots: string[];
  options: AgentOptions;
}

export async function testAgent(
  diskPath: string,
  o: {
    config?: Partial<AgentConfig>;
    stateDir?: string;
    overrides?: Partial<AgentOptions>;
    readOnly?: boolean;
  } = {},
): Promise<TestAgent> {
  const { log, lines } = captureLog();
  const rebooter = new LogOnlyRebooter(log);
  const config = { ...defaultConfig(), ...o.config };
  // one clock for the agent and its download client (src/clock.ts)
  const clock = o.overrides?.clock ?? systemClock;
  const options: AgentOptions = {
    config,
    diskPath,
    stateDir: o.stateDir ?? diskStateDir(diskPath),
    log,
    clock,
    random: { fraction: () => 0.5, id: () => "test-host", int: () => 7 },
    rebooter,
    http: new RepoHttpClient({ stallTimeoutMs: 5000, log, clock }),
    health: new ProcessHealthRunner(clock),
    bootedSlot: bootStateBootedSlot,
    openBootDisk: (p, m) => BootDisk.open(p, m),
    imageFiles: (_slot, range) => new SquashfsImageFiles(diskPath, range.offset),
    ...o.overrides,
  };
  return {
    agent: await Agent.open(options, { readOnly: o.readOnly ?? false }),
    lines,
    reboots: rebooter.reasons,
    options,
  };
}

export async function readBoot(disk: string): Promise<BootState> {
  const d = await BootDisk.open(disk, { readOnly: true });
  try {
    return await d.readState();
  } finally {
    await d.close();
  }
}

export async function writeBoot(disk: string, s: BootState): Promise<void> {
  const d = await BootDisk.open(disk);
  try {
    await d.writeState(s);
  } finally {
    await d.close();
  }
}
