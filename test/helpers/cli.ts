/** Run the real abforge binary, the way an operator does. */
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

export const ABFORGE = fileURLToPath(new URL("../../bin/abforge", import.meta.url));

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function abforge(
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string; input?: string } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(ABFORGE, args, {
      cwd: options.cwd,
      env: { ...process.env, ABFORGE_LOG_FORMAT: "json", ...options.env },
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => {
      stdout += d;
    });
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code: code ?? 128, stdout, stderr }));
    child.stdin.end(options.input ?? "");
  });
}

/** A running abforge: its process, and a wait for a JSON log line on its stderr. */
export interface RunningCli {
  child: ChildProcess;
  /** Resolves with the first JSON log line for which `match` holds (lines seen so far included). */
  logLine(match: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>;
  /** Resolves when it exits. */
  done: Promise<CliResult>;
}

/** Start abforge (JSON logs) without waiting for it, to act while it runs. */
export function startAbforge(
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string } = {},
): RunningCli {
  const child = spawn(ABFORGE, args, {
    cwd: options.cwd,
    env: { ...process.env, ABFORGE_LOG_FORMAT: "json", ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  const lines: Record<string, unknown>[] = [];
  const waiters: {
    match: (l: Record<string, unknown>) => boolean;
    resolve: (l: Record<string, unknown>) => void;
  }[] = [];
  let partial = "";
  child.stdout!.on("data", (d) => {
    stdout += d;
  });
  child.stderr!.on("data", (d) => {
    stderr += d;
    const parts = (partial + d).split("\n");
    partial = parts.pop() ?? "";
    for (const text of parts) {
      if (!text.startsWith("{")) continue;
      const line = JSON.parse(text) as Record<string, unknown>;
      lines.push(line);
      for (const w of [...waiters]) {
        if (w.match(line)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  });
  const done = new Promise<CliResult>((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code) => resolve({ code: code ?? 128, stdout, stderr }));
  });
  return {
    child,
    done,
    logLine(match) {
      const seen = lines.find(match);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        waiters.push({ match, resolve });
        void done.then((r) =>
          reject(
            new Error(`abforge exited (${r.code}) before the log line: ${r.stderr.slice(-2000)}`),
          ),
        );
      });
    },
  };
}

/**
 * Run `cmd args` with stdout and stderr captured together, in the order
 * written; `terminal` runs it on a pseudo-terminal (util-linux `script`), as
 * a person at a terminal sees it. ABFORGE_LOG_FORMAT is unset unless `env`
 * sets it, so the output's format is the one abforge chooses.
 */
export function runCaptured(
  cmd: string,
  args: readonly string[],
  o: { env?: NodeJS.ProcessEnv; terminal?: boolean } = {},
): Promise<{ code: number; out: string }> {
  const quote = (a: string) => `'${a.replace(/'/g, "'\\''")}'`;
  const [file, argv] = o.terminal
    ? ["script", ["-qefc", [cmd, ...args].map(quote).join(" "), "/dev/null"]]
    : [cmd, [...args]];
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, {
      env: { ...process.env, ABFORGE_LOG_FORMAT: undefined, ...o.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    child.stderr.on("data", (d) => {
      out += d;
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code: code ?? 128, out }));
  });
}
