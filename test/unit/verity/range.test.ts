// The shared range queue and the worker thread (src/verity/README.md, "Format" step 4).
import { randomBytes } from "node:crypto";
import { closeSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { afterEach, describe, expect, it } from "vitest";
import { buildTree, treeLayout } from "../../../src/verity/index.ts";
import {
  cancelWorker,
  firstBad,
  type LevelTask,
  newQueue,
  rangeChildren,
  shareLevel,
  shareLevelYielding,
} from "../../../src/verity/range.ts";
import type { WorkerReply } from "../../../src/verity/worker.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir("abforge-verity-range-");
const fds: number[] = [];
afterEach(() => {
  for (const fd of fds.splice(0)) closeSync(fd);
});

const salt = randomBytes(17);
const dataBlocks = 2600; // > 2 ranges of 1024 blocks
const data = randomBytes(dataBlocks * 4096);
const layout = treeLayout({
  hashAlgorithm: "sha1",
  dataBlockSize: 4096,
  hashBlockSize: 4096,
  dataBlocks,
  hashOffset: 0,
  superblock: false,
});
const ref = buildTree(
  data,
  { hashAlgorithm: "sha1", dataBlockSize: 4096, hashBlockSize: 4096, salt },
  layout,
);
const level0 = layout.levels[0];
if (!level0) throw new Error("no level 0");
const refLevel0 = ref.tree.subarray((level0.startBlock - layout.hashStartBlock) * 4096);

function setup(
  mode: "format" | "verify",
  name: string,
): { task: LevelTask; hashPath: string; dataPath: string } {
  const dataPath = join(dir, `${name}.data`);
  const hashPath = join(dir, `${name}.hash`);
  writeFileSync(dataPath, data);
  if (mode === "verify") writeFileSync(hashPath, refLevel0);
  else writeFileSync(hashPath, "");
  const childFd = openSync(dataPath, "r");
  const hashFd = openSync(hashPath, "r+");
  fds.push(childFd, hashFd);
  const task: LevelTask = {
    mode,
    hashAlgorithm: "sha1",
    salt,
    childFd,
    childOffset: 0,
    childSize: 4096,
    children: dataBlocks,
    hashFd,
    levelOffset: 0,
    hashBlockSize: 4096,
    hashesPerBlock: layout.hashesPerBlock,
    digestStride: layout.digestStride,
    digestSize: layout.digestSize,
  };
  return { task, hashPath, dataPath };
}

function runWorker(task: LevelTask, queue: SharedArrayBuffer, index: number): Promise<WorkerReply> {
  const worker = new Worker(new URL("../../../src/verity/worker.ts", import.meta.url), {
    workerData: { task, queue, index },
  });
  return new Promise((resolve, reject) => {
    worker.once("message", resolve);
    worker.once("error", reject);
  });
}

describe("range queue", () => {
  it("splits a level into ranges of whole parent blocks", () => {
    const { task } = setup("format", "split");
    expect(rangeChildren(task) % task.hashesPerBlock).toBe(0);
    expect(rangeChildren(task)).toBe(1024); // 4 MiB of 4 KiB blocks
  });

  it("a worker thread alone hashes the whole level", async () => {
    const { task, hashPath } = setup("format", "worker");
    const queue = newQueue(1);
    await expect(runWorker(task, queue, 0)).resolves.toEqual({ ok: true });
    expect(readFileSync(hashPath).equals(Buffer.from(refLevel0))).toBe(true);
  });

  it("a cancelled worker does nothing", async () => {
    const { task, hashPath } = setup("format", "cancel");
    const queue = newQueue(1);
    expect(cancelWorker(queue, 0)).toBe(true);
    await expect(runWorker(task, queue, 0)).resolves.toEqual({ ok: true });
    expect(readFileSync(hashPath).length).toBe(0);
  });

  it("the caller and a worker share the level; the lowest bad block wins", async () => {
    const { task, dataPath } = setup("verify", "share");
    const bad = readFileSync(dataPath);
    for (const block of [2500, 1100, 1900])
      bad[block * 4096 + 5] = (bad[block * 4096 + 5] as number) ^ 1;
    writeFileSync(dataPath, bad);
    const queue = newQueue(1);
    const worker = runWorker(task, queue, 0);
    shareLevel(task, queue);
    await expect(worker).resolves.toEqual({ ok: true });
    expect(firstBad(queue)).toBe(1100);
  });

  it("the calling thread gives the event loop a turn after each range", async () => {
    const { task, hashPath } = setup("format", "yield");
    const ranges = Math.ceil(dataBlocks / rangeChildren(task));
    expect(ranges).toBe(3);
    let turns = 0;
    let running = true;
    const tick = () => {
      turns++;
      if (running) setImmediate(tick);
    };
    setImmediate(tick);
    const started = turns;
    const p = shareLevelYielding(task, newQueue(0));
    expect(turns).toBe(started); // the first range ran at once, synchronously
    await p;
    running = false;
    expect(turns - started).toBeGreaterThanOrEqual(ranges);
    expect(readFileSync(hashPath).equals(Buffer.from(refLevel0))).toBe(true);
  });

  it("a worker reports a read past the end of the file", async () => {
    const { task } = setup("format", "short");
    const queue = newQueue(1);
    const reply = await runWorker({ ...task, children: dataBlocks + 5 }, queue, 0);
    expect(reply).toMatchObject({ ok: false, file: "child", endOfFile: true });
  });
});
