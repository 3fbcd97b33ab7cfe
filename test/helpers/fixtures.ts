/**
 * Small but real update worlds for the updater's unit tests and the fault
 * suite: image files used as block devices, made with the real tools.
 *
 * - `makeSlotImage`: a rootfs directory (the image's /etc/abforge/release.json,
 *   /etc/abforge/keys/<keyid>.pub, and `payloadBytes` of random, incompressible
 *   data) → `mksquashfs` (gzip) → padded to 4096 → src/verity `formatVerity`
 *   with the tree inside the same file (the disk layout contract).
 * - `makeBundle`: src/bundle `writeBundle` of a slot image (signed).
 * - `makeBootDisk`: a GPT disk image (src/disk planDisk + writeGpt): `esp`
 *   (FAT32 by `mkfs.vfat --offset`, `/GRUBENV` copied in by `mcopy`, holding
 *   the initial boot state: A good with the slot image's root hash), `abforge-A`
 *   (the slot image written at its start), `abforge-B` (zeros), `state`. Sparse.
 * - `makeUpdateWorld`: all of it at once, with a trusted and an untrusted key
 *   and bundles for several versions; `freshDisk()` copies the pristine disk
 *   so each test starts from "1.0.0 in A, B empty".
 *
 * Sizes are small (slot partitions of 8 MiB, slot images of a few MiB = a few
 * 1 MiB chunks) so a test file stays well under a minute.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { copyFile, mkdir, open, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import {
  BootDisk,
  bootStateToEnv,
  encodeEnv,
  formatSlotVerity,
  initialBootState,
  type SlotName,
} from "../../src/bootloader/index.ts";
import {
  generateKeyPair,
  hashSlotImage,
  type KeyObject,
  keyId,
  loadPrivateKey,
  loadPublicKey,
  type Manifest,
  writeBundle,
} from "../../src/bundle/index.ts";
import { PARTITION_TYPES, partitionRange, planDisk, writeGpt } from "../../src/disk/index.ts";
import { requireTool } from "../../src/exec.ts";
import { publish, type RepoServer, serve } from "../../src/repo/index.ts";
import { formatVerity, type VerityParams } from "../../src/verity/index.ts";

const MiB = 1024 * 1024;
const execFileP = promisify(execFile);

/**
 * Run a tool with stdin closed (src/exec.ts run() writes to the tool's
 * stdin, which fails with EPIPE when the tool exits first).
 */
export async function tool(name: string, args: readonly string[]): Promise<string> {
  const { stdout } = await execFileP(requireTool(name), args, { encoding: "utf8" });
  return stdout;
}

export interface FixtureKey {
  privateKey: KeyObject;
  publicKey: KeyObject;
  privateKeyPath: string;
  publicKeyPath: string;
  keyId: string;
}

export async function makeKey(dir: string): Promise<FixtureKey> {
  await mkdir(dir, { recursive: true });
  const paths = await generateKeyPair(dir);
  const privateKey = await loadPrivateKey(paths.privateKeyPath);
  const publicKey = await loadPublicKey(paths.publicKeyPath);
  return {
    privateKey,
    publicKey,
    privateKeyPath: paths.privateKeyPath,
    publicKeyPath: paths.publicKeyPath,
    keyId: keyId(publicKey),
  };
}

export interface SlotImageFixture {
  path: string;
  size: number;
  verity: VerityParams;
  version: string;
  compatible: string;
}

export interface SlotImageOptions {
  name?: string;
  version: string;
  compatible: string;
  /** Public keys the image trusts, put at /etc/abforge/keys/<keyid>.pub. */
  trustedKeys: KeyObject[];
  /** Random bytes in /payload.bin (default 2.5 MiB: a slot image of 3 chunks). */
  payloadBytes?: number;
  /** The text of /etc/abforge/agent.yaml (none by default). */
  agentConfig?: string;
}

/** A slot image: squashfs (padded to 4096) + verity superblock and tree in the same file. */
export async function makeSlotImage(path: string, o: SlotImageOptions): Promise<SlotImageFixture> {
  const root = `${path}.root`;
  await mkdir(join(root, "etc/abforge/keys"), { recursive: true });
  const release = { name: o.name ?? "demo", version: o.version, compatible: o.compatible };
  await writeFile(join(root, "etc/abforge/release.json"), `${JSON.stringify(release)}\n`);
  for (const k of o.trustedKeys)
    await writeFile(
      join(root, `etc/abforge/keys/${keyId(k)}.pub`),
      k.export({ type: "spki", format: "pem" }),
    );
  if (o.agentConfig !== undefined)
    await writeFile(join(root, "etc/abforge/agent.yaml"), o.agentConfig);
  await writeFile(join(root, "payload.bin"), randomBytes(o.payloadBytes ?? 2.5 * MiB));
  const { size, verity } = await squashfsWithVerity(root, path, ["-comp", "gzip"]);
  return { path, size, verity, version: o.version, compatible: o.compatible };
}

