// The pure parts of src/lock: locksmith's key and value (README.md, "Key",
// "Value") and the compare-and-swap plans ("Acquire", "Release", "Operator").
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { endpointProblem, parseTxn, prefixEnd } from "../../../src/lock/etcd.ts";
import {
  compares,
  MAX_STALE_PER_WRITE,
  planAcquire,
  planRelease,
  planSetMax,
  type Snapshot,
  toSnapshot,
} from "../../../src/lock/plan.ts";
import {
  decodeSemaphore,
  encodeSemaphore,
  holderIdProblem,
  queryEscape,
  recordKey,
  type SemaphoreValue,
  salvageHolders,
  semaphoreKey,
} from "../../../src/lock/semaphore.ts";
import { caught } from "../../helpers/errors.ts";

const K = "coreos.com/updateengine/rebootlock/semaphore";
const text = (b: Uint8Array) => new TextDecoder().decode(b);
const bytes = (s: string) => new TextEncoder().encode(s);
const decode = (s: string) => decodeSemaphore(bytes(s), { key: K });

describe("keys (README.md, Key)", () => {
  it("are locksmith's, the group query-escaped as Go's url.QueryEscape", () => {
    expect(semaphoreKey(null)).toBe(K);
    expect(semaphoreKey("")).toBe(K);
    expect(semaphoreKey("workers")).toBe(
      "coreos.com/updateengine/rebootlock/groups/workers/semaphore",
    );
    expect(semaphoreKey("a b/c?é~_.-")).toBe(
      "coreos.com/updateengine/rebootlock/groups/a+b%2Fc%3F%C3%A9~_.-/semaphore",
    );
    expect(recordKey(K, "69d2/x")).toBe(`${K}/holders/69d2%2Fx`);
    expect(queryEscape("+&=")).toBe("%2B%26%3D");
  });

  it("a prefix range ends at the prefix with its last byte + 1", () => {
    expect(prefixEnd("a/holders/").toString()).toBe("a/holders0");
    expect([...prefixEnd("a\u00ff")]).toEqual([0x61, 0xc3, 0xc0]);
  });

  it("holder ids: empty, too long or with control characters are refused", () => {
    expect(holderIdProblem("69d27b356a94476da859461d3a3bc6fd")).toBeUndefined();
    expect(holderIdProblem("")).toMatch(/empty/);
    expect(holderIdProblem("x".repeat(257))).toMatch(/256/);
    expect(holderIdProblem("a\nb")).toMatch(/control/);
  });
});

