/**
 * The delta install (README.md, "Delta install"): a format 2 bundle's
 * content-defined chunks found in the slots this host already has, checked
 * by sha256 when they are read, and the rest fetched by byte ranges of the
 * same bundle file. Every chunk is verified before it is written; the
 * written image is read back whole (step 6) and its verity tree (step 8)
 * as in a full install.
 */
import { createHash, type Hash } from "node:crypto";
import type { FileHandle } from "node:fs/promises";
import { CdcChunker, type CdcInfo, type CdcParams } from "../bundle/index.ts";
import { ioStep, readAt, writeAt } from "../fileio.ts";
import type { RangePiece, Span } from "../repo/index.ts";
import { planRanges } from "../repo/index.ts";

/** A region of the disk that may hold chunks: a slot partition. */
export interface Seed {
  /** For logs: "slot A (booted)". */
  name: string;
  /** Byte offset of the region on the disk, and its size. */
  offset: number;
  size: number;
  /** The install's target: its bytes below the write position are overwritten as it goes. */
  target: boolean;
}

/** Where a chunk's bytes lie in a seed (offset relative to the seed). */
export interface SeedLocation {
  seed: number;
  offset: number;
}

/** sha256 → where chunks with that hash lie (and their length). */
export type SeedIndex = Map<string, { length: number; at: SeedLocation[] }>;

/** Most locations kept per hash (runs of zeros give thousands of the same chunk). */
const MAX_LOCATIONS = 4;

/** Chunks the seeds' bytes by `params` (the manifest's), read through `fh`. */
export async function indexSeeds(
  fh: FileHandle,
  path: string,
  seeds: readonly Seed[],
  params: CdcParams,
): Promise<SeedIndex> {
  const index: SeedIndex = new Map();
  const buf = Buffer.allocUnsafe(1 << 20);
  for (const [i, seed] of seeds.entries()) {
    const cutter = new CdcChunker(params);
    const add = (cs: ReturnType<CdcChunker["update"]>) => {
      for (const c of cs) {
        const e = index.get(c.sha256);
        if (!e) index.set(c.sha256, { length: c.length, at: [{ seed: i, offset: c.offset }] });
        else if (e.at.length < MAX_LOCATIONS) e.at.push({ seed: i, offset: c.offset });
      }
    };
    for (let at = 0; at < seed.size; ) {
      const n = await ioStep(`read ${path} at byte ${seed.offset + at}`, () =>
        readAt(fh, buf.subarray(0, Math.min(buf.length, seed.size - at)), seed.offset + at),
      );
      if (n === 0) break;
      add(cutter.update(buf.subarray(0, n)));
      at += n;
    }
    add(cutter.end());
  }
  return index;
}

export type PlanItem =
  | { kind: "in-place"; offset: number; length: number; sha256: string }
  | { kind: "copy"; offset: number; length: number; sha256: string; from: SeedLocation }
  | { kind: "fetch"; offset: number; length: number; sha256: string }
  /** In the verity area: made on the host from the written data, then checked. */
  | { kind: "compute"; offset: number; length: number; sha256: string };

/**
 * What to do for each chunk of the new image, written in ascending order
 * into the target seed: already there at its offset; a copy from a seed
 * (the target itself only from at or after the chunk's offset, which no
 * earlier write has touched); or fetched. Pure.
 */
export function planDelta(
  cdc: CdcInfo,
  index: SeedIndex,
  seeds: readonly Seed[],
  computeFrom = Number.POSITIVE_INFINITY,
): PlanItem[] {
  return cdc.chunks.map(([offset, length, sha256]) => {
    const e = index.get(sha256);
    const at = e && e.length === length ? e.at : [];
    if (at.some((l) => seeds[l.seed]?.target && l.offset === offset))
      return { kind: "in-place", offset, length, sha256 };
    const from =
      at.find((l) => !seeds[l.seed]?.target) ??
      at.find((l) => seeds[l.seed]?.target && l.offset >= offset);
    if (from) return { kind: "copy", offset, length, sha256, from };
    // what the host can compute (the verity superblock and tree) it does not fetch
    if (offset >= computeFrom) return { kind: "compute", offset, length, sha256 };
    return { kind: "fetch", offset, length, sha256 };
  });
}

/** The ranges of the bundle file to fetch for a plan (bundle offsets: slotOffset + chunk offset). */
export function fetchSpans(
  plan: readonly PlanItem[],
  slotOffset: number,
  o: { maxGapBytes: number; maxRanges: number },
): Span[] {
  return planRanges(
    plan
      .filter((p) => p.kind === "fetch")
      .map((p) => ({ start: slotOffset + p.offset, end: slotOffset + p.offset + p.length })),
    o,
  );
}

/** Reads exact ranges out of fetchRanges' pieces (ascending), dropping bytes between them. */
export class PieceCursor {
  readonly #it: AsyncIterator<RangePiece>;
  #piece: RangePiece | undefined;

  constructor(pieces: AsyncIterable<RangePiece>) {
    this.#it = pieces[Symbol.asyncIterator]();
  }

  /** Bytes [offset, offset + length) of the file, into `out`. */
  async read(offset: number, out: Buffer): Promise<void> {
    let filled = 0;
    while (filled < out.length) {
      if (!this.#piece) {
        const r = await this.#it.next();
        if (r.done) throw new Error(`the ranges ended before byte ${offset + filled}`);
        this.#piece = r.value;
      }
      const p = this.#piece;
      const want = offset + filled;
      const end = p.offset + p.data.length;
      if (end <= want) {
        this.#piece = undefined;
        continue;
      }
      if (p.offset > want) throw new Error(`the ranges skip byte ${want}`);
      const from = want - p.offset;
      const n = Math.min(end - want, out.length - filled);
      p.data.copy(out, filled, from, from + n);
      filled += n;
      if (from + n === p.data.length) this.#piece = undefined;
    }
  }

