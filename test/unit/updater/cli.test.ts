// abforge agent, run as an operator runs it (the real binary) on a disk image with --disk.
import { spawn } from "node:child_process";
import { createReadStream } from "node:fs";
import { mkdir, readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readBundleHead } from "../../../src/bundle/index.ts";
import { publish, type RepoServer, serve } from "../../../src/repo/index.ts";
import { ABFORGE, abforge } from "../../helpers/cli.ts";
import {
  type BundleFixture,
  makeBundle,
  makeSlotImage,
  makeUpdateWorld,
  type UpdateWorld,
} from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { readBoot } from "./harness.ts";

let w: UpdateWorld;
let repo: RepoServer;
let untrustedBundle: string;
beforeAll(async () => {
  w = await makeUpdateWorld(tempDir(), { versions: ["0.9.0", "2.0.0"] });
  const img = await makeSlotImage(join(w.dir, "u.img"), {
    version: "2.2.0",
    compatible: w.compatible,
    trustedKeys: [],
  });
  untrustedBundle = (await makeBundle(join(w.dir, "u.bundle"), img, w.untrusted.privateKey)).path;
  const repoDir = join(w.dir, "repo");
  await publish({ repoDir, bundlePath: bundle("2.0.0"), channel: "stable", key: w.key.privateKey });
  repo = await serve({ repoDir, host: "127.0.0.1", port: 0 });
});
afterAll(async () => {
  await repo?.close();
});

const bundle = (v: string) => (w.bundles[v] as BundleFixture).path;

