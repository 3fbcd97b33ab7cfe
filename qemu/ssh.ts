/**
 * Reaching a guest over SSH through its `--ssh-port` forward (127.0.0.1 only)
 * with the OpenSSH client: a throwaway key pair, one command, a bounded wait
 * for sshd, and copying a file in. Host keys are not checked (each guest
 * makes new ones at first boot) and never recorded.
 */
import { spawn } from "node:child_process";
import { createReadStream, existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

export interface SshResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface SshKeyPair {
  /** The private key (give it to `ssh`). */
  privateKey: string;
  /** The public key's path. */
  publicKeyPath: string;
  /** The public key line (`ssh-ed25519 AAAA... comment`), for cloud-init's ssh_authorized_keys. */
  publicKey: string;
}

export interface SshOptions {
  /** Kill ssh after this long (code 124 then, as timeout(1)); default 60 s. */
  timeoutMs?: number;
  /** Seconds ssh waits for the TCP connection and handshake (ConnectTimeout); default 10. */
  connectTimeoutSec?: number;
  /** Bytes or a file path to give the remote command on stdin. */
  input?: Uint8Array | string;
  inputFile?: string;
}

function collect(
  cmd: string,
  args: readonly string[],
  o: { timeoutMs: number; input?: Uint8Array | string; inputFile?: string },
): Promise<SshResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let timedOut = false;
    child.stdout.on("data", (d) => {
      stdout += d;
    });
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, o.timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      if (timedOut) stderr += `\n${cmd} killed after ${o.timeoutMs} ms`;
      resolve({ code: timedOut ? 124 : (code ?? 128), stdout, stderr });
    });
    // the remote end may close stdin early; that is its answer, not ours to report
    child.stdin.on("error", () => {});
    if (o.inputFile !== undefined) createReadStream(o.inputFile).pipe(child.stdin);
    else child.stdin.end(o.input ?? "");
  });
}

/** `ssh-keygen -t ed25519 -N ''` into DIR/id_ed25519 (DIR must exist). */
export async function sshKeyPair(dir: string, comment = "abforge-test"): Promise<SshKeyPair> {
  const privateKey = join(dir, "id_ed25519");
  if (!existsSync(privateKey)) {
    const r = await collect(
      "ssh-keygen",
      ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", privateKey],
      { timeoutMs: 30_000 },
    );
    if (r.code !== 0) throw new Error(`ssh-keygen failed (exit ${r.code}): ${r.stderr.trim()}`);
  }
  const publicKeyPath = `${privateKey}.pub`;
  return { privateKey, publicKeyPath, publicKey: readFileSync(publicKeyPath, "utf8").trim() };
}

/** The ssh arguments before the command: key only, no agent, no prompts, no known_hosts. */
export function sshArgs(
  port: number,
  keyPath: string,
  user: string,
  connectTimeoutSec = 10,
): string[] {
  return [
    "-F",
    "/dev/null",
    "-p",
    String(port),
    "-i",
    keyPath,
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "IdentityAgent=none",
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    `ConnectTimeout=${connectTimeoutSec}`,
    "-o",
    "ServerAliveInterval=5",
    "-o",
    "ServerAliveCountMax=3",
    "-l",
    user,
    "127.0.0.1",
  ];
}

/**
 * Run `command` (a shell line, run by the user's login shell) on 127.0.0.1:PORT.
 * Resolves with its exit status (255: ssh itself failed; 124: killed after
 * `timeoutMs`) and output; never rejects for a failing command.
 */
export function ssh(
  port: number,
  keyPath: string,
  user: string,
  command: string,
  o: SshOptions = {},
): Promise<SshResult> {
  return collect("ssh", [...sshArgs(port, keyPath, user, o.connectTimeoutSec), "--", command], {
    timeoutMs: o.timeoutMs ?? 60_000,
    ...(o.input !== undefined ? { input: o.input } : {}),
    ...(o.inputFile !== undefined ? { inputFile: o.inputFile } : {}),
  });
}

export interface WaitForSshOptions {
  /** At most this many tries. */
  attempts: number;
  /** Give up once this much time has passed since the first try. */
  totalMs: number;
  /** Pause between tries (default 2 s). */
  intervalMs?: number;
  /** The command that must succeed (default `true`). */
  command?: string;
  /** Each try's own limit (default: what is left of totalMs, at most 30 s). */
  tryTimeoutMs?: number;
}

/**
 * Retry `ssh ... command` until it exits 0, bounded by both `attempts` and
 * `totalMs`. Resolves with the successful result; rejects with the number of
 * tries and the last result when the bound is reached.
 */
export async function waitForSsh(
  port: number,
  keyPath: string,
  user: string,
  o: WaitForSshOptions,
): Promise<SshResult & { attempts: number }> {
  const started = Date.now();
  let last: SshResult | undefined;
  for (let attempt = 1; attempt <= o.attempts; attempt++) {
    const left = o.totalMs - (Date.now() - started);
    if (left <= 0) break;
    const timeoutMs = Math.min(left, o.tryTimeoutMs ?? 30_000);
    last = await ssh(port, keyPath, user, o.command ?? "true", {
      timeoutMs,
      connectTimeoutSec: Math.max(1, Math.min(10, Math.floor(timeoutMs / 1000))),
    });
    if (last.code === 0) return { ...last, attempts: attempt };
    const pause = Math.min(o.intervalMs ?? 2000, o.totalMs - (Date.now() - started));
    if (attempt < o.attempts && pause > 0) await new Promise((r) => setTimeout(r, pause));
  }
  throw new Error(
    `ssh ${user}@127.0.0.1:${port} did not succeed within ${o.attempts} tries or ${o.totalMs} ms; last: ${
      last ? `exit ${last.code}: ${last.stderr.trim().slice(-500)}` : "no try made"
    }`,
  );
}

/**
 * Copy a local file to `remotePath` on the guest: `cat > path` with the file
 * on stdin (no scp or sftp server needed on the guest). Rejects when it fails.
 */
export async function copyTo(
  port: number,
  keyPath: string,
  user: string,
  localPath: string,
  remotePath: string,
  o: { timeoutMs?: number } = {},
): Promise<void> {
  const quoted = `'${remotePath.replace(/'/g, "'\\''")}'`;
  const r = await ssh(port, keyPath, user, `cat > ${quoted}`, {
    inputFile: localPath,
    timeoutMs: o.timeoutMs ?? 300_000,
  });
  if (r.code !== 0) {
    throw new Error(
      `copying ${localPath} to ${user}@127.0.0.1:${port}:${remotePath} failed (exit ${r.code}): ${r.stderr.trim()}`,
    );
  }
}
