/**
 * A throwaway PostgreSQL server for tests: Debian's `postgresql` binaries,
 * `initdb` into a temporary directory, listening on 127.0.0.1 at a free port
 * (and a socket in that directory), no fsync, stopped and removed by `stop()`.
 * As root it runs as the `postgres` user (the server refuses root).
 *
 *   const pg = await startPostgres();   // pg.url: postgres://abforge@127.0.0.1:PORT/abforge
 *   ...
 *   await pg.stop();
 */
import { execFile } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { freePort } from "./net.ts";

const run = promisify(execFile);

export interface Postgres {
  url: string;
  /** A new empty database on this server: its URL. */
  createDatabase(name: string): Promise<string>;
  stop(): Promise<void>;
}

/** The binaries of the newest installed major version (/usr/lib/postgresql/N/bin). */
export function postgresBin(): string {
  const root = "/usr/lib/postgresql";
  const majors = existsSync(root)
    ? readdirSync(root)
        .filter((d) => /^\d+$/.test(d))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  const bin = majors.map((m) => join(root, m, "bin")).find((b) => existsSync(join(b, "initdb")));
  if (!bin)
    throw new Error("PostgreSQL is not installed (scripts/setup.sh installs Debian's postgresql)");
  return bin;
}

export async function startPostgres(): Promise<Postgres> {
  const bin = postgresBin();
  const dir = mkdtempSync(join(tmpdir(), "abforge-pg-"));
  const data = join(dir, "data");
  const asRoot = process.getuid?.() === 0;
  let uid = 0;
  let gid = 0;
  if (asRoot) {
    const { stdout } = await run("id", ["-u", "postgres"]);
    uid = Number(stdout.trim());
    gid = Number((await run("id", ["-g", "postgres"])).stdout.trim());
    chownSync(dir, uid, gid);
  }
  const as = (cmd: string, args: string[]) =>
    asRoot
      ? run(
          "setpriv",
          [`--reuid=${uid}`, `--regid=${gid}`, "--init-groups", join(bin, cmd), ...args],
          {
            cwd: dir,
          },
        )
      : run(join(bin, cmd), args, { cwd: dir });
  const port = await freePort();
  try {
    await as("initdb", ["-D", data, "-U", "abforge", "-A", "trust", "--no-sync", "-E", "UTF8"]);
    await as("pg_ctl", [
      "-D",
      data,
      "-l",
      join(dir, "server.log"),
      "-w",
      "-t",
      "60",
      "-o",
      `-c listen_addresses=127.0.0.1 -p ${port} -k ${dir} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100`,
      "start",
    ]);
    await as("createdb", ["-h", "127.0.0.1", "-p", String(port), "-U", "abforge", "abforge"]);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const base = `postgres://abforge@127.0.0.1:${port}`;
  let stopped = false;
  return {
    url: `${base}/abforge`,
    async createDatabase(name) {
      await as("createdb", ["-h", "127.0.0.1", "-p", String(port), "-U", "abforge", name]);
      return `${base}/${name}`;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await as("pg_ctl", ["-D", data, "-m", "immediate", "-w", "stop"]).catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
