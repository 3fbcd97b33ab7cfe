// The reboot lock against real etcd servers (Debian's /usr/bin/etcd, on
// 127.0.0.1 random ports): src/lock/README.md's procedures, its staleness
// rule and its failure behaviour. Each test uses its own group, so they
// share one server.
import { createServer as createHttpServer, request } from "node:http";
import { createServer as createTcpServer, type Server, type Socket } from "node:net";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  EtcdGateway,
  RebootLock,
  type RebootLockOptions,
  recordKey,
} from "../../../src/lock/index.ts";
import { FakeClock } from "../../helpers/clock.ts";
import { rejection } from "../../helpers/errors.ts";
import { type EtcdCluster, generateTls, startEtcd, startEtcdCluster } from "../../helpers/etcd.ts";
import { tempDir } from "../../helpers/tmp.ts";

interface Line {
  level: number;
  msg: string;
  [k: string]: unknown;
}

function captureLog(): { log: pino.Logger; lines: Line[] } {
  const lines: Line[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split("\n")) if (l.trim()) lines.push(JSON.parse(l) as Line);
      cb();
    },
  });
  return { log: pino({ level: "debug", base: undefined }, sink), lines };
}

let etcd: EtcdCluster;
let groups = 0;

beforeAll(async () => {
  etcd = await startEtcd();
});
afterAll(async () => {
  await etcd?.stop();
});

function lock(o: Partial<RebootLockOptions> & { group: string | null }) {
  const { log, lines } = captureLog();
  const l = new RebootLock({ endpoints: etcd.endpoints, lockTTLMs: 60_000, log, ...o });
  return { l, lines };
}

function group(): string {
  return `g${++groups}-${process.pid}`;
}

/** The raw key as etcd holds it, through a client of its own. */
async function raw(endpoints: string[], key: string) {
  const g = new EtcdGateway({ endpoints });
  const [kv] = await g.range(key);
  return kv && { ...kv, text: new TextDecoder().decode(kv.value) };
}

