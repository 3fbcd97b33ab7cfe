/**
 * Hostile bundles, through the real CLI: `abforge agent install FILE|URL
 * --disk IMAGE` on the disk of a second update (A runs 1.0.0, good; B holds
 * the previous release 0.9.0, good). Each bundle is refused with its own
 * exit code and a message that says what is wrong, and:
 * - the booted slot A is byte for byte the same, and every guarantee holds
 *   (helpers.ts `checkGuarantees`);
 * - when the fault shows before the first slot byte (tar header, manifest,
 *   signature, version, board, size, the first chunk), slot B and the ESP
 *   (the boot state) are byte for byte the same: nothing was written at all,
 *   and B stays the good fallback;
 * - when it shows later (a bad chunk, a truncation or extra data after some
 *   chunks), B may hold verified chunks but is empty and unbootable, `slots
 *   show` and `agent status` say so and why, and a good bundle installs
 *   afterwards.
 * The URL cases are served by the real repository server.
 */
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RepoServer, serve } from "../../src/repo/index.ts";
import { initialAgentState, StateStore } from "../../src/updater/index.ts";
import {
  makeBundle,
  makeSlotImage,
  makeUpdateWorld,
  type UpdateWorld,
} from "../helpers/fixtures.ts";
import { tempDir } from "../helpers/tmp.ts";
import {
  type BundleParts,
  bundleParts,
  checkGuarantees,
  diskHashes,
  fixTarChecksum,
  readBootState,
  recordFigure,
  runAbforge,
  runCases,
  secondUpdateDisk,
  TAR_END,
  tarEntry,
} from "./helpers.ts";

const MiB = 1024 * 1024;
const DIR = tempDir("abforge-hostile-");
const quiet = pino({ level: "silent" });

let w: UpdateWorld;
let p: BundleParts;
let repo: RepoServer;
let repoDir: string;
const extra: Record<string, string> = {};

beforeAll(async () => {
  w = await makeUpdateWorld(DIR, { versions: ["0.9.0", "2.0.0"] });
  p = await bundleParts((w.bundles["2.0.0"] as { path: string }).path);
  const dir = w.dir;
  const img = (v: string, payloadBytes?: number) =>
    makeSlotImage(join(dir, `x-${v}.img`), {
      version: v,
      compatible: w.compatible,
      trustedKeys: [w.key.publicKey],
      ...(payloadBytes ? { payloadBytes } : {}),
    });
  extra.untrusted = (
    await makeBundle(join(dir, "untrusted.bundle"), await img("2.1.0"), w.untrusted.privateKey)
  ).path;
  extra.otherBoard = (
    await makeBundle(join(dir, "other-board.bundle"), await img("2.2.0"), w.key.privateKey, {
      compatible: "other-board_arm64",
    })
  ).path;
  // 9 MiB of incompressible payload: the slot image does not fit an 8 MiB slot.
  extra.tooLarge = (
    await makeBundle(join(dir, "too-large.bundle"), await img("2.3.0", 9 * MiB), w.key.privateKey)
  ).path;
  repoDir = join(dir, "repo");
  await mkdir(join(repoDir, "bundles"), { recursive: true });
  repo = await serve({ repoDir, host: "127.0.0.1", port: 0, log: quiet });
}, 300_000);

const results: { name: string; code: number; message: string }[] = [];
afterAll(async () => {
  await repo?.close();
  const lines = results.map((r) => `  ${String(r.code).padStart(3)}  ${r.name}: ${r.message}`);
  process.stdout.write(`\nhostile bundles refused: ${results.length}\n${lines.join("\n")}\n`);
  recordFigure("hostile bundles refused", results.length);
});

// ---------------------------------------------------------------- the cases

const flip = (b: Buffer, at: number, bit = 0): Buffer => {
  const c = Buffer.from(b);
  c[at] = (c[at] as number) ^ (1 << bit);
  return c;
};
const cat = (...b: Buffer[]) => Buffer.concat(b);
const man = () => tarEntry("manifest.json", p.manifest);
const sig = () => tarEntry("manifest.sig", p.sig);
const slot = () => tarEntry("slot.img", p.slot);

interface Case {
  name: string;
  /** The bundle's bytes, or the path of a prepared bundle file. */
  bytes: () => Buffer | string;
  code: number;
  message: RegExp;
  /**
   * Where the fault shows:
   * - "head": in the tar head, manifest, signature, the update policy or the
   *   first chunk (install steps 1-3, before step 4 changes the boot state):
   *   no byte of B and no byte of the boot state change;
   * - "data": after some verified chunks were written: B is empty and unbootable.
   */
  stage: "head" | "data";
  /** Serve it over HTTP (`install URL`) instead of a local file. */
  url?: boolean;
  /** Versions recorded as bad in the agent's state file before the run. */
  badVersions?: string[];
}

