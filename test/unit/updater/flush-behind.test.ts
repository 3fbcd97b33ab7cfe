/** FlushBehind (src/updater/installer.ts): background syncs of the slot while it is written. */
import { describe, expect, it } from "vitest";
import { FLUSH_BEHIND_BYTES, FlushBehind } from "../../../src/updater/slot-writer.ts";

const MiB = 1024 * 1024;

/** A sync that stays in flight until `finish()`. */
function controlledSync() {
  const calls: { finish: (err?: Error) => void }[] = [];
  const sync = () =>
    new Promise<void>((resolve, reject) => {
      calls.push({ finish: (err) => (err ? reject(err) : resolve()) });
    });
  return { calls, sync };
}

const tick = () => new Promise((r) => setImmediate(r));

describe("FlushBehind", () => {
  it("starts a sync after every FLUSH_BEHIND_BYTES written, one at a time", async () => {
    const { calls, sync } = controlledSync();
    const f = new FlushBehind(sync);
    for (let done = MiB; done < FLUSH_BEHIND_BYTES; done += MiB) f.wrote(MiB);
    expect(calls.length).toBe(0);
    f.wrote(MiB);
    expect(calls.length).toBe(1);
    // while it is in flight, more writes start no second sync
    for (let i = 0; i < (2 * FLUSH_BEHIND_BYTES) / MiB; i++) f.wrote(MiB);
    expect(calls.length).toBe(1);
    calls[0]!.finish();
    await tick();
    f.wrote(MiB); // the bytes written meanwhile count: the next sync starts now
    expect(calls.length).toBe(2);
    let stopped = false;
    const stop = f.stop().then(() => {
      stopped = true;
    });
    await tick();
    expect(stopped).toBe(false); // stop() waits for the sync in flight
    calls[1]!.finish();
    await stop;
    expect(stopped).toBe(true);
  });

  it("throws a failed sync's error at the next write, and keeps throwing it", async () => {
    const { calls, sync } = controlledSync();
    const f = new FlushBehind(sync);
    f.wrote(FLUSH_BEHIND_BYTES);
    calls[0]!.finish(new Error("EIO"));
    await f.stop();
    expect(() => f.wrote(1)).toThrow("EIO");
    expect(() => f.wrote(1)).toThrow("EIO");
    expect(calls.length).toBe(1);
  });
});