  /** Wait for the first piece (the server's first answer checked) without consuming it. */
  async peek(): Promise<void> {
    if (this.#piece) return;
    const r = await this.#it.next();
    if (!r.done) this.#piece = r.value;
  }

  async close(): Promise<void> {
    await this.#it.return?.();
  }
}

export interface DeltaCounts {
  inPlace: number;
  copied: number;
  fetched: number;
  computed: number;
  /** Bytes of chunks by where they came from. */
  inPlaceBytes: number;
  copiedBytes: number;
  fetchedChunkBytes: number;
}

export function countPlan(plan: readonly PlanItem[]): DeltaCounts {
  const c: DeltaCounts = {
    inPlace: 0,
    copied: 0,
    fetched: 0,
    computed: 0,
    inPlaceBytes: 0,
    copiedBytes: 0,
    fetchedChunkBytes: 0,
  };
  for (const p of plan) {
    if (p.kind === "in-place") {
      c.inPlace++;
      c.inPlaceBytes += p.length;
    } else if (p.kind === "copy") {
      c.copied++;
      c.copiedBytes += p.length;
    } else if (p.kind === "compute") c.computed++;
    else {
      c.fetched++;
      c.fetchedChunkBytes += p.length;
    }
  }
  return c;
}

/** A chunk's bytes did not match the signed hash: never written. */
export class ChunkMismatch extends Error {
  readonly item: PlanItem;
  readonly actual: string;
  constructor(item: PlanItem, actual: string, where: string) {
    super(
      `chunk at byte ${item.offset} (${item.length} bytes) from ${where} has sha256 ${actual}, the manifest says ${item.sha256}`,
    );
    this.item = item;
    this.actual = actual;
  }
}

export interface WriteDeltaOptions {
  fh: FileHandle;
  diskPath: string;
  seeds: readonly Seed[];
  /** Index of the target in `seeds`. */
  target: number;
  plan: readonly PlanItem[];
  slotOffset: number;
  /** The fetched ranges' bytes, in file order. */
  cursor: PieceCursor;
  /** Called after each chunk is in place (written or found). */
  onChunk?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

/**
 * Step 5 of a delta install: each chunk in ascending order, read from its
 * seed or the fetched ranges, checked against its sha256, then written. A
 * seed chunk that no longer matches is refused (ChunkMismatch) as a fetched
 * one is: the next attempt indexes the slots again. Returns bytes written.
 */
export async function writeDelta(o: WriteDeltaOptions): Promise<number> {
  const target = o.seeds[o.target] as Seed;
  let written = 0;
  const buf = Buffer.allocUnsafe(maxLength(o.plan));
  for (const [n, item] of o.plan.entries()) {
    if (o.signal?.aborted) throw o.signal.reason ?? new Error("aborted");
    const bytes = buf.subarray(0, item.length);
    if (item.kind === "compute") {
      o.onChunk?.(n + 1, o.plan.length);
      continue;
    }
    let where: string;
    if (item.kind === "fetch") {
      await o.cursor.read(o.slotOffset + item.offset, bytes);
      where = "the bundle";
    } else {
      const seed = item.kind === "in-place" ? target : (o.seeds[item.from.seed] as Seed);
      const at = seed.offset + (item.kind === "in-place" ? item.offset : item.from.offset);
      await readExact(o.fh, bytes, at, o.diskPath);
      where = seed.name;
    }
    const actual = createHash("sha256").update(bytes).digest("hex");
    if (actual !== item.sha256) throw new ChunkMismatch(item, actual, where);
    if (item.kind !== "in-place") {
      const at = target.offset + item.offset;
      await ioStep(`write ${o.diskPath} at byte ${at}`, () => writeAt(o.fh, bytes, at));
      written += bytes.length;
    }
    o.onChunk?.(n + 1, o.plan.length);
  }
  return written;
}

/** sha256 of `size` bytes of the disk from `offset` (step 6 of a delta install: the image as written). */
export async function hashRegion(
  fh: FileHandle,
  path: string,
  offset: number,
  size: number,
): Promise<Hash> {
  const h = createHash("sha256");
  const buf = Buffer.allocUnsafe(1 << 20);
  for (let at = 0; at < size; ) {
    const n = Math.min(buf.length, size - at);
    await readExact(fh, buf.subarray(0, n), offset + at, path);
    h.update(buf.subarray(0, n));
    at += n;
  }
  return h;
}

function maxLength(plan: readonly PlanItem[]): number {
  let m = 1;
  for (const p of plan) if (p.length > m) m = p.length;
  return m;
}

async function readExact(fh: FileHandle, buf: Buffer, position: number, path: string) {
  const n = await ioStep(`read ${path} at byte ${position}`, () => readAt(fh, buf, position));
  if (n !== buf.length)
    throw new Error(`${path}: ${n} of ${buf.length} bytes at byte ${position} (end of disk)`);
}

/** After the verity tree was made on the host: each computed chunk must be the signed one. */
export async function checkComputed(
  fh: FileHandle,
  path: string,
  targetOffset: number,
  plan: readonly PlanItem[],
): Promise<void> {
  for (const item of plan) {
    if (item.kind !== "compute") continue;
    const bytes = Buffer.allocUnsafe(item.length);
    await readExact(fh, bytes, targetOffset + item.offset, path);
    const actual = createHash("sha256").update(bytes).digest("hex");
    if (actual !== item.sha256) throw new ChunkMismatch(item, actual, "the verity tree made here");
  }
}
