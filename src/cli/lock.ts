/**
 * `abforge lock status|unlock|set-max`: the operator's view of the etcd
 * reboot semaphore (src/lock). Argument handling and text only.
 */
import { type Command, InvalidArgumentError, Option } from "commander";
import {
  DEFAULT_LOCK_TTL_MS,
  DEFAULT_TIMEOUT_MS,
  endpointProblem,
  type HolderStatus,
  holderIdProblem,
  LockError,
  RebootLock,
} from "../lock/index.ts";
import { logger } from "../log.ts";
import { action, intOption, type JsonOption, output } from "./command.ts";
import { parseDuration } from "./repo.ts";

export const DEFAULT_ETCD = "http://127.0.0.1:2379";

interface LockCliOptions extends JsonOption {
  etcd?: string[];
  group?: string;
  ca?: string;
  cert?: string;
  key?: string;
  timeout: number;
}

function common(cmd: Command): Command {
  return cmd
    .option(
      "--etcd <url>",
      `etcd client URL of any cluster member; repeatable or comma-separated, tried in order (default: ${DEFAULT_ETCD})`,
      (v: string, prev: string[] = []) => [...prev, ...endpointList(v)],
    )
    .option("--group <name>", "locksmith's reboot group (default: the default semaphore)")
    .option("--ca <file>", "CA certificate (PEM) that signed the etcd servers' (etcdctl --cacert)")
    .option("--cert <file>", "client certificate (PEM) for etcd (etcdctl --cert)")
    .option("--key <file>", "client private key (PEM) for etcd (etcdctl --key)")
    .addOption(
      new Option("--timeout <duration>", "deadline of each request to one endpoint")
        .argParser(parseDuration)
        .default(DEFAULT_TIMEOUT_MS, "5s"),
    )
    .option("--json", "print the result as JSON");
}

function open(o: LockCliOptions): RebootLock {
  return new RebootLock({
    endpoints: o.etcd && o.etcd.length > 0 ? o.etcd : [DEFAULT_ETCD],
    group: o.group ?? null,
    ...(o.ca === undefined ? {} : { ca: o.ca }),
    ...(o.cert === undefined ? {} : { cert: o.cert }),
    ...(o.key === undefined ? {} : { key: o.key }),
    timeoutMs: o.timeout,
    // Staleness is the leases' (set by each host when it takes a place), not this command's.
    lockTTLMs: DEFAULT_LOCK_TTL_MS,
    log: logger().child({ module: "lock" }),
  });
}

function endpointList(value: string): string[] {
  const list = value
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  for (const e of list) {
    const problem = endpointProblem(e);
    if (problem) throw new InvalidArgumentError(problem);
  }
  return list;
}

function holderId(value: string): string {
  const problem = holderIdProblem(value);
  if (problem) throw new InvalidArgumentError(problem);
  return value;
}

/** "29m58s", "45s", "2h0m" */
function duration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function holderState(h: HolderStatus): string {
  if (h.stale === true) return "stale: no confirmation within TTL (removable by the next host)";
  if (h.stale === null) return "no record (taken by locksmith; never removed automatically)";
  return `confirms within ${duration(h.ttlRemainingMs ?? 0)}`;
}

export function formatLockStatus(s: Awaited<ReturnType<RebootLock["status"]>>): string {
  const sem = s.semaphore;
  const lines = [
    `${s.key}${s.exists ? "" : " (not created yet: the first host to take a place creates it with max 1)"}`,
    `max ${sem.max}, free ${sem.semaphore}, ${sem.holders.length} holder(s)`,
  ];
  if (s.holders.length > 0) {
    const w = Math.max(6, ...s.holders.map((h) => h.id.length));
    lines.push(`  ${"HOLDER".padEnd(w)}  STATE`);
    for (const h of s.holders) lines.push(`  ${h.id.padEnd(w)}  ${holderState(h)}`);
  }
  return lines.join("\n");
}

export function register(program: Command): void {
  const lock = program
    .command("lock")
    .description(
      "the etcd reboot semaphore (locksmith's): who holds a place to reboot, and how many may",
    )
    .addHelpText(
      "after",
      `
Examples:
  abforge lock status --etcd http://10.0.0.1:2379,http://10.0.0.2:2379
  abforge lock unlock 69d27b356a94476da859461d3a3bc6fd
  abforge lock set-max 2 --group workers
  abforge lock status --etcd https://10.0.0.1:2379 --ca ca.pem --cert client.pem --key client-key.pem

The key, the value and how hosts take and release places: src/lock/README.md.`,
    );

  common(lock.command("status"))
    .description("show the semaphore: max, free places, holders and which of them are stale")
    .action(
      action(async (opts: LockCliOptions) => {
        const s = await open(opts).status();
        output(opts, s, () => formatLockStatus(s));
      }),
    );

  common(lock.command("unlock"))
    .description(
      "remove a holder (e.g. a host that went away while holding a place); not a holder: nothing changes",
    )
    .argument("<id>", "the holder's machine id, as status shows it", holderId)
    .action(
      action(async (id: string, opts: LockCliOptions) => {
        const l = open(opts);
        const r = await l.unlock(id);
        output(opts, { key: l.key, id, ...r }, () =>
          r.released
            ? `removed holder ${id} from ${l.key}: free ${r.semaphore.semaphore} of ${r.semaphore.max}`
            : `${id} is not a holder of ${l.key}; nothing changed`,
        );
      }),
    );

  common(lock.command("set-max"))
    .description(
      "set how many hosts may hold a place at once; holders stay (free may go below 0); repairs a bad value",
    )
    .argument("<n>", "places, 0 or more (0: no host reboots)", intOption("max"))
    .action(
      action(async (max: number, opts: LockCliOptions) => {
        const l = open(opts);
        let previousMax: number | null = null;
        let repaired = false;
        try {
          const before = await l.status();
          previousMax = before.exists ? before.semaphore.max : null;
        } catch (err) {
          if (!(err instanceof LockError && err.code === "REBOOT_LOCK_BAD_VALUE")) throw err;
          repaired = true;
        }
        const s = await l.setMax(max);
        output(opts, { key: l.key, previousMax, repaired, semaphore: s }, () => {
          const was = repaired
            ? "was a bad value, rewritten"
            : previousMax === null
              ? "created"
              : `was ${previousMax}`;
          return `${l.key}: max ${s.max} (${was}), free ${s.semaphore}, ${s.holders.length} holder(s)`;
        });
      }),
    );
}