describe("abforge agent --disk", () => {
  it("install, status, mark-good: JSON before and after", async () => {
    const d = await w.freshDisk("cli");
    let r = await abforge(["agent", "status", "--disk", d.path, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      booted: { slot: "A", version: "1.0.0", good: true },
      other: { slot: "B", version: "" },
      progress: null,
      rollbacks: [],
      badVersions: [],
    });

    r = await abforge(["agent", "install", bundle("2.0.0"), "--disk", d.path, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const size = (await stat(bundle("2.0.0"))).size;
    expect(JSON.parse(r.stdout)).toEqual({
      outcome: "installed",
      version: "2.0.0",
      slot: "B",
      rebooting: true,
      bytesFetched: size,
      bundleBytes: size,
    });
    // one JSON log line per step on stderr
    const steps = r.stderr
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { step?: string })
      .filter((l) => l.step);
    expect(steps).toHaveLength(9);

    r = await abforge(["agent", "status", "--disk", d.path, "--json"]);
    expect(JSON.parse(r.stdout)).toMatchObject({
      booted: { slot: "B", version: "2.0.0", good: false, tries: 3 },
      other: { slot: "A", version: "1.0.0", good: true },
      pending: { slot: "B", version: "2.0.0" },
    });

    r = await abforge(["agent", "mark-good", "--disk", d.path, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      action: "marked-good",
      booted: "B",
      version: "2.0.0",
    });

    r = await abforge(["agent", "status", "--disk", d.path]);
    expect(r.stdout).toMatch(/^booted\s+slot B\s+2\.0\.0\s+good$/m);
    expect(r.stdout).toContain(`state      ${d.path}.abforge-state/state.json`);
  });

  it("an install that stops after the idle slot was emptied: slots show and status say so and why", async () => {
    const d = await w.freshDisk("cli-emptied");
    const head = await readBundleHead(createReadStream(bundle("2.0.0")));
    const bytes = Buffer.from(await readFile(bundle("2.0.0")));
    const at = head.layout.slotOffset + 1024 * 1024 + 100; // in chunk 1: chunk 0 is written first
    bytes[at] = (bytes[at] as number) ^ 1;
    const bad = join(w.dir, "bad-chunk-1.bundle");
    await writeFile(bad, bytes);
    let r = await abforge(["agent", "install", bad, "--disk", d.path]);
    expect(r.code).toBe(76);
    r = await abforge(["slots", "show", "--disk", d.path, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const shown = JSON.parse(r.stdout);
    expect(shown.slots.B).toMatchObject({ empty: true, good: false, triesLeft: 0 });
    expect(shown.emptySlot).toMatchObject({
      slot: "B",
      version: "2.0.0",
      failure: { code: "UPDATE_VERIFY_FAILED" },
    });
    r = await abforge(["slots", "show", "--disk", d.path]);
    expect(r.stdout).toMatch(
      /^empty: slot B since \S+ \(not bootable\): the install of 2\.0\.0 stopped at \S+: UPDATE_VERIFY_FAILED: .*chunk 1 /m,
    );
    r = await abforge(["agent", "status", "--disk", d.path]);
    expect(r.stdout).toMatch(/^empty {6}slot B since .*UPDATE_VERIFY_FAILED/m);
    // a good install fills it: neither shows a reason any more
    r = await abforge(["agent", "install", bundle("2.0.0"), "--disk", d.path]);
    expect(r.code, r.stderr).toBe(0);
    r = await abforge(["slots", "show", "--disk", d.path, "--json"]);
    expect(JSON.parse(r.stdout).emptySlot).toBeNull();
  });

  it("a refusal is one line and its own exit code", async () => {
    const d = await w.freshDisk("cli-refuse");
    const r = await abforge(["agent", "install", bundle("0.9.0"), "--disk", d.path]);
    expect(r.code).toBe(71);
    expect(r.stderr.split("\n").filter((l) => l.startsWith("abforge: "))).toEqual([
      "abforge: update 0.9.0 is older than the running 1.0.0; abforge never downgrades",
    ]);
  });

  it("--pubkey adds a trusted key; without it the image's keys decide", async () => {
    const d = await w.freshDisk("cli-pubkey");
    let r = await abforge(["agent", "install", untrustedBundle, "--disk", d.path]);
    expect(r.code).toBe(52); // BUNDLE_UNTRUSTED_KEY
    r = await abforge([
      "agent",
      "install",
      untrustedBundle,
      "--disk",
      d.path,
      "--pubkey",
      w.untrusted.publicKeyPath,
      "--json",
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ outcome: "installed", version: "2.2.0" });
  });

  it("status never writes: a corrupt state file is reported and left; a writing command moves it aside", async () => {
    const d = await w.freshDisk("cli-corrupt");
    const stateDir = join(w.dir, "corrupt-state");
    let r = await abforge(["agent", "status", "--disk", d.path, "--state-dir", stateDir]);
    expect(r.code, r.stderr).toBe(0);
    await expect(readdir(stateDir)).rejects.toMatchObject({ code: "ENOENT" }); // nothing made
    await mkdir(stateDir);
    await writeFile(join(stateDir, "state.json"), "{ torn");
    r = await abforge(["agent", "status", "--disk", d.path, "--state-dir", stateDir, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).lastError).toMatchObject({ code: "STATE_CORRUPT", old: false });
    expect(await readdir(stateDir)).toEqual(["state.json"]);
    expect(await readFile(join(stateDir, "state.json"), "utf8")).toBe("{ torn");
    r = await abforge(["agent", "mark-good", "--disk", d.path, "--state-dir", stateDir]);
    expect(r.code, r.stderr).toBe(0);
    expect(
      (await readdir(stateDir)).filter((n) => n.startsWith("state.json.corrupt-")),
    ).toHaveLength(1);
    r = await abforge(["agent", "status", "--disk", d.path, "--state-dir", stateDir, "--json"]);
    expect(JSON.parse(r.stdout).lastError).toMatchObject({ code: "STATE_CORRUPT" });
  });

  it("a state file of a newer schema is refused with its own code and never overwritten", async () => {
    const d = await w.freshDisk("cli-newer");
    const stateDir = join(w.dir, "newer-state");
    await mkdir(stateDir);
    const newer = `${JSON.stringify({ schemaVersion: 2, pending: "a shape this agent does not know" })}\n`;
    await writeFile(join(stateDir, "state.json"), newer);
    for (const args of [["status"], ["install", bundle("2.0.0")], ["mark-good"]]) {
      const r = await abforge(["agent", ...args, "--disk", d.path, "--state-dir", stateDir]);
      expect(r.code, r.stderr).toBe(82); // STATE_SCHEMA_NEWER
      expect(r.stderr).toMatch(/has schema 2, newer than the 1 this agent knows/);
    }
    expect(await readdir(stateDir)).toEqual(["state.json"]);
    expect(await readFile(join(stateDir, "state.json"), "utf8")).toBe(newer);
    expect((await readBoot(d.path)).slots.B.version).toBe(""); // nothing installed
  });

  it("run: checks at once, installs, and stops cleanly on SIGTERM", async () => {
    const d = await w.freshDisk("cli-run");
    const config = join(w.dir, "agent.yaml");
    await writeFile(
      config,
      [
        `repoUrl: ${repo.url}`,
        "channel: stable",
        "pollIntervalMs: 600000",
        "pollJitterMs: 1000",
        "reboot: manual",
        `trustedKeys: [${w.key.publicKeyPath}]`,
        `compatible: ${w.compatible}`,
      ].join("\n"),
    );
    const child = spawn(ABFORGE, ["agent", "run", "--disk", d.path, "--config", config], {
      env: { ...process.env, ABFORGE_LOG_FORMAT: "json" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    const installed = new Promise<void>((resolve) => {
      child.stderr.on("data", (b: Buffer) => {
        stderr += b.toString();
        if (stderr.includes("reboot strategy is off")) resolve();
      });
    });
    const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
    await installed;
    child.kill("SIGTERM");
    expect(await exited).toBe(0);
    const msgs = stderr
      .split("\n")
      .filter(Boolean)
      .map((l) => (JSON.parse(l) as { msg: string }).msg);
    expect(msgs).toContain("installed 2.0.0 into slot B; it boots next (3 tries)");
    expect(msgs.at(-1)).toBe("agent stopped");
  });

  it("run with a config that cannot work exits with the config's code, not a retry loop", async () => {
    const d = await w.freshDisk("cli-run-bad");
    const noRepo = join(w.dir, "no-repo.yaml");
    await writeFile(noRepo, `trustedKeys: [${w.key.publicKeyPath}]\n`);
    const invalid = join(w.dir, "invalid.yaml");
    await writeFile(invalid, "pollIntervalMs: soon\n");
    for (const config of [noRepo, invalid]) {
      const r = await abforge(["agent", "run", "--disk", d.path, "--config", config]);
      expect(r.code, r.stderr).toBe(70); // CONFIG_INVALID
      expect(r.stderr.split("\n").filter((l) => l.startsWith("abforge: "))).toHaveLength(1);
      expect(r.stderr).not.toMatch(/^\s+at /m); // no stack trace
    }
  });
});