/**
 * The slot image layout of a tree: squashfs of `root` (with `flags`), padded
 * to 4096, then the verity superblock and tree in the same file.
 */
export async function squashfsWithVerity(
  root: string,
  path: string,
  flags: readonly string[] = [],
): Promise<{ size: number; verity: VerityParams }> {
  await tool("mksquashfs", [
    root,
    path,
    "-noappend",
    ...flags,
    "-all-root",
    "-no-progress",
    "-quiet",
  ]);
  const fh = await open(path, "r");
  const squashSize = (await fh.stat()).size;
  await fh.close();
  const padded = Math.ceil(squashSize / 4096) * 4096;
  await truncate(path, padded);
  const verity = await formatVerity({
    dataPath: path,
    dataSize: padded,
    hashPath: path,
    hashOffset: padded,
  });
  const size = verity.hashOffset + verity.hashAreaSize;
  await truncate(path, size);
  return { size, verity };
}

export interface BundleFixture {
  path: string;
  manifest: Manifest;
  slot: SlotImageFixture;
}

export async function makeBundle(
  path: string,
  slot: SlotImageFixture,
  key: KeyObject,
  o: { name?: string; compatible?: string } = {},
): Promise<BundleFixture> {
  const written = await writeBundle({
    outPath: path,
    key,
    slotImagePath: slot.path,
    manifest: {
      formatVersion: 1,
      name: o.name ?? "demo",
      compatible: o.compatible ?? slot.compatible,
      version: slot.version,
      createdAt: "2026-05-01T12:00:00Z",
      slotImage: await hashSlotImage(slot.path),
      verity: slot.verity,
    },
  });
  return { path, manifest: written.manifest, slot };
}

export interface ByteRange {
  offset: number;
  size: number;
}

export interface DiskFixture {
  path: string;
  esp: ByteRange;
  slots: Record<SlotName, ByteRange>;
  state: ByteRange;
}

/** 34 MiB: with 512-byte clusters, enough clusters (65525) for mtools to take it as FAT32. */
export const ESP_BYTES = 34 * MiB;
export const SLOT_BYTES = 8 * MiB;

/** A GPT disk with the ESP (boot state: A good, running `slotA`), slot A written, slot B zeros. */
export async function makeBootDisk(
  path: string,
  slotA: SlotImageFixture,
  o: { slotBytes?: number } = {},
): Promise<DiskFixture> {
  const slotBytes = o.slotBytes ?? SLOT_BYTES;
  const table = planDisk({
    guidSeed: path,
    partitions: [
      { name: "esp", typeGuid: PARTITION_TYPES.ESP, sizeBytes: ESP_BYTES },
      { name: "abforge-A", typeGuid: PARTITION_TYPES.ROOT_X86_64, sizeBytes: slotBytes },
      { name: "abforge-B", typeGuid: PARTITION_TYPES.ROOT_X86_64, sizeBytes: slotBytes },
      { name: "state", typeGuid: PARTITION_TYPES.LINUX_GENERIC, sizeBytes: MiB },
    ],
  });
  await writeGpt(path, table);
  const [esp, a, b, state] = table.partitions.map((p) => partitionRange(p, table.sectorSize)) as [
    ByteRange,
    ByteRange,
    ByteRange,
    ByteRange,
  ];
  await tool("mkfs.vfat", [
    "-F",
    "32",
    "-s",
    "1",
    "-n",
    "ESP",
    `--offset=${esp.offset / 512}`,
    path,
    String(esp.size / 1024),
  ]);
  const boot = initialBootState({
    rootHash: slotA.verity.rootHash,
    verity: formatSlotVerity({
      dataBlocks: slotA.verity.dataBlocks,
      hashStartBlock: slotA.verity.hashStartBlock,
      salt: slotA.verity.salt,
    }),
    version: slotA.version,
  });
  const envFile = `${path}.GRUBENV`;
  await writeFile(envFile, encodeEnv(bootStateToEnv(boot)));
  await tool("mcopy", ["-i", `${path}@@${esp.offset}`, envFile, "::/GRUBENV"]);
  await copyInto(slotA.path, path, a.offset);
  return { path, esp, slots: { A: a, B: b }, state };
}

/** Copy a whole file into another at a byte offset (a slot image into its partition). */
export async function copyInto(src: string, dest: string, offset: number): Promise<void> {
  const from = await open(src, "r");
  const to = await open(dest, "r+");
  try {
    const buf = Buffer.alloc(MiB);
    let pos = 0;
    for (;;) {
      const { bytesRead } = await from.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      await to.write(buf, 0, bytesRead, offset + pos);
      pos += bytesRead;
    }
  } finally {
    await from.close();
    await to.close();
  }
}