async function put(endpoints: string[], key: string, value: string): Promise<void> {
  const g = new EtcdGateway({ endpoints });
  const t = await g.txn([], [{ put: { key, value: new TextEncoder().encode(value) } }], key);
  expect(t.succeeded).toBe(true);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("acquire and release (README.md, Acquire, Release)", () => {
  it("a missing key is created with max 1, in locksmith's JSON, with the holder's record", async () => {
    const g = group();
    const { l } = lock({ group: g });
    const key = `coreos.com/updateengine/rebootlock/groups/${g}/semaphore`;
    expect(l.key).toBe(key);
    const before = await l.status();
    expect(before).toEqual({
      key,
      exists: false,
      semaphore: { semaphore: 1, max: 1, holders: [] },
      holders: [],
    });
    expect(await raw(etcd.endpoints, key)).toBeUndefined(); // status does not create it

    const a = await l.acquire("aaaa");
    expect(a).toEqual({
      acquired: true,
      semaphore: { semaphore: 0, max: 1, holders: ["aaaa"] },
      removedStale: [],
    });
    expect((await raw(etcd.endpoints, key))?.text).toBe(
      '{"semaphore":0,"max":1,"holders":["aaaa"],"leased":["aaaa"]}',
    );
    const rec = await raw(etcd.endpoints, recordKey(key, "aaaa"));
    expect(rec?.text).toBe('{"machineID":"aaaa"}');
    expect(rec?.lease).not.toBe("0");

    // full: a second host does not get a place, and nothing is written
    const rev = (await raw(etcd.endpoints, key))?.modRevision;
    const b = await l.acquire("bbbb");
    expect(b.acquired).toBe(false);
    expect((await raw(etcd.endpoints, key))?.modRevision).toBe(rev);

    expect(await l.release("aaaa")).toEqual({
      released: true,
      semaphore: { semaphore: 1, max: 1, holders: [] },
    });
    expect((await raw(etcd.endpoints, key))?.text).toBe('{"semaphore":1,"max":1,"holders":[]}');
    expect(await raw(etcd.endpoints, recordKey(key, "aaaa"))).toBeUndefined();
    expect((await l.acquire("bbbb")).acquired).toBe(true);
  });

  it("the default key and a group's are separate", async () => {
    const { l: def } = lock({ group: null });
    const { l: grp } = lock({ group: group() });
    expect(def.key).toBe("coreos.com/updateengine/rebootlock/semaphore");
    await def.setMax(1);
    expect((await grp.acquire("h1")).acquired).toBe(true);
    expect((await def.status()).semaphore.holders).toEqual([]);
    expect((await def.acquire("h2")).acquired).toBe(true);
    await def.release("h2");
  });

  it("acquire by a holder is acquired again (a retry after a crash) and renews its record", async () => {
    const { l } = lock({ group: group() });
    await l.acquire("h1");
    const first = await raw(etcd.endpoints, recordKey(l.key, "h1"));
    const again = await l.acquire("h1");
    expect(again).toEqual({
      acquired: true,
      semaphore: { semaphore: 0, max: 1, holders: ["h1"] },
      removedStale: [],
    });
    const second = await raw(etcd.endpoints, recordKey(l.key, "h1"));
    expect(second?.lease).not.toBe(first?.lease);
    expect((await l.status()).holders).toEqual([
      { id: "h1", stale: false, ttlRemainingMs: expect.any(Number) },
    ]);
  });

  it("release when not a holder is a no-op that writes nothing", async () => {
    const { l } = lock({ group: group() });
    await l.setMax(2);
    await l.acquire("h1");
    const rev = (await raw(etcd.endpoints, l.key))?.modRevision;
    expect(await l.release("nobody")).toEqual({
      released: false,
      semaphore: { semaphore: 1, max: 2, holders: ["h1"] },
    });
    expect((await raw(etcd.endpoints, l.key))?.modRevision).toBe(rev);
    const { l: missing } = lock({ group: group() });
    expect((await missing.release("h1")).released).toBe(false);
    expect(await raw(etcd.endpoints, missing.key)).toBeUndefined();
  });

  it("five hosts racing for max 2: never more than 2 hold a place, and every place comes back", async () => {
    const g = group();
    await lock({ group: g }).l.setMax(2);
    let holding = 0;
    let most = 0;
    let rounds = 0;
    const host = async (id: string) => {
      const { l } = lock({ group: g });
      for (let round = 0; round < 4; round++) {
        for (let tries = 0; ; tries++) {
          if (tries > 400) throw new Error(`${id} never got a place`);
          if ((await l.acquire(id)).acquired) break;
          await sleep(5);
        }
        holding++;
        most = Math.max(most, holding);
        expect(holding).toBeLessThanOrEqual(2);
        expect((await l.status()).semaphore.holders.length).toBeLessThanOrEqual(2);
        await sleep(15);
        holding--;
        expect((await l.release(id)).released).toBe(true);
        rounds++;
      }
    };
    await Promise.all(["h1", "h2", "h3", "h4", "h5"].map(host));
    expect(rounds).toBe(20);
    expect(most).toBe(2);
    expect((await lock({ group: g }).l.status()).semaphore).toEqual({
      semaphore: 2,
      max: 2,
      holders: [],
    });
  });
});

/**
 * A proxy in front of the test etcd that runs `before` ahead of every
 * conditional transaction it forwards: another host writing between a
 * host's read and its compare-and-swap, every time.
 */
async function interfering(before: () => Promise<void>) {
  const target = new URL(etcd.endpoints[0] as string);
  let conditional = 0;
  const proxy = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", async () => {
      const body = Buffer.concat(chunks);
      if (req.url === "/v3/kv/txn" && (JSON.parse(body.toString()).compare ?? []).length > 0) {
        conditional++;
        await before();
      }
      const fwd = request(
        {
          host: target.hostname,
          port: target.port,
          path: req.url,
          method: req.method,
          headers: req.headers,
        },
        (up) => {
          res.writeHead(up.statusCode ?? 502, up.headers);
          up.pipe(res);
        },
      );
      fwd.end(body);
    });
  });
  await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
  const a = proxy.address();
  return {
    endpoint: `http://127.0.0.1:${typeof a === "object" && a ? a.port : 0}`,
    conditionalTxns: () => conditional,
    close: () => new Promise((r) => proxy.close(r)),
  };
}

