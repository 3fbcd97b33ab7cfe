/**
 * Hostile repositories and misbehaving servers, through the real CLI:
 * `abforge agent check --config agent.yaml --disk IMAGE` against small
 * node:http servers written here (scripted per case), on the disk of a second
 * update (A runs 1.0.0, good; B holds 0.9.0, good).
 *
 * Refused, each with its own exit code and a message that says what: an
 * expired index, a replayed older index, a second index with the same serial,
 * another channel's index, an index edited after signing, an index signed by
 * an unknown key or by nobody, a format 1 index (no commitment to the
 * bundle's manifest), a bundle path leaving the repository, a validly signed
 * bundle that is not the one the index names (another channel's, an older
 * one put at the path, the same name and version with other bytes), a server
 * that sends endless bytes (index or bundle), a server that never sends the
 * index, a server that fails. For
 * each, slot A, slot B and the boot state are byte for byte unchanged (the
 * fault shows before the first slot byte) or, for a fault inside the slot
 * data, B is left unbootable.
 *
 * Survived, the update installed and verified: a server that stalls twice in
 * the middle of the bundle (the agent times out and retries with a Range
 * request after a back-off that grows), a server that ignores Range (the
 * client skips what it already has), also when resuming after a kill -9.
 */
import { sign } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type KeyObject, keyId, publicKeyFromPrivate } from "../../src/bundle/index.ts";
import { type IndexSigned, signedBytes, signIndex } from "../../src/repo/index.ts";
import {
  makeBundle,
  makeSlotImage,
  makeUpdateWorld,
  type UpdateWorld,
} from "../helpers/fixtures.ts";
import { tempDir } from "../helpers/tmp.ts";
import {
  AgentProcess,
  bundleParts,
  checkGuarantees,
  diskHashes,
  readBootState,
  recordFigure,
  runAbforge,
  secondUpdateDisk,
  sha256,
  sleep,
  slotVerifies,
} from "./helpers.ts";

const MiB = 1024 * 1024;
const DIR = tempDir("abforge-hostile-repo-");
const STALL_MS = 300;

let w: UpdateWorld;
let bundle2: Buffer;
let bundle3: Buffer;
let bundle09: Buffer;
/** Another build of 2.0.0: same name and version, other bytes, signed by the same key. */
let other2: Buffer;
let slotOffset2: number;
let server: ScriptedServer;
let configPath: string;

// ---------------------------------------------------------------- a scripted server

type Handler = (req: http.IncomingMessage, res: http.ServerResponse, n: number) => void;

interface Request {
  path: string;
  range: string | undefined;
  at: number;
}

class ScriptedServer {
  readonly server: http.Server;
  index: Handler = (_q, res) => res.writeHead(404).end();
  bundle: Handler = (_q, res) => res.writeHead(404).end();
  requests: Request[] = [];
  #counts = new Map<string, number>();
  url = "";

