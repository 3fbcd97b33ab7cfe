// One failure, one code (issue 11, point 6; src/fileio.ts): no space is
// DISK_FULL in every module, other system errors are IO_ERROR (or the state
// directory's and the lock's own codes), bugs pass through as bugs, and
// nothing is lost or left behind when a write fails. Real file systems: a
// tmpfs that fills up, one mounted read-only.
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { bootedSlot, newEnvLines, writeEnvFile } from "../../../src/bootloader/index.ts";
import { BaseError } from "../../../src/errors.ts";
import { ioCodeFor, ioStep, replaceFile, unlessMissing } from "../../../src/fileio.ts";
import { initialAgentState, RootImageFiles, StateStore } from "../../../src/updater/index.ts";
import { acquireLock } from "../../../src/updater/lock.ts";
import { formatVerity } from "../../../src/verity/index.ts";
import { abforge } from "../../helpers/cli.ts";
import { makeUpdateWorld } from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { fill, tmpfs } from "../../helpers/tmpfs.ts";

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (err instanceof BaseError) return err.code;
    return `untyped ${(err as Error).name}: ${(err as Error).message}`;
  }
  return "no error";
}

describe("errno to code, once", () => {
  it("maps no space and quota to DISK_FULL, the rest to IO_ERROR", () => {
    expect(ioCodeFor("ENOSPC")).toBe("DISK_FULL");
    expect(ioCodeFor("EDQUOT")).toBe("DISK_FULL");
    for (const e of ["EIO", "EROFS", "EACCES", "ENOTDIR", undefined])
      expect(ioCodeFor(e)).toBe("IO_ERROR");
  });

  it("ioStep types system errors and lets bugs and typed errors through untouched", async () => {
    const bug = new TypeError("x is not a function");
    await expect(ioStep("do a thing", () => Promise.reject(bug))).rejects.toBe(bug);
    const typed = new BaseError("SOMETHING", "already typed");
    await expect(ioStep("do a thing", () => Promise.reject(typed))).rejects.toBe(typed);
    const eio = Object.assign(new Error("EIO: i/o error, read"), { code: "EIO" });
    await expect(ioStep("read /x", () => Promise.reject(eio))).rejects.toMatchObject({
      code: "IO_ERROR",
      message: "cannot read /x: EIO: i/o error, read",
      details: { errno: "EIO" },
    });
  });
});

describe("a full file system", () => {
  it("replaceFile: DISK_FULL, the old file whole, no temp file left", async () => {
    const dir = tmpfs(64);
    const path = join(dir, "f");
    writeFileSync(path, "old content\n");
    fill(dir);
    const before = readdirSync(dir).length;
    expect(await codeOf(replaceFile(path, Buffer.alloc(64 * 1024, 1)))).toBe("DISK_FULL");
    expect(readFileSync(path, "utf8")).toBe("old content\n");
    expect(readdirSync(dir)).toHaveLength(before);
  });

  it("replaceFile gives the new file exactly the mode asked for, whatever the umask", async () => {
    const dir = tempDir();
    const old = process.umask(0o077);
    try {
      await replaceFile(join(dir, "g"), "x", { mode: 0o644 });
    } finally {
      process.umask(old);
    }
    expect(statSync(join(dir, "g")).mode & 0o777).toBe(0o644);
  });

  it("the agent's state file: DISK_FULL, the previous state kept", async () => {
    const dir = tmpfs(64);
    const store = new StateStore(join(dir, "state"));
    await store.save({ ...initialAgentState(), badVersions: ["1.0.0"] });
    fill(dir);
    const big = {
      ...initialAgentState(),
      badVersions: Array.from({ length: 9000 }, (_, i) => `9.9.${i}`),
    };
    expect(await codeOf(store.save(big))).toBe("DISK_FULL");
    expect(await store.load()).toMatchObject({ badVersions: ["1.0.0"] });
    expect(readdirSync(join(dir, "state"))).toEqual(["state.json"]);
  });

  it("verity's hash file: DISK_FULL (it was IO_ERROR there only)", async () => {
    const data = join(tempDir(), "data");
    writeFileSync(data, Buffer.alloc(8 * 1024 * 1024, 7)); // a 64 KiB tree
    const dir = tmpfs(16);
    expect(await codeOf(formatVerity({ dataPath: data, hashPath: join(dir, "hash") }))).toBe(
      "DISK_FULL",
    );
  });

  it("the bootloader's environment block file: DISK_FULL", async () => {
    const dir = tmpfs(16);
    fill(dir);
    expect(await codeOf(writeEnvFile(join(dir, "grubenv"), newEnvLines()))).toBe("DISK_FULL");
  });
});

