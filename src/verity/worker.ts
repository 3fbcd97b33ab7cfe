/**
 * Worker thread entry: hashes one range of a level (range.ts) and posts the
 * result. The parent shares its file descriptors with the worker (one process).
 */
import { parentPort, workerData } from "node:worker_threads";
import { isShortFile, type RangeTask, runRange } from "./range.ts";

export type WorkerReply =
  | { ok: true; firstBad: number }
  | { ok: false; message: string; code: string | undefined; shortFile: boolean };

let reply: WorkerReply;
try {
  reply = { ok: true, firstBad: runRange(workerData as RangeTask) };
} catch (err) {
  reply = {
    ok: false,
    message: err instanceof Error ? err.message : String(err),
    code: (err as NodeJS.ErrnoException).code,
    shortFile: isShortFile(err),
  };
}
parentPort?.postMessage(reply);
