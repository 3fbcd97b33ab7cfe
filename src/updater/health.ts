/**
 * Health checks (README.md, "After boot"): each check is a command run as a
 * child process with its own timeout; the built-in ones ("Built-in checks")
 * run their commands the same way. It passes when it exits 0 in time; a
 * check that runs out of time is killed (its whole process group) and fails.
 */
import { spawn } from "node:child_process";
import { type Clock, systemClock } from "../clock.ts";
import type { AgentConfig, BuiltinCheck, HealthCheckConfig } from "../image/index.ts";

export interface HealthResult {
  name: string;
  ok: boolean;
  /** Exit code, or null when killed or not started. */
  exitCode: number | null;
  timedOut: boolean;
  durationMs: number;
  /** Last lines of stdout+stderr, for the log. */
  output: string;
  error?: string;
  /** A built-in check (its `error` says what it found, e.g. the failed units). */
  builtin?: true;
}

/** Runs one check (the seam the tests and the agent share). */
export interface HealthRunner {
  run(check: HealthCheckConfig): Promise<HealthResult>;
}

const OUTPUT_TAIL_BYTES = 2048;

export class ProcessHealthRunner implements HealthRunner {
  readonly #clock: Clock;
  /** `clock` times the checks and their timeouts (src/clock.ts). */
  constructor(clock: Clock = systemClock) {
    this.#clock = clock;
  }

  run(check: HealthCheckConfig): Promise<HealthResult> {
    const clock = this.#clock;
    const started = clock.monotonicMs();
    return new Promise((resolve) => {
      const [cmd, ...args] = check.command as [string, ...string[]];
      const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], detached: true });
      let output = "";
      let timedOut = false;
      const collect = (d: Buffer) => {
        output = (output + d.toString("utf8")).slice(-OUTPUT_TAIL_BYTES);
      };
      child.stdout.on("data", collect);
      child.stderr.on("data", collect);
      const timer = clock.timer(check.timeoutMs, () => {
        timedOut = true;
        killGroup(child.pid);
      });
      const done = (exitCode: number | null, error?: string) => {
        timer.cancel();
        resolve({
          name: check.name,
          ok: exitCode === 0 && !timedOut && error === undefined,
          exitCode,
          timedOut,
          durationMs: clock.monotonicMs() - started,
          output: output.trim(),
          ...(error === undefined ? {} : { error }),
        });
      };
      child.on("error", (e) => done(null, e.message));
      child.on("close", (code) => done(timedOut ? null : code));
    });
  }
}

function killGroup(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // already gone
  }
}

/** Run every check in order (all of them, so the log shows each result). */
export async function runHealthChecks(
  checks: readonly HealthCheckConfig[],
  runner: HealthRunner,
): Promise<HealthResult[]> {
  const results: HealthResult[] = [];
  for (const c of checks) results.push(await runner.run(c));
  return results;
}

/** Each systemctl query of a built-in check. */
const SYSTEMCTL_TIMEOUT_MS = 30_000;
/** `systemctl is-system-running` words that pass: `starting` while the boot transaction that runs the check still runs. */
const PASSING_STATES = new Set(["running", "starting"]);

/**
 * Failed units that say nothing about the running slot's health: the update
 * check fails when the repository cannot be reached (the agent's status says
 * why), and growing the state partition is best effort. Counting them would
 * let a repository outage, not the release, refuse a new slot.
 */
export const NOT_THE_SLOTS_HEALTH: ReadonlySet<string> = new Set([
  "abforge-update.service",
  "abforge-grow-state.service",
]);

/**
 * Built-in `no-failed-units` (README.md, "Built-in checks"): systemd's
 * state is `running` or `starting`, and `systemctl --failed` lists no unit.
 * Not `is-system-running --wait`: from a unit of the boot transaction
 * (`abforge-mark-good.service`) it would wait for its own job to end; and
 * while that job runs, systemd says `starting` even when a unit failed, so
 * the failed list is what decides. Both commands go through the runner (its
 * timeouts, its process groups).
 */
async function noFailedUnits(runner: HealthRunner): Promise<HealthResult> {
  const name = "no-failed-units";
  const state = await runner.run({
    name,
    command: ["systemctl", "is-system-running"],
    timeoutMs: SYSTEMCTL_TIMEOUT_MS,
  });
  if (state.timedOut || state.error !== undefined) return { ...state, ok: false, builtin: true };
  const word = state.output.split("\n").at(-1)?.trim() ?? "";
  const failed = await runner.run({
    name,
    command: ["systemctl", "--failed", "--no-legend", "--plain"],
    timeoutMs: SYSTEMCTL_TIMEOUT_MS,
  });
  const durationMs = state.durationMs + failed.durationMs;
  if (failed.timedOut || failed.error !== undefined || failed.exitCode !== 0)
    return {
      ...failed,
      ok: false,
      builtin: true,
      durationMs,
      error:
        failed.error ??
        `systemctl --failed: ${failed.timedOut ? "timed out" : `exit ${failed.exitCode}`}`,
    };
  const all = failedUnits(failed.output);
  const units = all.filter((u) => !NOT_THE_SLOTS_HEALTH.has(u));
  // degraded only by units that say nothing of the slot's health passes.
  const stateOk =
    PASSING_STATES.has(word) || (word === "degraded" && all.length > 0 && units.length === 0);
  const problems = [
    ...(stateOk ? [] : [`system state ${word || "(none)"}`]),
    ...(units.length > 0 ? [`failed units: ${units.join(", ")}`] : []),
  ];
  return {
    name,
    ok: problems.length === 0,
    exitCode: problems.length === 0 ? 0 : state.exitCode,
    timedOut: false,
    durationMs,
    output: [`system state ${word}`, ...failed.output.split("\n").filter((l) => l.trim())].join(
      "\n",
    ),
    ...(problems.length === 0 ? {} : { error: problems.join("; ") }),
    builtin: true,
  };
}

/** The unit names of `systemctl --failed --no-legend --plain` (first column; a `●` marker skipped). */
export function failedUnits(listing: string): string[] {
  return listing
    .split("\n")
    .map((l) => l.trim().replace(/^●\s*/, "").split(/\s+/)[0] ?? "")
    .filter((u) => u !== "");
}

const BUILTINS: Record<BuiltinCheck, (runner: HealthRunner) => Promise<HealthResult>> = {
  "no-failed-units": noFailedUnits,
};

/** The config's `healthChecks` in order, then its `builtinChecks` (all run; the log shows each). */
export async function runConfiguredChecks(
  config: Pick<AgentConfig, "healthChecks" | "builtinChecks">,
  runner: HealthRunner,
): Promise<HealthResult[]> {
  const results = await runHealthChecks(config.healthChecks, runner);
  for (const b of config.builtinChecks) results.push(await BUILTINS[b](runner));
  return results;
}

/** How many checks `runConfiguredChecks` runs. */
export function checkCount(config: Pick<AgentConfig, "healthChecks" | "builtinChecks">): number {
  return config.healthChecks.length + config.builtinChecks.length;
}
