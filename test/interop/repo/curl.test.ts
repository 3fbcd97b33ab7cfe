/**
 * src/repo/README.md: "Serving" — the server as curl sees it (curl must be
 * installed: apt-get install curl).
 */
import { createHash } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { run } from "../../../src/exec.ts";
import { createLogger } from "../../../src/log.ts";
import { publish, type RepoServer, serve, verifyIndex } from "../../../src/repo/index.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { makeBundle, makeKey } from "../../unit/repo/fixtures.ts";

const dir = tempDir("abforge-repo-curl-");
const repoDir = join(dir, "repo");
const data = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 13 + 5) & 0xff));
let server: RepoServer;

/** curl with -sS; returns stdout. */
async function curl(args: string[]): Promise<string> {
  return (await run("curl", ["-sS", ...args])).stdout;
}

beforeAll(async () => {
  await mkdir(join(repoDir, "bundles"), { recursive: true });
  await writeFile(join(repoDir, "bundles/blob.bin"), data);
  await writeFile(join(dir, "secret.txt"), "secret");
  server = await serve({ repoDir, port: 0, log: createLogger({ level: "silent" }) });
});
afterAll(() => server.close());

describe("repo serve with curl", () => {
  it("curl -r gets a 206 with exactly the asked bytes", async () => {
    const out = join(dir, "range.bin");
    const head = await curl([
      "-r",
      "1000-65535",
      "-D",
      "-",
      "-o",
      out,
      `${server.url}bundles/blob.bin`,
    ]);
    expect(head).toMatch(/^HTTP\/1\.1 206 /);
    expect(head).toMatch(new RegExp(`content-range: bytes 1000-65535/${data.length}`, "i"));
    expect((await readFile(out)).equals(data.subarray(1000, 65536))).toBe(true);
  });

  it("curl -r with several ranges gets multipart/byteranges with each asked part", async () => {
    const out = join(dir, "multi.bin");
    const head = await curl([
      "-r",
      "0-9,200000-200019",
      "-D",
      "-",
      "-o",
      out,
      `${server.url}bundles/blob.bin`,
    ]);
    expect(head).toMatch(/^HTTP\/1\.1 206 /);
    const b = /content-type: multipart\/byteranges; boundary=(\w+)/i.exec(head)?.[1];
    expect(b).toBeDefined();
    const body = await readFile(out);
    const part = (r: string, bytes: Buffer, first: boolean) =>
      Buffer.concat([
        Buffer.from(
          `${first ? "" : "\r\n"}--${b}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes ${r}/${data.length}\r\n\r\n`,
        ),
        bytes,
      ]);
    expect(
      body.equals(
        Buffer.concat([
          part("0-9", data.subarray(0, 10), true),
          part("200000-200019", data.subarray(200000, 200020), false),
          Buffer.from(`\r\n--${b}--\r\n`),
        ]),
      ),
    ).toBe(true);
    expect(head).toMatch(new RegExp(`content-length: ${body.length}\\r`, "i"));
  });

  it("curl -r beyond the end gets a 416", async () => {
    const code = await curl([
      "-r",
      `${data.length}-`,
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      `${server.url}bundles/blob.bin`,
    ]);
    expect(code).toBe("416");
  });

  it("curl -I gets the size, ETag and Accept-Ranges without a body", async () => {
    const head = await curl(["-I", `${server.url}bundles/blob.bin`]);
    expect(head).toMatch(/^HTTP\/1\.1 200 /);
    expect(head).toMatch(new RegExp(`content-length: ${data.length}\\r`, "i"));
    expect(head).toMatch(/etag: "[0-9a-f-]+"/i);
    expect(head).toMatch(/accept-ranges: bytes/i);
  });

  it("curl --etag-save then --etag-compare gets a 304", async () => {
    const etag = join(dir, "etag.txt");
    await curl(["--etag-save", etag, "-o", "/dev/null", `${server.url}bundles/blob.bin`]);
    expect((await readFile(etag, "utf8")).trim()).toMatch(/^"[0-9a-f-]+"$/);
    const code = await curl([
      "--etag-compare",
      etag,
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      `${server.url}bundles/blob.bin`,
    ]);
    expect(code).toBe("304");
  });

  it("curl -C - resumes a partial download to the exact file", async () => {
    const out = join(dir, "resumed.bin");
    await writeFile(out, data.subarray(0, 123_456));
    await curl(["-C", "-", "-o", out, `${server.url}bundles/blob.bin`]);
    expect((await readFile(out)).equals(data)).toBe(true);
  });

  it("curl --path-as-is cannot climb out of the repository", async () => {
    for (const path of ["../secret.txt", "bundles/../../secret.txt", "%2e%2e/secret.txt"]) {
      const body = join(dir, "traversal.out");
      const code = await curl([
        "--path-as-is",
        "-o",
        body,
        "-w",
        "%{http_code}",
        `${server.url}${path}`,
      ]);
      expect(code, path).toBe("404");
      expect(await readFile(body, "utf8")).not.toContain("secret");
    }
  });

  it("a published channel is fetched and verified over HTTP, the bundle via its relative path", async () => {
    const key = await makeKey(dir);
    const bundlePath = join(dir, "demo.bundle");
    await makeBundle(bundlePath, key, { version: "3.1.4" });
    const now = new Date();
    await publish({ repoDir, bundlePath, channel: "stable", key: key.privateKey, now });
    const indexUrl = `${server.url}channels/stable.json`;
    const index = Buffer.from(await curl([indexUrl]));
    const v = verifyIndex(index, {
      channel: "stable",
      trustedKeys: [key.publicKey],
      now,
      minSerial: 0,
    });
    const bundleUrl = new URL(v.signed.latest.bundle, indexUrl).href;
    const out = join(dir, "fetched.bundle");
    await curl(["-o", out, bundleUrl]);
    const bytes = await readFile(out);
    expect(bytes.length).toBe(v.signed.latest.size);
    expect(createHash("sha256").update(bytes).digest("hex")).toBe(v.signed.latest.sha256);
    // the slot data can be fetched alone from its offset
    const slot = join(dir, "slot.bin");
    await curl(["-r", `${v.signed.latest.slotDataOffset}-`, "-o", slot, bundleUrl]);
    expect((await readFile(slot)).subarray(0, 16384).every((b) => b === 0x5a)).toBe(true);
  });
});