function cases(): Case[] {
  const M = p.M;
  const s = p.slotOffset;
  const size = p.slot.length;
  const end = p.bytes.length;
  const before = "head";
  const after = "data";
  const c: Case[] = [];
  // Truncated at several offsets.
  for (const [what, at, code, msg, first] of [
    ["in the first tar header", 100, 58, /ends|truncat/i, before],
    ["in manifest.json", 512 + 1000, 58, /ends|truncat/i, before],
    ["in the signature", 1024 + M + 10, 58, /ends|truncat/i, before],
    ["in the slot.img header", 1536 + M + 200, 58, /ends|truncat/i, before],
    ["before the first slot byte", s, 58, /ends at byte \d+.*; nothing written: slot B/, before],
    ["in the first chunk", s + 1000, 58, /ends at byte \d+.*; nothing written: slot B/, before],
    ["in chunk 2", s + MiB + 5000, 75, /chunk 1 /, after],
    ["before the end-of-archive", end - 1024, 75, /ends|truncat|end/i, after],
  ] as const)
    c.push({
      name: `truncated ${what} (at byte ${at})`,
      bytes: () => p.bytes.subarray(0, at),
      code,
      message: msg,
      stage: first,
    });
  c.push(
    {
      name: "truncated in chunk 2, over HTTP",
      bytes: () => p.bytes.subarray(0, s + MiB + 5000),
      code: 75,
      message: /chunk 1 /,
      stage: after,
      url: true,
    },
    // One bit flipped.
    {
      name: "one bit flipped in the slot image's first chunk",
      bytes: () => flip(p.bytes, s + 1000),
      code: 53,
      message: /chunk 0 .*sha256.*; nothing written: slot B and the boot state are as they were/,
      stage: before,
    },
    {
      name: "one bit flipped in the slot image's last chunk",
      bytes: () => flip(p.bytes, s + size - 10, 7),
      code: 76,
      message: /chunk 2|sha256/i,
      stage: after,
    },
    {
      name: "one bit flipped in the slot image's first chunk, over HTTP",
      bytes: () => flip(p.bytes, s + 1000),
      code: 53,
      message: /chunk 0 .*; nothing written: slot B/,
      stage: before,
      url: true,
    },
    {
      name: "one bit flipped in the manifest's JSON",
      bytes: () => flip(p.bytes, 512 + 40),
      code: 51,
      message: /signature/i,
      stage: before,
    },
    {
      name: "one bit flipped in the manifest's padding",
      bytes: () => flip(p.bytes, 512 + M - 3),
      code: 51,
      message: /signature/i,
      stage: before,
    },
    {
      name: "one bit flipped in the signature",
      bytes: () => flip(p.bytes, 1024 + M + 5),
      code: 51,
      message: /signature/i,
      stage: before,
    },
    {
      name: "signed by an unknown key",
      bytes: () => extra.untrusted as string,
      code: 52,
      message: /not trusted|untrusted/i,
      stage: before,
    },
    {
      name: "signed by an unknown key, over HTTP",
      bytes: () => extra.untrusted as string,
      code: 52,
      message: /not trusted|untrusted/i,
      stage: before,
      url: true,
    },
    {
      name: "signature missing",
      bytes: () => cat(man(), slot(), TAR_END),
      code: 51,
      message: /manifest\.sig|signature/i,
      stage: before,
    },
    {
      name: "signature of the wrong size",
      bytes: () => cat(man(), tarEntry("manifest.sig", p.sig.subarray(0, 32)), slot(), TAR_END),
      code: 51,
      message: /signature|64/i,
      stage: before,
    },
    {
      name: "manifest not the first entry",
      bytes: () => cat(sig(), man(), slot(), TAR_END),
      code: 50,
      message: /manifest\.json/,
      stage: before,
    },
    {
      name: "slot image first",
      bytes: () => cat(slot(), man(), sig(), TAR_END),
      code: 50,
      message: /manifest\.json/,
      stage: before,
    },
    {
      name: "manifest entry twice",
      bytes: () => cat(man(), man(), sig(), slot(), TAR_END),
      code: 51,
      message: /manifest\.sig/,
      stage: before,
    },
    {
      name: "an extra entry after the slot image",
      bytes: () =>
        cat(man(), sig(), slot(), tarEntry("extra.sh", Buffer.from("echo hi\n")), TAR_END),
      code: 76,
      message: /extra|after/i,
      stage: after,
    },
    {
      name: "slot image entry twice",
      bytes: () => cat(man(), sig(), slot(), slot(), TAR_END),
      code: 76,
      message: /extra|after/i,
      stage: after,
    },
    {
      name: "an extra entry between signature and slot image",
      bytes: () => cat(man(), sig(), tarEntry("x", Buffer.from("x")), slot(), TAR_END),
      code: 50,
      message: /slot\.img/,
      stage: before,
    },
    {
      name: "bytes after the end-of-archive",
      bytes: () => cat(p.bytes, Buffer.alloc(512, 0x41)),
      code: 76,
      message: /after|extra|end/i,
      stage: after,
    },
    {
      name: "entry name ../manifest.json",
      bytes: () => cat(tarEntry("../manifest.json", p.manifest), sig(), slot(), TAR_END),
      code: 50,
      message: /\.\.\/manifest\.json/,
      stage: before,
    },
    {
      name: "entry name /manifest.json (absolute)",
      bytes: () => cat(tarEntry("/manifest.json", p.manifest), sig(), slot(), TAR_END),
      code: 50,
      message: /\/manifest\.json/,
      stage: before,
    },
    {
      name: "entry name ../../boot/slot.img",
      bytes: () => cat(man(), sig(), tarEntry("../../boot/slot.img", p.slot), TAR_END),
      code: 50,
      message: /\.\.\/\.\.\/boot\/slot\.img/,
      stage: before,
    },
    {
      name: "slot.img as a symlink",
      bytes: () =>
        cat(
          man(),
          sig(),
          tarEntry("slot.img", Buffer.alloc(0), { type: "2", linkname: "/dev/sda" }),
          TAR_END,
        ),
      code: 50,
      message: /slot\.img|type/i,
      stage: before,
    },
    {
      name: "a pax header renaming the manifest",
      bytes: () =>
        cat(
          tarEntry("PaxHeader", Buffer.from("22 path=manifest.json\n"), { type: "x" }),
          man(),
          sig(),
          slot(),
          TAR_END,
        ),
      code: 50,
      message: /pax|type|PaxHeader/i,
      stage: before,
    },
    {
      name: "a slot image larger than the slot",
      bytes: () => extra.tooLarge as string,
      code: 74,
      message: /partition holds|larger|too large/i,
      stage: before,
    },
    {
      name: "slot.img's tar size field larger than the manifest's",
      bytes: () =>
        cat(man(), sig(), tarEntry("slot.img", p.slot, { headerSize: size + 4096 }), TAR_END),
      code: 50,
      message: /tar header says \d+ bytes, the manifest says/,
      stage: before,
    },
    {
      name: "slot.img's tar size field smaller than the manifest's",
      bytes: () =>
        cat(man(), sig(), tarEntry("slot.img", p.slot, { headerSize: size - 512 }), TAR_END),
      code: 50,
      message: /tar header says \d+ bytes, the manifest says/,
      stage: before,
    },
    {
      name: "manifest.json's tar size field larger than its data",
      bytes: () =>
        cat(tarEntry("manifest.json", p.manifest, { headerSize: M + 512 }), sig(), slot(), TAR_END),
      code: 50,
      message: /entry 2 at byte \d+: tar header checksum/,
      stage: before,
    },
    {
      name: "a size field in base-256 claiming 2^62 bytes",
      bytes: () => {
        const b = Buffer.from(p.bytes);
        const h = 1536 + M;
        b.fill(0, h + 124, h + 136);
        b[h + 124] = 0x80;
        b[h + 128] = 0x40;
        fixTarChecksum(b, h);
        return b;
      },
      code: 50,
      message: /size/i,
      stage: before,
    },
    {
      name: "a bad header checksum",
      bytes: () => {
        const b = Buffer.from(p.bytes);
        b[148] = 0x37;
        return b;
      },
      code: 50,
      message: /checksum/i,
      stage: before,
    },
    {
      name: "random bytes",
      bytes: () => Buffer.from(Array.from({ length: 8192 }, (_, i) => (i * 7919 + 13) % 251)),
      code: 50,
      message: /header|manifest|tar/i,
      stage: before,
    },
    {
      name: "an empty file",
      bytes: () => Buffer.alloc(0),
      code: 58,
      message: /ends|truncat|empty/i,
      stage: before,
    },
    // Signed and well formed, but not for this host.
    {
      name: "a downgrade (0.9.0 while 1.0.0 runs)",
      bytes: () => (w.bundles["0.9.0"] as { path: string }).path,
      code: 71,
      message: /older|downgrade/i,
      stage: before,
    },
    {
      name: "another board's bundle",
      bytes: () => extra.otherBoard as string,
      code: 73,
      message: /other-board_arm64/,
      stage: before,
    },
    {
      name: "a version recorded as bad",
      bytes: () => (w.bundles["2.0.0"] as { path: string }).path,
      code: 72,
      message: /2\.0\.0.*bad|bad.*2\.0\.0|rolled back/i,
      stage: before,
      badVersions: ["2.0.0"],
    },
  );
  return c;
}