  constructor() {
    this.server = http.createServer((req, res) => {
      const path = new URL(req.url ?? "/", "http://x").pathname;
      this.requests.push({ path, range: req.headers.range, at: Date.now() });
      const n = (this.#counts.get(path) ?? 0) + 1;
      this.#counts.set(path, n);
      res.on("error", () => {});
      if (path === "/channels/stable.json") this.index(req, res, n);
      else if (path.startsWith("/bundles/")) this.bundle(req, res, n);
      else res.writeHead(404).end();
    });
  }

  reset(): void {
    this.requests = [];
    this.#counts.clear();
    this.index = (_q, res) => res.writeHead(404).end();
    this.bundle = (_q, res) => res.writeHead(404).end();
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/`;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/** A static answer with Range support (206 from an offset), as a good static host gives. */
function sendBytes(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  bytes: Uint8Array,
  o: { ignoreRange?: boolean } = {},
): void {
  const etag = `"${sha256(bytes).slice(0, 16)}"`;
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
  if (m && !o.ignoreRange) {
    const start = Number(m[1]);
    if (start >= bytes.length) {
      res.writeHead(416, { "content-range": `bytes */${bytes.length}` }).end();
      return;
    }
    res.writeHead(206, {
      "content-length": bytes.length - start,
      "content-range": `bytes ${start}-${bytes.length - 1}/${bytes.length}`,
      etag,
      "accept-ranges": "bytes",
    });
    res.end(bytes.subarray(start));
    return;
  }
  res.writeHead(200, { "content-length": bytes.length, etag });
  res.end(bytes);
}

/** Send the first `n` bytes of an answer (from the requested offset), then nothing, ever. */
function sendThenStall(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  bytes: Uint8Array,
  n: number,
): void {
  const etag = `"${sha256(bytes).slice(0, 16)}"`;
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
  const start = m ? Number(m[1]) : 0;
  if (m)
    res.writeHead(206, {
      "content-length": bytes.length - start,
      "content-range": `bytes ${start}-${bytes.length - 1}/${bytes.length}`,
      etag,
    });
  else res.writeHead(200, { "content-length": bytes.length, etag });
  res.write(bytes.subarray(start, start + n));
}

/** Bytes for ever (no Content-Length), `head` first. */
function sendEndless(res: http.ServerResponse, head: Uint8Array, fill = 0x20): void {
  res.writeHead(200, { "content-type": "application/octet-stream" });
  res.write(head);
  const block = Buffer.alloc(64 * 1024, fill);
  let sent = 0;
  const pump = () => {
    while (!res.destroyed && sent < 4 * 1024 * MiB) {
      sent += block.length;
      if (!res.write(block)) {
        res.once("drain", pump);
        return;
      }
    }
    res.end();
  };
  pump();
}

// ---------------------------------------------------------------- indexes

interface IndexOptions {
  serial?: number;
  channel?: string;
  version?: string;
  bundle?: Buffer;
  bundlePath?: string;
  expired?: boolean;
  percent?: number;
  size?: number;
  key?: KeyObject;
  edit?: (signed: IndexSigned) => void;
}

/** sha256 of a bundle's manifest.json entry (the index's commitment). */
function manifestSha256(bundle: Buffer): string {
  const m = Number.parseInt(bundle.subarray(124, 135).toString("ascii"), 8);
  return sha256(bundle.subarray(512, 512 + m));
}

function makeIndex(o: IndexOptions = {}): Buffer {
  const bytes = o.bundle ?? bundle2;
  const version = o.version ?? "2.0.0";
  const now = Date.now();
  const issued = o.expired ? now - 10 * 86_400_000 : now - 60_000;
  const expires = o.expired ? now - 86_400_000 : now + 86_400_000;
  const signed: IndexSigned = {
    type: "abforge-channel-index",
    formatVersion: 2,
    channel: o.channel ?? "stable",
    name: "demo",
    compatible: w.compatible,
    serial: o.serial ?? 1,
    issuedAt: new Date(issued).toISOString(),
    expiresAt: new Date(expires).toISOString(),
    latest: {
      version,
      bundle: o.bundlePath ?? `../bundles/demo-${version}.bundle`,
      size: o.size ?? bytes.length,
      sha256: sha256(bytes),
      slotDataOffset: slotOffset2,
      manifestSha256: manifestSha256(bytes),
      minUpdateFrom: "0.0.0",
    },
    rollout: { percent: o.percent ?? 100 },
  };
  const index = signIndex(signed, o.key ?? w.key.privateKey);
  if (o.edit) o.edit(index.signed);
  return Buffer.from(JSON.stringify(index, null, 2));
}

/**
 * An index signed over whatever `signed` holds, without the schema checks of
 * signIndex: what a publisher with the key (or a buggy one) could produce.
 */
function signRaw(signed: IndexSigned, key: KeyObject): Buffer {
  const sig = sign(null, signedBytes(signed), key).toString("base64");
  const keyid = keyId(publicKeyFromPrivate(key));
  return Buffer.from(JSON.stringify({ signed, signatures: [{ keyid, sig }] }, null, 2));
}

// ---------------------------------------------------------------- setup

beforeAll(async () => {
  w = await makeUpdateWorld(DIR, {
    versions: ["0.9.0", "2.0.0", "3.0.0"],
  });
  const p2 = await bundleParts((w.bundles["2.0.0"] as { path: string }).path);
  bundle2 = p2.bytes;
  slotOffset2 = p2.slotOffset;
  bundle3 = (await bundleParts((w.bundles["3.0.0"] as { path: string }).path)).bytes;
  bundle09 = (await bundleParts((w.bundles["0.9.0"] as { path: string }).path)).bytes;
  const img = await makeSlotImage(join(w.dir, "other-2.0.0.img"), {
    version: "2.0.0",
    compatible: w.compatible,
    trustedKeys: [w.key.publicKey],
  });
  other2 = await readFile(
    (await makeBundle(join(w.dir, "other-2.0.0.bundle"), img, w.key.privateKey)).path,
  );
  server = new ScriptedServer();
  await server.listen();
  configPath = join(w.dir, "agent.yaml");
  await writeFile(
    configPath,
    [
      `repoUrl: ${server.url}`,
      "channel: stable",
      `trustedKeys: [${w.key.publicKeyPath}]`,
      `downloadStallTimeoutMs: ${STALL_MS}`,
      "",
    ].join("\n"),
  );
}, 300_000);

const refused: { name: string; code: number; message: string }[] = [];
const survived: { name: string; note: string }[] = [];
afterAll(async () => {
  await server?.close();
  const r = refused.map((x) => `  ${String(x.code).padStart(3)}  ${x.name}: ${x.message}`);
  const s = survived.map((x) => `    0  ${x.name}: ${x.note}`);
  process.stdout.write(
    `\nhostile repositories refused: ${refused.length}; misbehaving servers survived: ${survived.length}\n${[...r, ...s].join("\n")}\n`,
  );
  recordFigure("hostile repositories refused", refused.length);
  recordFigure("misbehaving servers survived (update installed)", survived.length);
});

// ---------------------------------------------------------------- running

let seq = 0;

async function world() {
  const i = seq++;
  const d = await secondUpdateDisk(w, `repo-${i}`);
  const stateDir = join(w.dir, `repo-${i}.state`);
  const args = [
    "agent",
    "check",
    "--config",
    configPath,
    "--disk",
    d.path,
    "--state-dir",
    stateDir,
  ];
  return { d, stateDir, args, before: await diskHashes(d) };
}

type World = Awaited<ReturnType<typeof world>>;

/** A refusal: exit code, message, and nothing changed (or B unbootable for a fault in the slot data). */
async function expectRefused(
  name: string,
  t: World,
  code: number,
  message: RegExp,
  stage: "head" | "data" = "head",
): Promise<void> {
  const r = await runAbforge([...t.args, "--json"]);
  const line = r.proc.errorLine() ?? "";
  expect({ code: r.code, line }).toMatchObject({ code });
  expect(line, line).toMatch(message);
  expect(r.stderr).not.toMatch(/unexpected error|\n\s+at /);
  const after = await diskHashes(t.d);
  expect(after.A).toBe(t.before.A);
  if (stage === "head") {
    expect(after.B, "slot B untouched").toBe(t.before.B);
    expect(after.esp, "boot state untouched").toBe(t.before.esp);
  }
  const g = await checkGuarantees({
    disk: t.d,
    booted: "A",
    bootedSha256: t.before.A,
    stateDir: t.stateDir,
  });
  expect(g.violations).toEqual([]);
  expect(g.next).toBe("A");
  refused.push({ name, code: r.code, message: line.replace(/^abforge: /, "") });
}

/** The update went in: B first, on trial, verified. */
async function expectInstalled(t: World): Promise<void> {
  const boot = await readBootState(t.d.path);
  expect(boot.order).toEqual(["B", "A"]);
  expect(boot.slots.B).toMatchObject({ version: "2.0.0", tries: 3, good: false });
  expect(await slotVerifies(t.d, boot, "B")).toBeNull();
  const g = await checkGuarantees({
    disk: t.d,
    booted: "A",
    bootedSha256: t.before.A,
    stateDir: t.stateDir,
  });
  expect(g.violations).toEqual([]);
}

const serveIndex =
  (bytes: Buffer): Handler =>
  (req, res) =>
    sendBytes(req, res, bytes);
const serveBundle =
  (bytes: Buffer, o: { ignoreRange?: boolean } = {}): Handler =>
  (req, res) =>
    sendBytes(req, res, bytes, o);

describe("abforge agent check against hostile repositories", () => {
  it("refuses an expired index", async () => {
    server.reset();
    server.index = serveIndex(makeIndex({ expired: true }));
    server.bundle = serveBundle(bundle2);
    await expectRefused("an expired channel index", await world(), 61, /expired/i);
  });

  it("refuses a replayed older index, and a second index with the same serial", async () => {
    server.reset();
    const t = await world();
    // Serial 5 is seen first (a 0 % rollout: nothing installed, the serial is recorded).
    server.index = serveIndex(makeIndex({ serial: 5, percent: 0 }));
    const first = await runAbforge([...t.args, "--json"]);
    expect(first.code, first.stderr).toBe(0);
    expect(JSON.parse(first.stdout)).toMatchObject({ outcome: "skipped" });
    t.before = await diskHashes(t.d);
    server.index = serveIndex(makeIndex({ serial: 4 }));
    server.bundle = serveBundle(bundle2);
    await expectRefused("a replayed older index (serial 4 after 5)", t, 62, /serial|replay/i);
    server.index = serveIndex(makeIndex({ serial: 5, percent: 100 }));
    await expectRefused("another index with the same serial (5)", t, 62, /serial|replay|same/i);
    expect(server.requests.filter((r) => r.path.startsWith("/bundles/"))).toEqual([]);
  });

  it("refuses another channel's index served as this channel's", async () => {
    server.reset();
    server.index = serveIndex(makeIndex({ channel: "beta", version: "3.0.0", bundle: bundle3 }));
    server.bundle = serveBundle(bundle3);
    await expectRefused("the beta channel's index as stable's", await world(), 60, /beta/);
  });

  it("refuses an index edited after signing, signed by an unknown key, or not signed", async () => {
    server.reset();
    server.bundle = serveBundle(bundle3);
    server.index = serveIndex(
      makeIndex({
        edit: (s) => {
          s.latest.bundle = "../bundles/demo-3.0.0.bundle";
          s.latest.version = "3.0.0";
        },
      }),
    );
    await expectRefused(
      "an index pointed at another bundle after signing",
      await world(),
      68,
      /signature|trusted/i,
    );
    server.index = serveIndex(makeIndex({ key: w.untrusted.privateKey }));
    await expectRefused("an index signed by an unknown key", await world(), 68, /trusted|key/i);
    const unsigned = JSON.parse(makeIndex().toString()) as { signatures: unknown[] };
    unsigned.signatures = [];
    server.index = serveIndex(Buffer.from(JSON.stringify(unsigned)));
    await expectRefused("an index without signatures", await world(), 60, /signatures/i);
  });

  it("refuses a signed index whose bundle path leaves the repository", async () => {
    server.reset();
    const index = JSON.parse(makeIndex().toString()) as { signed: IndexSigned };
    index.signed.latest.bundle = "../../etc/demo-2.0.0.bundle";
    server.index = serveIndex(signRaw(index.signed, w.key.privateKey));
    server.bundle = serveBundle(bundle2);
    await expectRefused(
      "a signed index with bundle ../../etc/…",
      await world(),
      60,
      /bundle|escapes|repository/i,
    );
  });

  it("refuses a validly signed bundle that is not the one the index names", async () => {
    server.reset();
    // The stable index names 2.0.0 (its manifest's digest); the server answers with
    // beta's 3.0.0, the older 0.9.0, or another build of 2.0.0, all signed by the key.
    server.index = serveIndex(makeIndex());
    const named = /is not the bundle the signed channel index names .*manifest sha256/;
    server.bundle = serveBundle(bundle3);
    await expectRefused("another channel's bundle at the path", await world(), 83, named);
    server.bundle = serveBundle(bundle09);
    await expectRefused("an older bundle put at the path", await world(), 83, named);
    server.bundle = serveBundle(other2);
    await expectRefused(
      "the same name and version with other bytes",
      await world(),
      83,
      /\(demo 2\.0\.0: manifest sha256 [0-9a-f]{64}, the index names [0-9a-f]{64}/,
    );
  });

  it("refuses a format 1 index, which does not commit to the bundle's manifest", async () => {
    server.reset();
    const index = JSON.parse(makeIndex().toString()) as { signed: IndexSigned };
    index.signed.formatVersion = 1;
    delete index.signed.latest.manifestSha256;
    server.index = serveIndex(signRaw(index.signed, w.key.privateKey));
    server.bundle = serveBundle(bundle2);
    await expectRefused("a format 1 index", await world(), 60, /format 1, which does not commit/);
    expect(server.requests.filter((r) => r.path.startsWith("/bundles/"))).toEqual([]);
  });

  it("refuses an index that is not JSON, and a failing server", async () => {
    server.reset();
    server.index = (_q, res) =>
      res.writeHead(200, { "content-type": "text/html" }).end("<html>maintenance</html>");
    await expectRefused("an HTML page as the index", await world(), 60, /JSON/);
    server.index = (_q, res) => res.writeHead(503).end("busy");
    await expectRefused("a server answering 503", await world(), 65, /503/);
    expect(server.requests.filter((r) => r.path.endsWith("stable.json")).length).toBe(1 + 3);
  });

  it("cuts off a server that sends an endless index, announced or not", async () => {
    server.reset();
    server.index = (_q, res) => sendEndless(res, Buffer.from('{"signed": "'));
    await expectRefused("an endless index", await world(), 66, /1048576|bytes|large/i);
    server.index = (_q, res) => {
      res.writeHead(200, { "content-length": 10 * 1024 * MiB });
      res.write("{");
    };
    await expectRefused("an index announcing 10 GiB", await world(), 66, /10737418240|large/i);
  });

  it("cuts off a server that sends an endless bundle", async () => {
    server.reset();
    server.index = serveIndex(makeIndex());
    server.bundle = (_q, res) => sendEndless(res, bundle2, 0);
    await expectRefused(
      "the bundle followed by endless zeros",
      await world(),
      75,
      /more than the limit/,
      "data",
    );
  });

  it("refuses a Content-Range that does not start where asked", async () => {
    server.reset();
    server.index = serveIndex(makeIndex());
    server.bundle = (req, res, n) => {
      if (n === 1) sendThenStall(req, res, bundle2, 1.5 * MiB);
      else {
        // answers a Range request with bytes from elsewhere in the file
        res.writeHead(206, {
          "content-length": bundle2.length - 4096,
          "content-range": `bytes 4096-${bundle2.length - 1}/${bundle2.length}`,
          etag: `"${sha256(bundle2).slice(0, 16)}"`,
        });
        res.end(bundle2.subarray(4096));
      }
    };
    await expectRefused(
      "a 206 answer from another offset",
      await world(),
      75,
      /asked for bytes from \d+, the server sent from 4096/,
      "data",
    );
  });

  it("a download that fails inside the first chunk changes nothing (B stays the fallback)", async () => {
    server.reset();
    server.index = serveIndex(makeIndex());
    // 1000 bytes of the slot image, then silence (a stall); the retry is answered 404
    server.bundle = (req, res, n) => {
      if (n === 1) sendThenStall(req, res, bundle2, slotOffset2 + 1000);
      else res.writeHead(404).end();
    };
    await expectRefused(
      "a download that fails in chunk 0",
      await world(),
      75,
      /failed in chunk 0 of 3: .*HTTP 404.*; nothing written: slot B and the boot state are as they were/,
    );
  });

  it("refuses a signed index whose size is smaller than the bundle", async () => {
    server.reset();
    server.index = serveIndex(makeIndex({ size: bundle2.length - MiB }));
    server.bundle = serveBundle(bundle2);
    await expectRefused(
      "an index announcing a smaller bundle than served",
      await world(),
      66,
      /more than the limit/,
    );
  });

  it("gives up on a server that never sends the index (stall timeouts, retries)", async () => {
    server.reset();
    server.index = (_q, res) => {
      res.writeHead(200, { "content-length": 1000 });
      res.write("{");
    };
    const t0 = Date.now();
    await expectRefused("an index that stalls", await world(), 67, /stall|no byte|\d+ ms/i);
    const tries = server.requests.filter((r) => r.path.endsWith("stable.json"));
    expect(tries.length).toBe(3);
    // back-off between attempts: 1 s, then 2 s
    const gaps = tries.slice(1).map((r, i) => r.at - (tries[i] as Request).at);
    expect(gaps[0]).toBeGreaterThanOrEqual(1000 + STALL_MS - 50);
    expect(gaps[1]).toBeGreaterThanOrEqual(2000 + STALL_MS - 50);
    expect(Date.now() - t0).toBeLessThan(20_000);
  });
});

describe("abforge agent check survives misbehaving servers", () => {
  it("a server that stalls twice mid-bundle: stall timeout, retry with Range after a growing back-off", async () => {
    server.reset();
    server.index = serveIndex(makeIndex());
    // 1st answer: 1.5 MiB then silence; 2nd: headers, no byte; 3rd: the rest.
    server.bundle = (req, res, n) => {
      if (n === 1) sendThenStall(req, res, bundle2, 1.5 * MiB);
      else if (n === 2) sendThenStall(req, res, bundle2, 0);
      else sendBytes(req, res, bundle2);
    };
    const t = await world();
    const r = await runAbforge([...t.args, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ outcome: "installed", version: "2.0.0" });
    await expectInstalled(t);
    const gets = server.requests.filter((q) => q.path.startsWith("/bundles/"));
    expect(gets.map((q) => q.range)).toEqual([
      undefined,
      `bytes=${1.5 * MiB}-`,
      `bytes=${1.5 * MiB}-`,
    ]);
    const gaps = gets.slice(1).map((q, i) => q.at - (gets[i] as Request).at);
    expect(gaps[0]).toBeGreaterThanOrEqual(1000 + STALL_MS - 50);
    expect(gaps[1]).toBeGreaterThanOrEqual(2000 + STALL_MS - 50);
    survived.push({
      name: "a server that stalls twice in the bundle",
      note: `retried with Range after ${gaps.map((g) => `${g} ms`).join(", ")}; installed and verified`,
    });
  });

  it("a server that ignores Range: the client skips what it has", async () => {
    server.reset();
    server.index = serveIndex(makeIndex());
    server.bundle = (req, res, n) => {
      if (n === 1) sendThenStall(req, res, bundle2, 1.5 * MiB);
      else sendBytes(req, res, bundle2, { ignoreRange: true });
    };
    const t = await world();
    const r = await runAbforge([...t.args, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    await expectInstalled(t);
    const gets = server.requests.filter((q) => q.path.startsWith("/bundles/"));
    expect(gets.map((q) => q.range)).toEqual([undefined, `bytes=${1.5 * MiB}-`]);
    survived.push({
      name: "a server that ignores Range (after a stall)",
      note: "the 200 answer's first bytes skipped; installed and verified",
    });
  });

  it("a server that ignores Range, on the resume after a kill -9", async () => {
    server.reset();
    server.index = serveIndex(makeIndex());
    server.bundle = (req, res, n) => {
      if (n === 1) sendThenStall(req, res, bundle2, slotOffset2 + 2 * MiB + 100);
      else sendBytes(req, res, bundle2, { ignoreRange: true });
    };
    const t = await world();
    // A config with a long stall timeout, so the first run waits at the stall until killed.
    const slow = join(w.dir, "agent-slow.yaml");
    await writeFile(
      slow,
      `repoUrl: ${server.url}\nchannel: stable\ntrustedKeys: [${w.key.publicKeyPath}]\n`,
    );
    const args = t.args.map((a) => (a === configPath ? slow : a));
    const p = new AgentProcess(args);
    for (;;) {
      await sleep(50);
      const s = await readState(t.stateDir);
      if (s?.progress?.verifiedChunks === 2 || !p.alive) break;
    }
    p.kill();
    expect((await p.exited).signal).toBe("SIGKILL");
    const g = await checkGuarantees({
      disk: t.d,
      booted: "A",
      bootedSha256: t.before.A,
      stateDir: t.stateDir,
    });
    expect(g.violations).toEqual([]);
    const r = await runAbforge([...t.args, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.proc.lines.some((l) => /^resuming 2\.0\.0 at chunk 2 /.test(l.msg ?? ""))).toBe(true);
    await expectInstalled(t);
    const gets = server.requests.filter((q) => q.path.startsWith("/bundles/"));
    // first run: from 0; second run: the head again, then the rest from chunk 2 (answered 200)
    expect(gets.map((q) => q.range)).toEqual([
      undefined,
      undefined,
      `bytes=${slotOffset2 + 2 * MiB}-`,
    ]);
    survived.push({
      name: "a server that ignores Range, resuming after kill -9",
      note: "resumed at chunk 2 from a 200 answer; installed and verified",
    });
  });
});

async function readState(dir: string): Promise<{ progress?: { verifiedChunks?: number } } | null> {
  try {
    return JSON.parse(await readFile(join(dir, "state.json"), "utf8"));
  } catch {
    return null;
  }
}