/** Bytes of a file region (e.g. a slot partition), to compare before and after. */
export async function readRange(path: string, r: ByteRange): Promise<Buffer> {
  const fh = await open(path, "r");
  try {
    const buf = Buffer.alloc(r.size);
    await fh.read(buf, 0, r.size, r.offset);
    return buf;
  } finally {
    await fh.close();
  }
}

export interface UpdateWorld {
  dir: string;
  compatible: string;
  key: FixtureKey;
  /** A key the images do not trust. */
  untrusted: FixtureKey;
  /** The pristine disk: 1.0.0 in A (good), B empty. Copy it with freshDisk(). */
  disk: DiskFixture;
  /** Bundles by version, signed by `key`. */
  bundles: Record<string, BundleFixture>;
  /** A copy of the pristine disk for one test. */
  freshDisk(name: string): Promise<DiskFixture>;
}

export interface UpdateWorldOptions {
  compatible?: string;
  /** Versions to make bundles of (signed by the trusted key); default 2.0.0 and 3.0.0. */
  versions?: string[];
  payloadBytes?: number;
  /** Size of each slot partition (default SLOT_BYTES, 8 MiB). */
  slotBytes?: number;
  /** /etc/abforge/agent.yaml in every image, given the trusted key's in-image path. */
  agentConfig?: (trustedKeyPath: string) => string;
}

/** Keys, the 1.0.0 disk, and bundles: the world most updater tests start from. */
export async function makeUpdateWorld(
  dir: string,
  o: UpdateWorldOptions = {},
): Promise<UpdateWorld> {
  const compatible = o.compatible ?? "demo-x86_64";
  const key = await makeKey(join(dir, "key"));
  const untrusted = await makeKey(join(dir, "untrusted"));
  const image = (version: string) =>
    makeSlotImage(join(dir, `slot-${version}.img`), {
      version,
      compatible,
      trustedKeys: [key.publicKey],
      ...(o.payloadBytes ? { payloadBytes: o.payloadBytes } : {}),
      ...(o.agentConfig
        ? { agentConfig: o.agentConfig(`/etc/abforge/keys/${keyId(key.publicKey)}.pub`) }
        : {}),
    });
  const v1 = await image("1.0.0");
  const disk = await makeBootDisk(
    join(dir, "pristine.img"),
    v1,
    o.slotBytes ? { slotBytes: o.slotBytes } : {},
  );
  const bundles: Record<string, BundleFixture> = {};
  for (const v of o.versions ?? ["2.0.0", "3.0.0"])
    bundles[v] = await makeBundle(join(dir, `demo-${v}.bundle`), await image(v), key.privateKey);
  return {
    dir,
    compatible,
    key,
    untrusted,
    disk,
    bundles,
    async freshDisk(name) {
      const path = join(dir, `${name}.img`);
      await copyFile(disk.path, path);
      return { ...disk, path };
    },
  };
}

/**
 * The disk of a second update: A runs `1.0.0` (good), B still holds the
 * previous release (`old`, default the world's `0.9.0` bundle, its image
 * good), so an install must first mark B unbootable: the fallback it could
 * lose.
 */
export async function secondUpdateDisk(
  w: UpdateWorld,
  name: string,
  old: BundleFixture | undefined = w.bundles["0.9.0"],
): Promise<DiskFixture> {
  if (!old) throw new Error("the world has no 0.9.0 bundle: pass the previous release");
  const d = await w.freshDisk(name);
  await copyInto(old.slot.path, d.path, d.slots.B.offset);
  const disk = await BootDisk.open(d.path);
  try {
    const s = await disk.readState();
    const v = old.manifest.verity;
    await disk.writeState({
      ...s,
      slots: {
        ...s.slots,
        B: {
          tries: 0,
          good: true,
          boots: 0,
          rootHash: v.rootHash,
          verity: formatSlotVerity(v),
          version: old.manifest.version,
        },
      },
    });
  } finally {
    await disk.close();
  }
  return d;
}

/**
 * An update world (1.0.0 disk, a 2.0.0 bundle) with 2.0.0 published to
 * `stable` in `<dir>/repo` and served on 127.0.0.1: the agent tests that poll.
 * `now` and `expiresInMs` set the index's issuedAt and lifetime (fake clocks).
 */
export async function servedUpdateWorld(
  dir: string,
  o: { now?: Date; expiresInMs?: number } = {},
): Promise<{ w: UpdateWorld; repo: RepoServer }> {
  const w = await makeUpdateWorld(dir, { versions: ["2.0.0"] });
  const repoDir = join(w.dir, "repo");
  await publish({
    repoDir,
    bundlePath: (w.bundles["2.0.0"] as BundleFixture).path,
    channel: "stable",
    key: w.key.privateKey,
    ...o,
  });
  return { w, repo: await serve({ repoDir, host: "127.0.0.1", port: 0 }) };
}