// ---------------------------------------------------------------- running one

async function refuse(c: Case, i: number): Promise<void> {
  const d = await secondUpdateDisk(w, `hostile-${i}`);
  const stateDir = join(w.dir, `hostile-${i}.state`);
  if (c.badVersions)
    await new StateStore(stateDir).save({ ...initialAgentState(), badVersions: c.badVersions });
  const made = c.bytes();
  let path: string;
  if (typeof made === "string") path = made;
  else {
    path = join(w.dir, `hostile-${i}.bundle`);
    await writeFile(path, made);
  }
  let source = path;
  if (c.url) {
    const name = `hostile-${i}.bundle`;
    await writeFile(
      join(repoDir, "bundles", name),
      typeof made === "string" ? await readFile(made) : made,
    );
    source = new URL(`bundles/${name}`, repo.url.endsWith("/") ? repo.url : `${repo.url}/`).href;
  }
  const before = await diskHashes(d);
  const bootBefore = await readBootState(d.path);
  const r = await runAbforge([
    "agent",
    "install",
    source,
    "--disk",
    d.path,
    "--state-dir",
    stateDir,
  ]);
  const line = r.proc.errorLine() ?? "";
  expect({ code: r.code, line }).toMatchObject({ code: c.code });
  expect(line, line).toMatch(c.message);
  expect(r.stderr).not.toMatch(/unexpected error|\n\s+at /);
  const after = await diskHashes(d);
  expect(after.A, "booted slot A unchanged").toBe(before.A);
  const g = await checkGuarantees({ disk: d, booted: "A", bootedSha256: before.A, stateDir });
  expect(g.violations).toEqual([]);
  expect(g.next).toBe("A");
  if (c.stage === "head") {
    expect(after.B, "nothing written to slot B").toBe(before.B);
    expect(after.esp, "boot state untouched").toBe(before.esp);
    expect(g.boot?.slots.B, "B is still the good fallback").toEqual(bootBefore.slots.B);
  } else {
    // B is empty and unbootable now, both commands say so and why, and a good bundle
    // installs over whatever was left.
    const empty = { good: false, tries: 0, boots: 0, rootHash: "", verity: "", version: "" };
    expect(g.boot?.slots.B).toEqual(empty);
    const shown = await runAbforge(["slots", "show", "--disk", d.path, "--json"]);
    expect(JSON.parse(shown.stdout).slots.B).toMatchObject({ empty: true, good: false });
    const st = await runAbforge([
      "agent",
      "status",
      "--disk",
      d.path,
      "--state-dir",
      stateDir,
      "--json",
    ]);
    expect(JSON.parse(st.stdout).emptySlot).toMatchObject({
      slot: "B",
      previousVersion: "0.9.0",
      version: "2.0.0",
      failure: { message: line.replace(/^abforge: /, "") },
    });
    const ok = await runAbforge([
      "agent",
      "install",
      (w.bundles["2.0.0"] as { path: string }).path,
      "--disk",
      d.path,
      "--state-dir",
      stateDir,
    ]);
    expect(ok.code, ok.stderr).toBe(0);
    const g2 = await checkGuarantees({ disk: d, booted: "A", bootedSha256: before.A, stateDir });
    expect(g2.violations).toEqual([]);
    expect(g2.next).toBe("B");
  }
  results.push({ name: c.name, code: r.code, message: line.replace(/^abforge: /, "") });
  await rm(d.path, { force: true });
  await rm(stateDir, { recursive: true, force: true });
}

describe("abforge agent install refuses hostile bundles", () => {
  it("refuses each with its own exit code and message; slots and boot state as promised", async () => {
    const all = cases();
    const failures = await runCases(all, refuse, { messageChars: 600 });
    expect(failures).toEqual([]);
    expect(results.length).toBe(all.length);
  });
});
