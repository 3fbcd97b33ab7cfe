// Installing a bundle into the inactive slot (src/updater/README.md, "Install procedure"),
// on a real GPT disk image with a FAT32 ESP, real squashfs + verity slot images, real bundles.
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { copyFile, open, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { readBundleHead } from "../../../src/bundle/index.ts";
import { formatStatus, initialAgentState, StateStore } from "../../../src/updater/index.ts";
import {
  type BundleFixture,
  type DiskFixture,
  makeBundle,
  makeSlotImage,
  makeUpdateWorld,
  readRange,
  secondUpdateDisk as secondUpdate,
  type UpdateWorld,
} from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { REBOOT_OFF, readBoot, testAgent } from "./harness.ts";

const MiB = 1024 * 1024;
let w: UpdateWorld;
const extra = {} as Record<
  "older" | "same" | "incompatible" | "untrusted" | "large",
  BundleFixture
>;

beforeAll(async () => {
  w = await makeUpdateWorld(tempDir());
  const img = (v: string, o: { compatible?: string; payloadBytes?: number } = {}) =>
    makeSlotImage(join(w.dir, `extra-${v}-${o.compatible ?? ""}.img`), {
      version: v,
      compatible: o.compatible ?? w.compatible,
      trustedKeys: [w.key.publicKey],
      ...(o.payloadBytes ? { payloadBytes: o.payloadBytes } : {}),
    });
  extra.older = await makeBundle(join(w.dir, "older.bundle"), await img("0.9.0"), w.key.privateKey);
  extra.same = await makeBundle(join(w.dir, "same.bundle"), await img("1.0.0"), w.key.privateKey);
  extra.incompatible = await makeBundle(
    join(w.dir, "incompatible.bundle"),
    await img("2.1.0", { compatible: "other-board" }),
    w.key.privateKey,
  );
  extra.untrusted = await makeBundle(
    join(w.dir, "untrusted.bundle"),
    await img("2.2.0"),
    w.untrusted.privateKey,
  );
  extra.large = await makeBundle(
    join(w.dir, "large.bundle"),
    await img("2.3.0", { payloadBytes: 9 * MiB }),
    w.key.privateKey,
  );
});

const digest = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** The bytes of both slots and the boot state: what a refusal must leave alone. */
async function snapshot(d: DiskFixture) {
  return {
    A: digest(await readRange(d.path, d.slots.A)),
    B: digest(await readRange(d.path, d.slots.B)),
    boot: await readBoot(d.path),
  };
}

/** A: 1.0.0 (good); B: the previous release 0.9.0 (good), the fallback an install could lose. */
const secondUpdateDisk = (name: string) => secondUpdate(w, name, extra.older);

/** A copy of a bundle with one byte flipped at `offset`. */
async function tampered(src: string, name: string, offset: number): Promise<string> {
  const path = join(w.dir, name);
  await copyFile(src, path);
  const fh = await open(path, "r+");
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, offset);
  b[0] = (b[0] ?? 0) ^ 0xff;
  await fh.write(b, 0, 1, offset);
  await fh.close();
  return path;
}