describe("compare-and-swap (README.md, Acquire 5)", () => {
  it("another host taking the last place between the read and the write: the write loses, and the re-read sees it full", async () => {
    const g = group();
    const { l: other } = lock({ group: g });
    let once = false;
    const p = await interfering(async () => {
      if (once) return;
      once = true;
      expect((await other.acquire("other")).acquired).toBe(true);
    });
    try {
      const { log } = captureLog();
      const l = new RebootLock({ endpoints: [p.endpoint], group: g, lockTTLMs: 60_000, log });
      expect(await l.acquire("me")).toEqual({
        acquired: false,
        semaphore: { semaphore: 0, max: 1, holders: ["other"] },
        removedStale: [],
      });
      expect(p.conditionalTxns()).toBe(1);
    } finally {
      await p.close();
    }
  });

  it("losing every compare: REBOOT_LOCK_CONFLICT after a bounded number of backoffs, nothing written", async () => {
    const g = group();
    const { l: other } = lock({ group: g });
    await other.setMax(2);
    const before = (await raw(etcd.endpoints, other.key))?.text ?? "";
    const p = await interfering(() => put(etcd.endpoints, other.key, before)); // same value, new revision
    try {
      const { log } = captureLog();
      const clock = new FakeClock({ autoAdvance: true });
      const l = new RebootLock({
        endpoints: [p.endpoint],
        group: g,
        lockTTLMs: 60_000,
        log,
        clock,
        random: () => 0.999,
        maxAttempts: 4,
      });
      const e = await rejection(l.acquire("me"));
      expect(e.code).toBe("REBOOT_LOCK_CONFLICT");
      expect(e.message).toContain(other.key);
      expect(e.message).toContain(p.endpoint);
      expect(p.conditionalTxns()).toBe(4);
      expect(clock.sleeps).toEqual([19, 39, 79]); // jittered exponential, below 1 s
      expect((await raw(etcd.endpoints, other.key))?.text).toBe(before);
      expect(await raw(etcd.endpoints, recordKey(other.key, "me"))).toBeUndefined();
    } finally {
      await p.close();
    }
  });
});

describe("stale holders (README.md, Staleness)", () => {
  it("a holder whose record's lease expired is removed by the next host that finds the semaphore full, and logged", async () => {
    const g = group();
    const { l: a } = lock({ group: g, lockTTLMs: 2000 });
    const { l: b, lines } = lock({ group: g, lockTTLMs: 2000 });
    expect((await a.acquire("gone")).acquired).toBe(true);
    expect((await b.acquire("next")).acquired).toBe(false); // its lease is alive
    // wait (bounded) for etcd to expire the lease and delete the record
    for (let i = 0; (await raw(etcd.endpoints, recordKey(a.key, "gone"))) !== undefined; i++) {
      if (i > 100) throw new Error("the record's lease never expired");
      await sleep(100);
    }
    expect((await b.status()).holders).toEqual([{ id: "gone", stale: true, ttlRemainingMs: 0 }]);
    const r = await b.acquire("next");
    expect(r).toEqual({
      acquired: true,
      semaphore: { semaphore: 0, max: 1, holders: ["next"] },
      removedStale: ["gone"],
    });
    expect(lines.map((l) => l.msg)).toContain(
      "removed stale holder gone (no confirmation within TTL)",
    );
    // the stale host coming back: it is no longer a holder; release is harmless
    expect((await a.release("gone")).released).toBe(false);
  });

  it("holders without a record (taken by locksmith) are never removed automatically", async () => {
    const g = group();
    const { l } = lock({ group: g });
    await put(etcd.endpoints, l.key, '{"semaphore":0,"max":2,"holders":["ls1","ls2"]}');
    const r = await l.acquire("new");
    expect(r).toEqual({
      acquired: false,
      semaphore: { semaphore: 0, max: 2, holders: ["ls1", "ls2"] },
      removedStale: [],
    });
    expect((await raw(etcd.endpoints, l.key))?.text).toBe(
      '{"semaphore":0,"max":2,"holders":["ls1","ls2"]}',
    );
    expect((await l.status()).holders).toEqual([
      { id: "ls1", stale: null, ttlRemainingMs: null },
      { id: "ls2", stale: null, ttlRemainingMs: null },
    ]);
    // the operator removes one (locksmithctl unlock): then a host gets its place
    expect((await l.unlock("ls1")).released).toBe(true);
    expect((await l.acquire("new")).semaphore.holders).toEqual(["ls2", "new"]);
  });
});

