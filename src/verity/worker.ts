/**
 * Worker thread entry: claims ranges of one level from the shared queue
 * (range.ts) until none is left, then posts how it ended. The parent shares
 * its file descriptors with the worker (one process).
 */
import { parentPort, workerData } from "node:worker_threads";
import { isShortFile, type LevelTask, shareLevel, startWorker } from "./range.ts";

export interface WorkerInput {
  task: LevelTask;
  queue: SharedArrayBuffer;
  index: number;
}

export type WorkerReply =
  | { ok: true }
  | { ok: false; message: string; code: string | undefined; shortFile: boolean };

const { task, queue, index } = workerData as WorkerInput;
let reply: WorkerReply = { ok: true };
if (startWorker(queue, index)) {
  try {
    shareLevel(task, queue);
  } catch (err) {
    reply = {
      ok: false,
      message: err instanceof Error ? err.message : String(err),
      code: (err as NodeJS.ErrnoException).code,
      shortFile: isShortFile(err),
    };
  }
}
parentPort?.postMessage(reply);