describe("install from a local bundle file", () => {
  it("writes the inactive slot, verifies it and flips the boot state; the booted slot is untouched", async () => {
    const d = await w.freshDisk("install-ok");
    const before = await snapshot(d);
    const t = await testAgent(d.path);
    const b = w.bundles["2.0.0"] as BundleFixture;
    const r = await t.agent.install(b.path);
    const size = (await stat(b.path)).size;
    expect(r).toEqual({
      outcome: "installed",
      version: "2.0.0",
      slot: "B",
      rebooting: true,
      bytesFetched: size,
      bundleBytes: size,
    });

    // slot B holds exactly the slot image; A did not change
    const written = await readRange(d.path, { offset: d.slots.B.offset, size: b.slot.size });
    expect(digest(written)).toBe(b.manifest.slotImage.sha256);
    expect(digest(await readRange(d.path, d.slots.A))).toBe(before.A);

    // activateSlot: B first, N tries, not good, its root hash, verity params and version
    const boot = await readBoot(d.path);
    const v = b.manifest.verity;
    expect(boot.order).toEqual(["B", "A"]);
    expect(boot.slots.B).toEqual({
      tries: 3,
      good: false,
      boots: 0,
      rootHash: v.rootHash,
      verity: `${v.dataBlocks}:${v.hashStartBlock}:${v.salt}`,
      version: "2.0.0",
    });
    expect(boot.slots.A).toEqual(before.boot.slots.A);

    // one log line per step, in the README's order
    expect(t.lines.filter((l) => typeof l.step === "string").map((l) => l.step)).toEqual([
      "open-bundle",
      "check-update",
      "check-first-chunk",
      "mark-unbootable",
      "write-slot",
      "check-sha256",
      "sync",
      "verify-verity",
      "activate",
    ]);
    expect(t.reboots).toHaveLength(1);
    expect(t.agent.state.pending).toMatchObject({
      slot: "B",
      version: "2.0.0",
      rootHash: v.rootHash,
    });
    expect(t.agent.state.progress).toBeNull();
  });

  it("after the install the image boots the new slot: the same bundle again is up to date", async () => {
    const d = await w.freshDisk("install-twice");
    const t = await testAgent(d.path, { config: { reboot: REBOOT_OFF } });
    await t.agent.install((w.bundles["2.0.0"] as BundleFixture).path);
    const before = await snapshot(d);
    expect(await t.agent.install((w.bundles["2.0.0"] as BundleFixture).path)).toEqual({
      outcome: "up-to-date",
      version: "2.0.0",
    });
    expect(await snapshot(d)).toEqual(before);
  });

  it("on a host still running A, a second install of the pending version writes nothing", async () => {
    const d = await w.freshDisk("install-pending");
    const stillA = { bootedSlot: async () => "A" as const };
    const t = await testAgent(d.path, {
      config: { reboot: REBOOT_OFF },
      overrides: { bootedSlot: stillA },
    });
    await t.agent.install((w.bundles["2.0.0"] as BundleFixture).path);
    const before = await snapshot(d);
    expect(await t.agent.install((w.bundles["2.0.0"] as BundleFixture).path)).toEqual({
      outcome: "pending-reboot",
      version: "2.0.0",
      slot: "B",
      rebooting: false,
      waiting: expect.objectContaining({ for: "operator", version: "2.0.0" }),
    });
    expect(await snapshot(d)).toEqual(before);
  });

  it("trusts only the keys given with --pubkey: the image's own key no longer counts", async () => {
    const pubkeys = [{ key: w.untrusted.publicKey, source: "--pubkey other.pub" }];
    const d = await w.freshDisk("install-pubkey-only");
    const before = await snapshot(d);
    const t = await testAgent(d.path, { overrides: { pubkeys } });
    await expect(t.agent.install((w.bundles["2.0.0"] as BundleFixture).path)).rejects.toMatchObject(
      {
        code: "BUNDLE_UNTRUSTED_KEY",
      },
    );
    expect(await snapshot(d)).toEqual(before);
    const d2 = await w.freshDisk("install-pubkey");
    const t2 = await testAgent(d2.path, { overrides: { pubkeys } });
    expect(await t2.agent.install(extra.untrusted.path)).toMatchObject({
      outcome: "installed",
      version: "2.2.0",
    });
  });

  it("the same version as the running one is nothing to do", async () => {
    const d = await w.freshDisk("install-same");
    const before = await snapshot(d);
    const t = await testAgent(d.path);
    expect(await t.agent.install(extra.same.path)).toEqual({
      outcome: "up-to-date",
      version: "1.0.0",
    });
    expect(await snapshot(d)).toEqual(before);
  });
});