describe("bad values (README.md, Value)", () => {
  it("are a typed error for acquire, release and status, never overwritten; set-max repairs them", async () => {
    const { l } = lock({ group: group() });
    await put(etcd.endpoints, l.key, '{"semaphore":5,"max":1,"holders":["keep",7]}');
    for (const call of [() => l.acquire("h1"), () => l.release("keep"), () => l.status()]) {
      const e = await rejection(call());
      expect(e.code).toBe("REBOOT_LOCK_BAD_VALUE");
      expect(e.message).toContain(l.key);
    }
    expect((await raw(etcd.endpoints, l.key))?.text).toBe(
      '{"semaphore":5,"max":1,"holders":["keep",7]}',
    );
    expect(await l.setMax(2)).toEqual({ semaphore: 1, max: 2, holders: ["keep"] });
    expect((await l.acquire("h1")).acquired).toBe(true);

    await put(etcd.endpoints, l.key, "not json at all");
    expect((await rejection(l.acquire("h1"))).code).toBe("REBOOT_LOCK_BAD_VALUE");
    expect(await l.setMax(1)).toEqual({ semaphore: 1, max: 1, holders: [] });
  });

  it("set-max below the holders leaves them, with free places below zero, as locksmith does", async () => {
    const { l } = lock({ group: group() });
    await l.setMax(3);
    await l.acquire("a");
    await l.acquire("b");
    expect(await l.setMax(1)).toEqual({ semaphore: -1, max: 1, holders: ["a", "b"] });
    expect((await l.acquire("c")).acquired).toBe(false);
    await l.release("a");
    expect((await l.acquire("c")).acquired).toBe(false);
    await l.release("b");
    expect((await l.acquire("c")).acquired).toBe(true);
  });
});

describe("failures (README.md, Failures)", () => {
  it("etcd stopped: REBOOT_LOCK_UNREACHABLE naming the endpoint and the key; started again, the same data", async () => {
    const own = await startEtcd();
    try {
      const { log } = captureLog();
      const l = new RebootLock({ endpoints: own.endpoints, group: null, lockTTLMs: 60_000, log });
      await l.acquire("h1");
      await own.members[0]?.stop();
      const e = await rejection(l.acquire("h2"));
      expect(e.code).toBe("REBOOT_LOCK_UNREACHABLE");
      expect(e.message).toContain(own.endpoints[0]);
      expect(e.message).toContain("coreos.com/updateengine/rebootlock/semaphore");
      expect((await rejection(l.release("h1"))).code).toBe("REBOOT_LOCK_UNREACHABLE");
      await own.members[0]?.start();
      expect((await l.status()).semaphore.holders).toEqual(["h1"]);
      expect((await l.release("h1")).released).toBe(true);
    } finally {
      await own.stop();
    }
  });

  it("endpoints that hang, are not etcd, or answer too much are skipped for the next one", async () => {
    const sockets: Socket[] = [];
    const hang = createTcpServer((s) => sockets.push(s)); // accepts, never answers
    const notEtcd = createHttpServer((_req, res) => res.end("<html>hello</html>"));
    const huge = createHttpServer((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(`{"kvs":[],"pad":"${"x".repeat(2 * 1024 * 1024)}"}`);
    });
    const listen = (s: Server) =>
      new Promise<string>((resolve) =>
        s.listen(0, "127.0.0.1", () => {
          const a = s.address();
          resolve(`http://127.0.0.1:${typeof a === "object" && a ? a.port : 0}`);
        }),
      );
    const [h, n, z] = [await listen(hang), await listen(notEtcd), await listen(huge)];
    try {
      const { log, lines } = captureLog();
      const endpoints = [h, n, z, ...etcd.endpoints];
      const l = new RebootLock({
        endpoints,
        group: group(),
        lockTTLMs: 60_000,
        timeoutMs: 300,
        log,
      });
      expect((await l.acquire("h1")).acquired).toBe(true);
      const warn = lines.find((x) => x.msg === "etcd endpoints failed before one answered");
      expect(warn?.failures).toEqual([
        `${h}: no answer within 300 ms`,
        `${n}: HTTP 200, not JSON (is it etcd?)`,
        expect.stringMatching(new RegExp(`^${z}: response larger than 1048576 bytes`)),
      ]);
      // the one that answered is tried first from now on
      lines.length = 0;
      expect((await l.release("h1")).released).toBe(true);
      expect(lines.find((x) => x.msg.startsWith("etcd endpoints failed"))).toBeUndefined();

      const only = new RebootLock({
        endpoints: [h],
        group: null,
        lockTTLMs: 60_000,
        timeoutMs: 300,
        log,
      });
      const e = await rejection(only.status());
      expect(e.code).toBe("REBOOT_LOCK_UNREACHABLE");
      expect(e.message).toContain(`${h}: no answer within 300 ms`);
    } finally {
      for (const s of sockets) s.destroy();
      await Promise.all([hang, notEtcd, huge].map((s) => new Promise((r) => s.close(r))));
    }
  });

  it("a 3-member cluster with a member killed: acquire and release go on through the endpoint list", async () => {
    const cluster = await startEtcdCluster(3);
    try {
      const { log } = captureLog();
      const o = { endpoints: cluster.endpoints, group: "cluster", lockTTLMs: 60_000, log };
      const l = new RebootLock(o);
      await l.setMax(2);
      expect((await l.acquire("h1")).acquired).toBe(true);
      await cluster.members[0]?.kill();
      expect((await l.acquire("h2")).acquired).toBe(true);
      expect((await l.release("h1")).released).toBe(true);
      // a host that starts now, with the dead member first in its list
      const fresh = new RebootLock(o);
      expect((await fresh.acquire("h3")).semaphore.holders).toEqual(["h2", "h3"]);
      await cluster.members[1]?.kill(); // no quorum: the lock is unreachable, never granted
      const e = await rejection(new RebootLock({ ...o, timeoutMs: 1000 }).release("h2"));
      expect(e.code).toBe("REBOOT_LOCK_UNREACHABLE");
      await cluster.members[0]?.start();
      expect((await fresh.status()).semaphore.holders).toEqual(["h2", "h3"]);
    } finally {
      await cluster.stop();
    }
  });
});

