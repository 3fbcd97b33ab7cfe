/**
 * One agent at a time per state directory (README.md, "State file"): the
 * commands that change the disk or the state (run, check, install,
 * mark-good) hold `<stateDir>/agent.lock`, created exclusively and holding
 * `<pid> <boot id>`. A lock whose process is gone, or was taken before the
 * last boot, is stale and taken over. `status` only reads and takes no lock.
 */
import { mkdir, open, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { errText } from "./config.ts";
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

export async function acquireLock(stateDir: string): Promise<AgentLock> {
  await mkdir(stateDir, { recursive: true });
  const path = join(stateDir, LOCK_FILE_NAME);
  const me = `${process.pid} ${await bootId()}`;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(path, "wx", 0o600);
      await fh.writeFile(`${me}\n`);
      await fh.close();
      return {
        async release() {
          const now = await readFile(path, "utf8").catch(() => "");
          if (now.trim() === me) await rm(path, { force: true });
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST")
        throw new UpdaterError("STATE_CORRUPT", `cannot create the lock ${path}: ${errText(err)}`, {
          cause: err,
        });
    }
    const [pid = "", boot = ""] = (await readFile(path, "utf8").catch(() => "")).trim().split(" ");
    if (boot === (await bootId()) && isAlive(Number(pid)))
      throw new UpdaterError(
        "UPDATE_REFUSED",
        `another abforge agent (pid ${pid}) is working with ${stateDir} (lock ${path}); stop it or wait for it`,
        { details: { lock: path, pid: Number(pid) } },
      );
    await rm(path, { force: true });
  }
  throw new UpdaterError(
    "UPDATE_REFUSED",
    `cannot take the lock ${path}: another agent keeps taking it`,
  );
}