describe("refusals leave both slots and the boot state as they were", () => {
  const cases: [string, () => string | Promise<string>, string][] = [
    ["a downgrade", () => extra.older.path, "UPDATE_DOWNGRADE"],
    ["another board's bundle", () => extra.incompatible.path, "UPDATE_INCOMPATIBLE"],
    ["a slot image larger than the partition", () => extra.large.path, "UPDATE_TOO_LARGE"],
    ["a bundle signed by an untrusted key", () => extra.untrusted.path, "BUNDLE_UNTRUSTED_KEY"],
    [
      "a bundle whose signature was altered",
      async () => {
        const head = await readBundleHead(
          createReadStream((w.bundles["2.0.0"] as BundleFixture).path),
        );
        return tampered(
          (w.bundles["2.0.0"] as BundleFixture).path,
          "bad-sig.bundle",
          (head.layout.entries[1]?.dataOffset ?? 0) + 5,
        );
      },
      "BUNDLE_BAD_SIGNATURE",
    ],
    [
      "a bundle whose manifest was altered",
      () => tampered((w.bundles["2.0.0"] as BundleFixture).path, "bad-manifest.bundle", 512 + 30),
      "BUNDLE_BAD_SIGNATURE",
    ],
    [
      "a version recorded as bad",
      () => (w.bundles["2.0.0"] as BundleFixture).path,
      "UPDATE_BAD_VERSION",
    ],
  ];
  it.each(cases)("%s → %s", async (name, bundle, code) => {
    const d = await w.freshDisk(`refuse-${name.replace(/\W+/g, "-")}`);
    if (code === "UPDATE_BAD_VERSION")
      await new StateStore(`${d.path}.abforge-state`).save({
        ...initialAgentState(),
        badVersions: ["2.0.0"],
      });
    const before = await snapshot(d);
    const t = await testAgent(d.path);
    await expect(t.agent.install(await bundle())).rejects.toMatchObject({ code });
    expect(await snapshot(d)).toEqual(before);
    expect(t.agent.state.lastError).toMatchObject({ code });
  });

  it("refuses to overwrite the fallback while the booted slot is not marked good", async () => {
    const d = await w.freshDisk("refuse-fallback");
    const t = await testAgent(d.path, { config: { reboot: REBOOT_OFF } });
    await t.agent.install((w.bundles["2.0.0"] as BundleFixture).path); // B boots next, on trial
    const before = await snapshot(d);
    const err = await t.agent
      .install((w.bundles["3.0.0"] as BundleFixture).path)
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "UPDATE_REFUSED" });
    expect((err as Error).message).toMatch(/slot B .* not yet marked good; slot A is its fallback/);
    expect(await snapshot(d)).toEqual(before);
  });

  it("a bad first chunk costs nothing: the fallback's bytes and the boot state stay as they were", async () => {
    const d = await secondUpdateDisk("refuse-bad-first-chunk");
    const b = w.bundles["2.0.0"] as BundleFixture;
    const head = await readBundleHead(createReadStream(b.path));
    const bad = await tampered(b.path, "bad-first-chunk.bundle", head.layout.slotOffset + 100);
    const before = await snapshot(d);
    expect(before.boot.slots.B).toMatchObject({ version: "0.9.0", good: true });
    const t = await testAgent(d.path);
    const err = await t.agent.install(bad).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "BUNDLE_BAD_HASH" });
    expect((err as Error).message).toMatch(
      /chunk 0 .*; nothing written: slot B and the boot state are as they were$/,
    );
    expect(await snapshot(d)).toEqual(before);
    expect(t.agent.state).toMatchObject({ progress: null, emptySlot: null });
    expect(t.lines.filter((l) => typeof l.step === "string").map((l) => l.step)).toEqual([
      "open-bundle",
      "check-update",
      "check-first-chunk",
    ]);
  });

  it("a bundle that ends before its first slot byte costs nothing either", async () => {
    const d = await secondUpdateDisk("refuse-truncated-head");
    const b = w.bundles["2.0.0"] as BundleFixture;
    const head = await readBundleHead(createReadStream(b.path));
    const short = join(w.dir, "ends-at-slot.bundle");
    const fh = await open(b.path, "r");
    const bytes = Buffer.alloc(head.layout.slotOffset + 1000);
    await fh.read(bytes, 0, bytes.length, 0);
    await fh.close();
    await writeFile(short, bytes);
    const before = await snapshot(d);
    const t = await testAgent(d.path);
    await expect(t.agent.install(short)).rejects.toMatchObject({ code: "BUNDLE_TRUNCATED" });
    expect(await snapshot(d)).toEqual(before);
  });

  it("a corrupted later chunk is never written; the slot stays empty and unbootable, and status says why", async () => {
    const d = await secondUpdateDisk("refuse-bad-chunk");
    const b = w.bundles["2.0.0"] as BundleFixture;
    const head = await readBundleHead(createReadStream(b.path));
    const bad = await tampered(b.path, "bad-chunk.bundle", head.layout.slotOffset + MiB + 100);
    const before = await snapshot(d);
    const t = await testAgent(d.path);
    await expect(t.agent.install(bad)).rejects.toMatchObject({ code: "UPDATE_VERIFY_FAILED" });
    // chunk 0 was verified and written; chunk 1 (the bad one) was not
    const chunk0 = await readRange(d.path, { offset: d.slots.B.offset, size: MiB });
    expect(digest(chunk0)).toBe(b.manifest.slotImage.chunks[0]);
    const chunk1 = await readRange(d.path, { offset: d.slots.B.offset + MiB, size: MiB });
    expect(digest(chunk1)).toBe(
      digest(await readRange(extra.older.slot.path, { offset: MiB, size: MiB })),
    );
    expect(digest(await readRange(d.path, d.slots.A))).toBe(before.A);
    // the boot state no longer names 0.9.0 for B: its bytes are not that image any more
    const boot = await readBoot(d.path);
    expect(boot.order).toEqual(["A", "B"]);
    expect(boot.slots.A).toEqual(before.boot.slots.A);
    expect(boot.slots.B).toEqual({
      good: false,
      tries: 0,
      boots: 0,
      rootHash: "",
      verity: "",
      version: "",
    });
    // why it is empty, kept for status
    const s = await (await testAgent(d.path, { readOnly: true })).agent.status();
    expect(s.emptySlot).toMatchObject({
      slot: "B",
      previousVersion: "0.9.0",
      version: "2.0.0",
      failure: { code: "UPDATE_VERIFY_FAILED" },
    });
    expect(formatStatus(s)).toMatch(
      /^empty {6}slot B since \S+ \(held 0\.9\.0; not bootable\): the install of 2\.0\.0 stopped at \S+: UPDATE_VERIFY_FAILED: .*chunk 1/m,
    );
    expect(formatStatus(s)).toMatch(/^other {6}slot B {2}\(empty\) {2}not good, 0 tries left$/m);
    // a good bundle installs over it, and the record goes
    await t.agent.install(b.path);
    expect(t.agent.state.emptySlot).toBeNull();
    expect(
      (await (await testAgent(d.path, { readOnly: true })).agent.status()).emptySlot,
    ).toBeNull();
  });
});