describe("TLS (README.md, TLS)", () => {
  it("with --cacert/--cert/--key it works; without the client certificate, or the CA, a clear error", async () => {
    const tls = generateTls(tempDir("abforge-etcd-tls-"));
    const secure = await startEtcd({
      tls: {
        certFile: tls.serverCertFile,
        keyFile: tls.serverKeyFile,
        caFile: tls.caFile,
        clientCertAuth: true,
        clientCertFile: tls.clientCertFile,
        clientKeyFile: tls.clientKeyFile,
      },
    });
    try {
      const { log, lines } = captureLog();
      const base = { endpoints: secure.endpoints, group: null, lockTTLMs: 60_000, log };
      expect(secure.endpoints[0]).toMatch(/^https:/);
      const l = new RebootLock({
        ...base,
        ca: tls.caFile,
        cert: tls.clientCertFile,
        key: tls.clientKeyFile,
      });
      expect((await l.acquire("h1")).acquired).toBe(true);

      const noCert = await rejection(new RebootLock({ ...base, ca: tls.caFile }).status());
      expect(noCert.code).toBe("REBOOT_LOCK_UNREACHABLE");
      expect(noCert.message).toContain(secure.endpoints[0]);
      expect(noCert.message).toContain("the server wants a client certificate: --cert and --key");

      const noCa = await rejection(
        new RebootLock({ ...base, cert: tls.clientCertFile, key: tls.clientKeyFile }).status(),
      );
      expect(noCa.code).toBe("REBOOT_LOCK_UNREACHABLE");
      expect(noCa.message).toContain("(is --ca the CA that signed the server's certificate?)");
      expect(noCa.message).not.toContain("--use-system-ca");

      const missing = await rejection(
        new RebootLock({ ...base, ca: "/nonexistent/ca.pem" }).status(),
      );
      expect(missing.code).toBe("IO_ERROR");
      expect(missing.message).toContain("/nonexistent/ca.pem (--cacert)");
      // the key's contents are never logged
      const keyPem = (await import("node:fs")).readFileSync(tls.clientKeyFile, "utf8");
      const body = keyPem.split("\n")[1] ?? "";
      expect(body.length).toBeGreaterThan(20);
      expect(JSON.stringify(lines)).not.toContain(body);
      expect(noCert.message + noCa.message).not.toContain(body);
    } finally {
      await secure.stop();
    }
  });
});
