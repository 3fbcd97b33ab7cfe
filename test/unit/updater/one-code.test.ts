// One failure, one code, in the slot write (issue 11, point 6): a transfer that
// fails is a download failure (resumable), a system error reading the bundle
// is an I/O error as everywhere, and a bug surfaces as a bug, never recoded as
// "download failed, resumes there".
import { createReadStream } from "node:fs";
import { Transform } from "node:stream";
import { beforeAll, describe, expect, it } from "vitest";
import { RepoError } from "../../../src/repo/index.ts";
import type { HttpClient } from "../../../src/updater/index.ts";
import { type BundleFixture, makeUpdateWorld, type UpdateWorld } from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { testAgent } from "./harness.ts";

let w: UpdateWorld;
beforeAll(async () => {
  w = await makeUpdateWorld(tempDir(), { versions: ["2.0.0"] });
});

const MiB = 1024 * 1024;

/** Serves the 2.0.0 bundle and fails with `error` once 1.5 MiB past the offset asked for (inside the slot write). */
function failingHttp(error: () => Error): HttpClient {
  const path = (w.bundles["2.0.0"] as BundleFixture).path;
  return {
    fetch: () => Promise.reject(new Error("no index in this test")),
    openRange(_url, o) {
      let sent = 0;
      const cut = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          if (sent + chunk.length > 2.5 * MiB) return cb(error());
          sent += chunk.length;
          cb(null, chunk);
        },
      });
      return createReadStream(path, { start: o.offset, highWaterMark: 64 * 1024 }).pipe(cut);
    },
  };
}

async function installWith(name: string, error: () => Error): Promise<unknown> {
  const d = await w.freshDisk(name);
  const t = await testAgent(d.path, { overrides: { http: failingHttp(error) } });
  try {
    await t.agent.install("http://repo.test/bundles/demo-2.0.0.bundle");
  } catch (err) {
    return err;
  }
  throw new Error("the install did not fail");
}

describe("a failure in the slot write keeps one code", () => {
  it("a failed transfer is UPDATE_DOWNLOAD_FAILED, resumable", async () => {
    const err = await installWith(
      "transfer",
      () => new RepoError("REPO_DOWNLOAD_FAILED", "connection reset"),
    );
    expect(err).toMatchObject({ code: "UPDATE_DOWNLOAD_FAILED" });
    expect((err as Error).message).toMatch(/resumes there/);
  });

  it("a system error reading the bundle is IO_ERROR, as everywhere", async () => {
    const err = await installWith("eio", () =>
      Object.assign(new Error("EIO: i/o error, read"), { code: "EIO", syscall: "read" }),
    );
    expect(err).toMatchObject({ code: "IO_ERROR", details: { errno: "EIO" } });
  });

  it("a bug surfaces as the bug, not as a download failure", async () => {
    const bug = new TypeError("Cannot read properties of undefined (reading 'length')");
    const err = await installWith("bug", () => bug);
    expect(err).toBe(bug);
  });
});
