/**
 * The pieces around a VM that the update scenario needs, shared by the
 * end-to-end test and scripts/demo.ts: the real `abforge` binary, a
 * repository served by `abforge repo serve` on 127.0.0.1, and publishing.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

export const ABFORGE_BIN = fileURLToPath(new URL("../bin/abforge", import.meta.url));

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run `abforge ARGS` to completion. */
export function abforgeCommand(
  args: readonly string[],
  env: NodeJS.ProcessEnv = {},
): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(ABFORGE_BIN, args, {
      env: { ...process.env, ABFORGE_LOG_FORMAT: "json", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code: code ?? 128, stdout, stderr }));
  });
}

/** `abforge repo publish` to channel `stable`; throws with the tool's message on failure. */
export async function publishBundle(
  repoDir: string,
  bundle: string,
  key: string,
  channel = "stable",
): Promise<void> {
  const r = await abforgeCommand([
    "repo",
    "publish",
    bundle,
    "--repo",
    repoDir,
    "--channel",
    channel,
    "--key",
    key,
  ]);
  if (r.code !== 0)
    throw new Error(`repo publish ${bundle} failed (exit ${r.code}): ${r.stderr.trim()}`);
}

export interface ServedRepo {
  port: number;
  url: string;
  process: ChildProcess;
  stop(): void;
}

/** Start `abforge repo serve` on a free loopback port. */
export function serveRepo(repoDir: string): Promise<ServedRepo> {
  const child = spawn(
    ABFORGE_BIN,
    ["repo", "serve", "--repo", repoDir, "--port", "0", "--host", "127.0.0.1"],
    {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ABFORGE_LOG_FORMAT: "json" },
    },
  );
  let out = "";
  return new Promise((resolve, reject) => {
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /http:\/\/127\.0\.0\.1:(\d+)\S*/.exec(out);
      if (m) {
        resolve({
          port: Number(m[1]),
          url: m[0],
          process: child,
          stop: () => child.kill("SIGTERM"),
        });
      }
    });
    child.on("exit", (code) =>
      reject(new Error(`repo serve exited (${code}) before serving: ${out}`)),
    );
  });
}

/** The banner the guest prints after switch_root. */
export const BANNER = /abforge: booted slot (A|B) version (\S+) roothash ([0-9a-f]{64})/;
/** The root shell's prompt on ttyS0. */
export const PROMPT = /abforge:[^\n]*# /;