describe("value codec (README.md, Value)", () => {
  it("reads what locksmith writes: its initial value with holders null, its README's indented form", () => {
    expect(decode('{"semaphore":1,"max":1,"holders":null}')).toEqual({
      semaphore: 1,
      max: 1,
      holders: [],
      leased: [],
    });
    expect(
      decode(
        '{\n\t"semaphore": 0,\n\t"max": 1,\n\t"holders": [\n\t\t"69d27b356a94476da859461d3a3bc6fd"\n\t]\n}',
      ),
    ).toEqual({ semaphore: 0, max: 1, holders: ["69d27b356a94476da859461d3a3bc6fd"], leased: [] });
  });

  it("writes Go's encoding/json bytes: field order, no spaces, sorted holders, <>& escaped", () => {
    const v = (holders: string[], leased: string[] = []): SemaphoreValue => ({
      semaphore: 3 - holders.length,
      max: 3,
      holders,
      leased,
    });
    expect(text(encodeSemaphore(v([])))).toBe('{"semaphore":3,"max":3,"holders":[]}');
    expect(text(encodeSemaphore(v(["b", "a"])))).toBe(
      '{"semaphore":1,"max":3,"holders":["a","b"]}',
    );
    // Go's sort.Strings: by UTF-8 bytes (uppercase before lowercase, é after z)
    expect(text(encodeSemaphore(v(["é", "b", "B"])))).toBe(
      '{"semaphore":0,"max":3,"holders":["B","b","é"]}',
    );
    expect(text(encodeSemaphore(v(["a<b>&c"])))).toBe(
      '{"semaphore":2,"max":3,"holders":["a\\u003cb\\u003e\\u0026c"]}',
    );
    expect(text(encodeSemaphore(v(["y", "x"], ["y", "x", "gone"])))).toBe(
      '{"semaphore":1,"max":3,"holders":["x","y"],"leased":["x","y"]}',
    );
  });

  it("ignores unknown fields, as Go does, and drops leased entries that are not holders", () => {
    expect(
      decode('{"semaphore":0,"max":1,"holders":["a"],"leased":["a","b"],"x":{"y":1}}'),
    ).toEqual({ semaphore: 0, max: 1, holders: ["a"], leased: ["a"] });
  });

  it("rejects what is not a consistent semaphore, naming every problem and the key", () => {
    const bad = (s: string) =>
      caught(() => decode(s)) as { code: string; message: string; details: { problems: string[] } };
    for (const s of ["", "not json", "[1]", "null", '"x"', "\xff"]) {
      expect(bad(s).code).toBe("REBOOT_LOCK_BAD_VALUE");
    }
    const e = bad('{"semaphore":"1","max":-1,"holders":["a",2,"a",""]}');
    expect(e.code).toBe("REBOOT_LOCK_BAD_VALUE");
    expect(e.message).toContain(K);
    expect(e.details.problems).toEqual([
      "semaphore is not an integer",
      "max is not an integer of 0 or more",
      "holders[1] is not a non-empty string",
      "holders[3] is not a non-empty string",
      "holders has duplicates",
    ]);
    expect(bad('{"semaphore":1,"max":1}').details.problems).toEqual(["holders is missing"]);
    expect(bad('{"semaphore":1.5,"max":2,"holders":[]}').details.problems).toEqual([
      "semaphore is not an integer",
    ]);
    expect(bad('{"semaphore":1,"max":2,"holders":{}}').details.problems).toEqual([
      "holders is not a list",
    ]);
    expect(bad('{"semaphore":1,"max":1,"holders":["a"]}').details.problems[0]).toMatch(
      /semaphore 1 is not max 1 minus 1 holder/,
    );
  });

  it("round-trips every valid value (fuzzed)", () => {
    const holder = fc.string({ minLength: 1, maxLength: 12 });
    fc.assert(
      fc.property(
        fc.uniqueArray(holder, { maxLength: 6 }),
        fc.nat(8),
        fc.nat(),
        (holders, extra, pick) => {
          const leased = holders.filter((_, i) => (pick >> i) & 1);
          const v = { semaphore: extra, max: holders.length + extra, holders, leased };
          const back = decodeSemaphore(encodeSemaphore(v), { key: K });
          expect(new Set(back.holders)).toEqual(new Set(holders));
          expect(new Set(back.leased)).toEqual(new Set(leased));
          expect(encodeSemaphore(back)).toEqual(encodeSemaphore(v));
        },
      ),
      { numRuns: 300 },
    );
  });

  it("set-max's salvage keeps the holders it can read", () => {
    expect(salvageHolders(bytes('{"semaphore":9,"max":1,"holders":["b","a",3,"a"]}'))).toEqual([
      "a",
      "b",
    ]);
    expect(salvageHolders(bytes("garbage"))).toEqual([]);
    expect(salvageHolders(bytes("null"))).toEqual([]);
  });
});

function snap(
  value: SemaphoreValue,
  records: string[] = [],
  o: { exists?: boolean; modRevision?: string } = {},
): Snapshot {
  return {
    key: K,
    exists: o.exists ?? true,
    modRevision: o.modRevision ?? "7",
    value,
    records: new Map(records.map((h) => [h, { lease: "99" }])),
  };
}

