/**
 * Health checks (README.md, "After boot"): each check is a command run as a
 * child process with its own timeout. It passes when it exits 0 in time; a
 * check that runs out of time is killed (its whole process group) and fails.
 */
import { spawn } from "node:child_process";
import { type Clock, systemClock } from "../clock.ts";
import type { HealthCheckConfig } from "../image/index.ts";

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
