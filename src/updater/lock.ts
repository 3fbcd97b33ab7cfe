/**
 * One agent at a time per state directory (README.md, "State file"): the
 * commands that change the disk or the state (run, check, install,
 * mark-good) hold `<stateDir>/agent.lock`, created exclusively and holding
 * `<pid> <boot id>`. A lock whose process is gone, or was taken before the
 * last boot, is stale and taken over. `status` only reads and takes no lock.
 */
import { mkdir, open, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { errnoOf, ioCodeFor, ioError, systemCause } from "../fileio.ts";
import { UpdaterError } from "./errors.ts";

export const LOCK_FILE_NAME = "agent.lock";

async function bootId(): Promise<string> {
  return (await readFile("/proc/sys/kernel/random/boot_id", "utf8").catch(() => "unknown")).trim();
}

/** Whether a process with this pid exists (EPERM: it does, owned by someone else). */
export function isAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

export interface AgentLock {
  release(): Promise<void>;
}

/** The lock file's content, or "" when there is none. */
async function readHolder(path: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (err) {
    if (errnoOf(err) === "ENOENT") return "";
    throw lockFailed(path, "read", err);
  }
}

/** A lock that cannot be created, read or removed: no space is DISK_FULL, the rest LOCK_FAILED. */
function lockFailed(path: string, what: string, err: unknown): Error {
  const sys = systemCause(err);
  if (!sys) return err as Error;
  if (ioCodeFor(sys.code) === "DISK_FULL")
    return ioError(`${what} the lock ${path}`, sys, { path });
  return new UpdaterError(
    "LOCK_FAILED",
    `cannot ${what} the agent's lock ${path}: ${sys.message}; the agent needs ${dirnameOf(path)} writable`,
    { cause: sys, details: { path, errno: sys.code } },
  );
}

function dirnameOf(path: string): string {
  return path.slice(0, path.lastIndexOf("/")) || "/";
}

export async function acquireLock(stateDir: string): Promise<AgentLock> {
  const path = join(stateDir, LOCK_FILE_NAME);
  try {
    await mkdir(stateDir, { recursive: true });
  } catch (err) {
    throw lockFailed(path, "create", err);
  }
  const me = `${process.pid} ${await bootId()}`;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(path, "wx", 0o600);
      try {
        await fh.writeFile(`${me}\n`);
      } finally {
        await fh.close();
      }
      return {
        async release() {
          const now = await readHolder(path);
          if (now.trim() === me) await rm(path, { force: true });
        },
      };
    } catch (err) {
      if (errnoOf(err) !== "EEXIST") {
        // a lock file we created but could not fill is ours to remove
        if (errnoOf(err) !== undefined) await rm(path, { force: true }).catch(() => undefined);
        throw lockFailed(path, "create", err);
      }
    }
    const [pid = "", boot = ""] = (await readHolder(path)).trim().split(" ");
    if (boot === (await bootId()) && isAlive(Number(pid)))
      throw new UpdaterError(
        "UPDATE_REFUSED",
        `another abforge agent (pid ${pid}) is working with ${stateDir} (lock ${path}); stop it or wait for it`,
        { details: { lock: path, pid: Number(pid) } },
      );
    try {
      await rm(path, { force: true });
    } catch (err) {
      throw lockFailed(path, "remove the stale", err);
    }
  }
  throw new UpdaterError(
    "UPDATE_REFUSED",
    `cannot take the lock ${path}: another agent keeps taking it`,
  );
}