describe("a state directory the agent cannot use", () => {
  it("read-only: saving is STATE_UNAVAILABLE, taking the lock is LOCK_FAILED", async () => {
    const dir = tmpfs(64, { readOnly: true });
    expect(await codeOf(new StateStore(dir).save(initialAgentState()))).toBe("STATE_UNAVAILABLE");
    expect(await codeOf(acquireLock(dir))).toBe("LOCK_FAILED");
  });

  it("a state file that cannot be read is STATE_UNAVAILABLE, not corrupt and not moved", async () => {
    const dir = tempDir();
    mkdirSync(join(dir, "state.json")); // EISDIR on read
    const store = new StateStore(dir);
    expect(await codeOf(store.read())).toBe("STATE_UNAVAILABLE");
    expect(await codeOf(store.load())).toBe("STATE_UNAVAILABLE");
    expect(statSync(join(dir, "state.json")).isDirectory()).toBe(true);
  });

  it("a state directory path that is a file: listing temps is STATE_UNAVAILABLE, not an empty list", async () => {
    const file = join(tempDir(), "not-a-dir");
    writeFileSync(file, "");
    expect(await codeOf(new StateStore(join(file, "sub")).removeStaleTemps())).toBe(
      "STATE_UNAVAILABLE",
    );
  });

  it("the CLI exits with the state directory's own code and one line, no stack", async () => {
    const dir = tmpfs(64, { readOnly: true });
    const w = await makeUpdateWorld(tempDir(), { versions: [] });
    const r = await abforge(["agent", "mark-good", "--disk", w.disk.path, "--state-dir", dir]);
    expect(r.code, r.stderr).toBe(88);
    expect(r.stderr).toMatch(/cannot write the state file .*EROFS/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});

describe("a catch-all never takes a failure for 'not there'", () => {
  it("unlessMissing: ENOENT gives the fallback, anything else is thrown typed", async () => {
    const enoent = Object.assign(new Error("ENOENT: no such file"), { code: "ENOENT" });
    const eacces = Object.assign(new Error("EACCES: permission denied"), { code: "EACCES" });
    expect(await unlessMissing("read /x", Promise.reject(enoent), "none")).toBe("none");
    await expect(unlessMissing("read /x", Promise.reject(eacces), "none")).rejects.toMatchObject({
      code: "IO_ERROR",
      details: { errno: "EACCES" },
    });
  });

  it("the image's keys directory that cannot be listed is an I/O error, not 'no trusted keys'", async () => {
    const root = tempDir();
    mkdirSync(join(root, "etc/abforge"), { recursive: true });
    writeFileSync(join(root, "etc/abforge/keys"), "not a directory");
    expect(await codeOf(new RootImageFiles(root).trustedKeys())).toBe("IO_ERROR");
    expect(await new RootImageFiles(tempDir()).trustedKeys()).toEqual([]);
  });

  it("a /proc/cmdline that cannot be read is an I/O error, not 'not booted by abforge'", async () => {
    const root = tempDir();
    mkdirSync(join(root, "proc/cmdline"), { recursive: true }); // EISDIR on read
    expect(await codeOf(bootedSlot(root))).toBe("IO_ERROR");
    expect(await bootedSlot(tempDir())).toBeNull();
  });
});