describe("plans (README.md, Acquire, Release, Operator)", () => {
  it("acquire takes a free place and marks its holder leased", () => {
    const p = planAcquire(snap({ semaphore: 1, max: 2, holders: ["b"], leased: [] }), "a");
    expect(p).toEqual({
      acquired: true,
      next: { semaphore: 0, max: 2, holders: ["a", "b"], leased: ["a"] },
      putRecord: true,
      removedStale: [],
    });
  });

  it("acquire by a holder keeps its place and renews its record", () => {
    const v = { semaphore: 0, max: 1, holders: ["a"], leased: ["a"] };
    const p = planAcquire(snap(v, []), "a");
    expect(p.acquired).toBe(true);
    expect(p.next).toEqual(v);
    expect(p.putRecord).toBe(true);
    expect(p.removedStale).toEqual([]); // even its own expired record is not "stale" to itself
  });

  it("a full semaphore: stale leased holders go, locksmith's (never leased) stay", () => {
    const v = { semaphore: 0, max: 3, holders: ["live", "ls", "old"], leased: ["live", "old"] };
    const p = planAcquire(snap(v, ["live"]), "new");
    expect(p.removedStale).toEqual(["old"]);
    expect(p.acquired).toBe(true);
    expect(p.next).toEqual({
      semaphore: 0,
      max: 3,
      holders: ["live", "ls", "new"],
      leased: ["live", "new"],
    });
  });

  it("at most MAX_STALE_PER_WRITE stale holders go in one write (etcd's 128 operations per transaction)", () => {
    const ids = Array.from({ length: 70 }, (_, i) => `h${String(i).padStart(2, "0")}`);
    const p = planAcquire(snap({ semaphore: 0, max: 70, holders: ids, leased: ids }), "new");
    expect(p.removedStale).toEqual(ids.slice(0, MAX_STALE_PER_WRITE));
    expect(p.next?.holders).toEqual([...ids.slice(64), "new"]);
    expect(compares(snap(p.next as SemaphoreValue), p.removedStale)).toHaveLength(65);
  });

  it("full, nothing stale: nothing to write", () => {
    const v = { semaphore: 0, max: 1, holders: ["ls"], leased: [] };
    expect(planAcquire(snap(v), "new")).toEqual({
      acquired: false,
      next: null,
      putRecord: false,
      removedStale: [],
    });
  });

  it("below zero (max lowered): removing a stale holder is written even when no place frees", () => {
    const v = { semaphore: -1, max: 1, holders: ["a", "b"], leased: ["a", "b"] };
    const p = planAcquire(snap(v, ["b"]), "c");
    expect(p.acquired).toBe(false);
    expect(p.removedStale).toEqual(["a"]);
    expect(p.next).toEqual({ semaphore: 0, max: 1, holders: ["b"], leased: ["b"] });
  });

  it("release: a holder's place comes back; not a holder, or a missing key: nothing", () => {
    const v = { semaphore: 0, max: 2, holders: ["a", "b"], leased: ["a"] };
    expect(planRelease(snap(v, ["a"]), "a")).toEqual({
      released: true,
      next: { semaphore: 1, max: 2, holders: ["b"], leased: [] },
      lease: "99",
    });
    expect(planRelease(snap(v), "b").lease).toBeNull();
    expect(planRelease(snap(v), "z")).toEqual({ released: false, next: null, lease: null });
    expect(planRelease(snap(v, [], { exists: false }), "a").released).toBe(false);
  });

  it("set-max keeps the holders: free = max - holders, below zero too", () => {
    expect(planSetMax(["a", "b"], ["a"], 1)).toEqual({
      semaphore: -1,
      max: 1,
      holders: ["a", "b"],
      leased: ["a"],
    });
    expect(planSetMax([], [], 0).semaphore).toBe(0);
  });

  it("every write compares the semaphore's revision (or its absence) and each stale record's absence", () => {
    const v = { semaphore: 1, max: 1, holders: [], leased: [] };
    expect(compares(snap(v, [], { exists: false }))).toEqual([
      { key: K, target: "CREATE", revision: "0" },
    ]);
    expect(compares(snap(v, [], { modRevision: "42" }), ["x"])).toEqual([
      { key: K, target: "MOD", revision: "42" },
      { key: `${K}/holders/x`, target: "CREATE", revision: "0" },
    ]);
  });

  it("a snapshot: a missing key reads as locksmith's initial value; records are matched to holders", () => {
    const s = toSnapshot(K, undefined, []);
    expect(s).toMatchObject({ exists: false, modRevision: "0" });
    expect(s.value).toEqual({ semaphore: 1, max: 1, holders: [], leased: [] });
    const kv = (key: string, value = "", lease = "0") => ({
      key,
      value: bytes(value),
      createRevision: "3",
      modRevision: "5",
      lease,
    });
    const t = toSnapshot(
      K,
      kv(K, '{"semaphore":0,"max":2,"holders":["a","b"],"leased":["a","b"]}'),
      [kv(`${K}/holders/a`, "", "123"), kv(`${K}/holders/zzz`, "", "9")],
    );
    expect(t.modRevision).toBe("5");
    expect([...t.records]).toEqual([["a", { lease: "123" }]]);
  });
});

describe("gateway requests and responses", () => {
  it("endpoints are http(s) URLs without user, query or fragment", () => {
    expect(endpointProblem("http://10.0.0.1:2379")).toBeUndefined();
    expect(endpointProblem("https://etcd.example:2379/")).toBeUndefined();
    expect(endpointProblem("localhost:2379")).toMatch(/http:\/\/ or https:\/\//);
    expect(endpointProblem("10.0.0.1:2379")).toMatch(/not a URL/);
    expect(endpointProblem("nope")).toMatch(/not a URL/);
    expect(endpointProblem("http://u:p@h:1")).toMatch(/no user/);
  });

  it("a transaction answer: zero fields left out, bad base64 and bad integers refused", () => {
    expect(parseTxn({ header: {} })).toEqual({ succeeded: false, ranges: [] });
    expect(
      parseTxn({
        succeeded: true,
        responses: [
          { response_range: { kvs: [{ key: "YQ==", mod_revision: "2", lease: "7587" }] } },
          { response_put: {} },
        ],
      }),
    ).toEqual({
      succeeded: true,
      ranges: [
        [
          {
            key: "a",
            value: Buffer.alloc(0),
            createRevision: "0",
            modRevision: "2",
            lease: "7587",
          },
        ],
        null,
      ],
    });
    for (const bad of [
      { succeeded: "yes" },
      { responses: {} },
      { responses: [{ response_range: { kvs: [{ key: "a" }] } }] },
      { responses: [{ response_range: { kvs: [{ key: "YQ==", mod_revision: 2 }] } }] },
      { responses: [{ response_range: { kvs: "x" } }] },
      [],
    ]) {
      expect(() => parseTxn(bad)).toThrow();
    }
  });
});
