/**
 * Pure hashing of format 1 (README.md, "Hash input"): digest = H(salt || block),
 * digests stored at a power-of-two stride, the rest of each hash block zero.
 */
import { hash } from "node:crypto";
import type { HashAlgorithm, TreeLayout } from "./layout.ts";

/** H(salt || block): the digest of one data or hash block. */
export function blockDigest(alg: HashAlgorithm, salt: Uint8Array, block: Uint8Array): Buffer {
  const input = new Uint8Array(salt.length + block.length);
  input.set(salt, 0);
  input.set(block, salt.length);
  return hash(alg, input, "buffer");
}

/**
 * Hash `count` blocks laid out as salted records — each `salt || block`, one
 * after another (so every record is hashed with one call) — and store digest j
 * at `out[outOffset + j * stride]`. Returns nothing: the caller owns both buffers.
 * (The digest comes back as a "binary" (latin1) string, one char per byte: measurably
 * faster in Node 24 than a Buffer per call.)
 */
export function hashRecords(
  alg: HashAlgorithm,
  records: Uint8Array,
  recordSize: number,
  count: number,
  out: Buffer,
  outOffset: number,
  stride: number,
): void {
  for (let j = 0; j < count; j++) {
    const d = hash(alg, records.subarray(j * recordSize, (j + 1) * recordSize), "binary");
    out.write(d, outOffset + j * stride, "latin1");
  }
}

/**
 * The whole hash tree of `data` in memory, as the bytes from the first tree
 * block to its end, and the root hash. For small inputs and as the reference
 * the streaming code is tested against; it follows README.md step by step.
 */
export function buildTree(
  data: Uint8Array,
  p: {
    hashAlgorithm: HashAlgorithm;
    dataBlockSize: number;
    hashBlockSize: number;
    salt: Uint8Array;
  },
  layout: TreeLayout,
): { tree: Uint8Array; rootHash: Buffer } {
  const tree = new Uint8Array(layout.treeBlocks * p.hashBlockSize);
  const blockAt = (absoluteBlock: number) => {
    const from = (absoluteBlock - layout.hashStartBlock) * p.hashBlockSize;
    return tree.subarray(from, from + p.hashBlockSize);
  };
  let children = (i: number) => data.subarray(i * p.dataBlockSize, (i + 1) * p.dataBlockSize);
  for (const level of layout.levels) {
    for (let i = 0; i < level.children; i++) {
      const parent = blockAt(level.startBlock + Math.floor(i / layout.hashesPerBlock));
      parent.set(
        blockDigest(p.hashAlgorithm, p.salt, children(i)),
        (i % layout.hashesPerBlock) * layout.digestStride,
      );
    }
    const start = level.startBlock;
    children = (i: number) => blockAt(start + i);
  }
  return { tree, rootHash: blockDigest(p.hashAlgorithm, p.salt, children(0)) };
}
