/**
 * Worker thread entry: claims ranges of one level from the shared queue
 * (range.ts) until none is left, then posts how it ended. The parent shares
 * its file descriptors with the worker (one process).
 */
import { parentPort, workerData } from "node:worker_threads";
import { type LevelTask, type RangeFile, RangeIoError, shareLevel, startWorker } from "./range.ts";

export interface WorkerInput {
  task: LevelTask;
  queue: SharedArrayBuffer;
  index: number;
}

export type WorkerReply =
  | { ok: true }
  | {
      ok: false;
      message: string;
      file: RangeFile | undefined;
      endOfFile: boolean;
      errno: string | undefined;
    };

const { task, queue, index } = workerData as WorkerInput;
let reply: WorkerReply = { ok: true };
if (startWorker(queue, index)) {
  try {
    shareLevel(task, queue);
  } catch (err) {
    const io = err instanceof RangeIoError ? err : undefined;
    reply = {
      ok: false,
      message: err instanceof Error ? err.message : String(err),
      file: io?.file,
      endOfFile: io?.endOfFile ?? false,
      errno: io?.errno,
    };
  }
}
parentPort?.postMessage(reply);
