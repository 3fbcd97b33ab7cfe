/**
 * Bundle test fixtures: slot images made by the real `veritysetup format`
 * (data area + superblock + tree, the disk layout contract), manifests,
 * bundles, and hand-made hostile tars.
 */
import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Readable } from "node:stream";
import tar from "tar-stream";
import { expect } from "vitest";
import {
  BundleError,
  type BundleErrorCode,
  BundleReader,
  hashSlotImage,
  type KeyObject,
  type UnsignedManifest,
} from "../../../src/bundle/index.ts";
import { run } from "../../../src/exec.ts";
import type { VerityParams } from "../../../src/verity/index.ts";

export interface SlotFixture {
  path: string;
  verity: VerityParams;
}

/** A slot image: `dataBytes` random bytes (a multiple of 4096) then a veritysetup superblock and tree. */
export async function makeSlotImage(
  dir: string,
  name: string,
  dataBytes: number,
): Promise<SlotFixture> {
  const path = join(dir, name);
  writeFileSync(path, randomBytes(dataBytes));
  const r = await run("veritysetup", ["format", path, path, `--hash-offset=${dataBytes}`]);
  const get = (k: string) => {
    const m = new RegExp(`^${k}:\\s*(\\S+)`, "m").exec(r.stdout);
    if (!m?.[1]) throw new Error(`veritysetup output has no ${k}: ${r.stdout}`);
    return m[1];
  };
  const size = readFileSync(path).length;
  return {
    path,
    verity: {
      hashAlgorithm: "sha256",
      dataBlockSize: 4096,
      hashBlockSize: 4096,
      dataBlocks: Number(get("Data blocks")),
      salt: get("Salt"),
      uuid: get("UUID"),
      superblock: true,
      hashOffset: dataBytes,
      hashStartBlock: dataBytes / 4096 + 1,
      hashAreaSize: size - dataBytes,
      rootHash: get("Root hash"),
    },
  };
}

export async function makeManifest(
  slot: SlotFixture,
  over: Partial<UnsignedManifest> = {},
): Promise<UnsignedManifest> {
  return {
    formatVersion: 1,
    name: "demo",
    compatible: "x86_64-efi-demo",
    version: "1.2.3",
    createdAt: "2026-05-01T12:00:00Z",
    slotImage: await hashSlotImage(slot.path),
    verity: slot.verity,
    ...over,
  };
}

export interface TarEntrySpec {
  name: string;
  data: Uint8Array;
}

/** A tar of arbitrary entries, made by tar-stream as the writer does. */
export async function makeTar(entries: TarEntrySpec[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries)
    pack.entry(
      { name: e.name, size: e.data.length, mode: 0o644, mtime: new Date(0), type: "file" },
      Buffer.from(e.data),
    );
  pack.finalize();
  const parts: Buffer[] = [];
  for await (const c of pack as AsyncIterable<Buffer>) parts.push(c);
  return Buffer.concat(parts);
}

/** Rewrite fields of the header at `offset` (name, size) and fix its checksum. */
export function patchHeader(
  bundle: Buffer,
  offset: number,
  o: { name?: string; size?: number; type?: string },
): Buffer {
  const b = Buffer.from(bundle);
  const h = b.subarray(offset, offset + 512);
  if (o.name !== undefined) {
    h.fill(0, 0, 100);
    h.write(o.name, 0, "latin1");
  }
  if (o.size !== undefined) h.write(`${o.size.toString(8).padStart(11, "0")} `, 124, "latin1");
  if (o.type !== undefined) h.write(o.type, 156, "latin1");
  h.write("        ", 148, "latin1");
  let sum = 0;
  for (const x of h) sum += x;
  h.write(`${sum.toString(8).padStart(6, "0")} \0`, 148, "latin1");
  return b;
}

/** A stream of `bytes` in pieces of `piece` bytes (like a network body). */
export function streamOf(bytes: Uint8Array, piece = 65536): Readable {
  return Readable.from(
    (function* () {
      for (let i = 0; i < bytes.length; i += piece) yield Buffer.from(bytes.subarray(i, i + piece));
    })(),
    { objectMode: false },
  );
}

export interface ReadOutcome {
  /** Slot bytes the reader emitted, even when it then failed. */
  emitted: Buffer;
  error?: unknown;
}

/** open(), drain slotImage(), finish(); collects what was emitted before any failure. */
export async function readBundle(
  bytes: Uint8Array,
  trustedKeys: KeyObject[],
  o: { maxSlotBytes?: number; piece?: number } = {},
): Promise<ReadOutcome> {
  const parts: Buffer[] = [];
  try {
    const r = new BundleReader(streamOf(bytes, o.piece), {
      trustedKeys,
      name: "test.bundle",
      ...(o.maxSlotBytes === undefined ? {} : { maxSlotBytes: o.maxSlotBytes }),
    });
    await r.open();
    for await (const c of r.slotImage()) parts.push(c as Buffer);
    await r.finish();
    return { emitted: Buffer.concat(parts) };
  } catch (error) {
    return { emitted: Buffer.concat(parts), error };
  }
}

export function expectCode(error: unknown, code: BundleErrorCode): BundleError {
  expect(error, `expected ${code}`).toBeInstanceOf(BundleError);
  expect((error as BundleError).code).toBe(code);
  return error as BundleError;
}
