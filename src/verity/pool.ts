/**
 * The worker pool behind level 0 of the hash tree (README.md, "Format" step
 * 4): the calling thread and up to threads-1 workers (worker.ts) claim ranges
 * of data blocks from a queue in shared memory (range.ts); a worker that is
 * not up before the queue is empty is cancelled. I/O failures inside a range
 * come back as RangeIoError and are named here by their file.
 */
import { Worker } from "node:worker_threads";
import { ioError, type OpenFile } from "./io.ts";
import {
  cancelWorker,
  closeQueue,
  firstBad,
  type LevelTask,
  newQueue,
  RangeIoError,
  rangeChildren,
  shareLevelYielding,
} from "./range.ts";
import type { WorkerInput, WorkerReply } from "./worker.ts";

/** An I/O failure inside a range (range.ts), named by its file. */
export function rangeError(err: unknown, children: OpenFile, hash: OpenFile): unknown {
  if (!(err instanceof RangeIoError)) return err;
  const f = err.file === "child" ? children : hash;
  return ioError(f, err.endOfFile ? "shorter than the verity parameters need" : "I/O failed", err);
}

interface Spawned {
  worker: Worker;
  done: Promise<WorkerReply>;
}

/**
 * A worker gets this process's environment: when NODE_COMPILE_CACHE names a
 * cache (bin/abforge sets a private per-user one; the rules are there), its
 * type-stripped, compiled modules load from there (measured: ~40 ms of CPU
 * instead of ~100 ms). There is no shared default such as a /tmp directory:
 * another user could plant compiled code in it.
 */
function spawnWorker(input: WorkerInput): Spawned {
  const worker = new Worker(new URL("./worker.ts", import.meta.url), {
    workerData: input,
    env: process.env,
  });
  const done = new Promise<WorkerReply>((resolve) => {
    let reply: WorkerReply | undefined;
    worker.once("message", (m: WorkerReply) => {
      reply = m;
    });
    worker.once("error", (err) =>
      resolve({
        ok: false,
        message: err.message,
        file: undefined,
        endOfFile: false,
        errno: undefined,
      }),
    );
    worker.once("exit", (code) =>
      resolve(
        reply ?? {
          ok: false,
          message: `verity worker exited with code ${code}`,
          file: undefined,
          endOfFile: false,
          errno: undefined,
        },
      ),
    );
  });
  return { worker, done };
}

/**
 * Level 0 over the data (README.md, "Format" step 4): the calling thread and
 * threads-1 workers claim ranges from a shared queue, so hashing starts at once
 * and a worker that is not up before the queue is empty is cancelled. Returns
 * the first bad data block (verify) or -1.
 */
export async function dataLevel(
  task: LevelTask,
  threads: number,
  data: OpenFile,
  hash: OpenFile,
): Promise<number> {
  const workers = Math.max(
    0,
    Math.min(threads, Math.ceil(task.children / rangeChildren(task))) - 1,
  );
  const queue = newQueue(workers);
  const spawned: Spawned[] = [];
  for (let index = 0; index < workers; index++) spawned.push(spawnWorker({ task, queue, index }));
  let failure: unknown;
  try {
    await shareLevelYielding(task, queue);
  } catch (err) {
    failure = err;
    closeQueue(queue);
  }
  // Workers that have not started are not needed any more; the others must
  // finish before the caller closes the descriptors they use.
  const replies = await Promise.all(
    spawned.map(async (s, index) => {
      if (cancelWorker(queue, index)) {
        await s.worker.terminate();
        return { ok: true } as WorkerReply;
      }
      return s.done;
    }),
  );
  const bad = replies.find((r): r is Extract<WorkerReply, { ok: false }> => !r.ok);
  if (!failure && bad) {
    failure = bad.file
      ? new RangeIoError(bad.file, bad.message, bad.endOfFile, bad.errno)
      : new Error(`verity worker failed: ${bad.message}`);
  }
  if (failure) throw rangeError(failure, data, hash);
  return firstBad(queue);
}
