/** Text and JSON views of a bundle for `abforge bundle inspect` and `verify`. */

import type { BundleHeadInfo, BundleLayout } from "./reader.ts";
import type { BundleVerification } from "./verify.ts";

/** The JSON of `abforge bundle inspect`: the manifest as written, entries and offsets. */
export function inspectJson(path: string, head: BundleHeadInfo) {
  return {
    path,
    signatureVerified: false,
    keyId: head.manifest.keyId,
    signature: Buffer.from(head.signature).toString("hex"),
    manifest: head.manifest,
    ...layoutJson(head.layout),
  };
}

export function formatInspect(path: string, head: BundleHeadInfo): string {
  const m = head.manifest;
  const v = m.verity;
  const lines = [
    `bundle ${path}`,
    `  name          ${m.name}`,
    `  compatible    ${m.compatible}`,
    `  version       ${m.version}`,
    `  created       ${m.createdAt}`,
    `  signed by     key ${m.keyId} (as the manifest claims; abforge bundle verify checks it)`,
    `  slot image    ${m.slotImage.size} bytes, ${m.slotImage.chunks.length} chunks of ${m.slotImage.chunkSize}, sha256 ${m.slotImage.sha256}`,
    ...(m.slotImage.cdc
      ? [
          `  cdc chunks    ${m.slotImage.cdc.chunks.length}, ${m.slotImage.cdc.minSize}/${m.slotImage.cdc.avgSize}/${m.slotImage.cdc.maxSize} bytes min/avg/max (format 2)`,
        ]
      : []),
    `  verity        ${v.hashAlgorithm}, ${v.dataBlocks} data blocks of ${v.dataBlockSize}, ${v.superblock ? "superblock" : "no superblock"} at ${v.hashOffset}, tree ${v.hashAreaSize} bytes`,
    `  root hash     ${v.rootHash}`,
    `  salt          ${v.salt}`,
    "entries",
    "  header   data     size         name",
    ...head.layout.entries.map(
      (e) =>
        `  ${String(e.headerOffset).padEnd(8)} ${String(e.dataOffset).padEnd(8)} ${String(e.size).padEnd(12)} ${e.name}`,
    ),
    `  slot image data at byte ${head.layout.slotOffset}, archive ${head.layout.archiveSize} bytes`,
  ];
  return lines.join("\n");
}

export function verifyJson(path: string, r: BundleVerification) {
  return {
    path,
    ok: true,
    keyId: r.keyId,
    name: r.manifest.name,
    compatible: r.manifest.compatible,
    version: r.manifest.version,
    rootHash: r.manifest.verity.rootHash,
    ...layoutJson(r.layout),
  };
}

export function formatVerify(path: string, r: BundleVerification): string {
  const m = r.manifest;
  return `bundle ${path}: OK — ${m.name} ${m.version} (${m.compatible}) signed by key ${r.keyId}; ${m.slotImage.chunks.length} chunks, sha256 and verity root hash ${m.verity.rootHash} check`;
}

function layoutJson(l: BundleLayout) {
  return { entries: l.entries, slotOffset: l.slotOffset, archiveSize: l.archiveSize };
}
