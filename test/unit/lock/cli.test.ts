/** `abforge lock status|unlock|set-max`, run as an operator runs them, against a real etcd. */
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EXIT_CODES } from "../../../src/cli/exit-codes.ts";
import { formatLockStatus } from "../../../src/cli/lock.ts";
import { RebootLock } from "../../../src/lock/index.ts";
import { abforge } from "../../helpers/cli.ts";
import { type EtcdCluster, startEtcd } from "../../helpers/etcd.ts";
import { freePort } from "../../helpers/net.ts";

let etcd: EtcdCluster;
beforeAll(async () => {
  etcd = await startEtcd();
});
afterAll(async () => {
  await etcd?.stop();
});

const quiet = pino({ level: "silent" });

describe("abforge lock", () => {
  it("status, set-max and unlock: text a person reads, and --json", async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    // a dead member first, then the live one: comma-separated and repeated --etcd
    const at = ["--etcd", `${dead},${etcd.endpoints[0]}`, "--etcd", dead, "--group", "web"];
    const key = "coreos.com/updateengine/rebootlock/groups/web/semaphore";

    const empty = await abforge(["lock", "status", ...at]);
    expect(empty.code, empty.stderr).toBe(0);
    expect(empty.stdout).toBe(
      `${key} (not created yet: the first host to take a place creates it with max 1)\nmax 1, free 1, 0 holder(s)\n`,
    );

    const set = await abforge(["lock", "set-max", "3", ...at, "--json"]);
    expect(set.code, set.stderr).toBe(0);
    expect(JSON.parse(set.stdout)).toEqual({
      key,
      previousMax: null,
      repaired: false,
      semaphore: { semaphore: 3, max: 3, holders: [] },
    });

    // two agents take places (one of them stale soon), and a locksmith host
    const agent = (ttl: number) =>
      new RebootLock({ endpoints: etcd.endpoints, group: "web", lockTTLMs: ttl, log: quiet });
    await agent(3_600_000).acquire("69d27b356a94476da859461d3a3bc6fd");
    await agent(10_000).acquire("short-lived");
    const s = await abforge(["lock", "status", ...at, "--json"]);
    expect(JSON.parse(s.stdout)).toMatchObject({
      key,
      exists: true,
      semaphore: {
        semaphore: 1,
        max: 3,
        holders: ["69d27b356a94476da859461d3a3bc6fd", "short-lived"],
      },
      holders: [
        { id: "69d27b356a94476da859461d3a3bc6fd", stale: false },
        { id: "short-lived", stale: false },
      ],
    });
    const text = await abforge(["lock", "status", ...at]);
    expect(text.stdout).toMatch(
      new RegExp(
        [
          `^${key}`,
          "max 3, free 1, 2 holder\\(s\\)",
          " {2}HOLDER {28}STATE",
          " {2}69d27b356a94476da859461d3a3bc6fd {2}confirms within (59m\\d\\ds|1h00m)",
          " {2}short-lived {23}confirms within \\ds",
          "$",
        ].join("\n"),
      ),
    );

    const lower = await abforge(["lock", "set-max", "1", ...at]);
    expect(lower.stdout).toBe(`${key}: max 1 (was 3), free -1, 2 holder(s)\n`);

    const un = await abforge(["lock", "unlock", "short-lived", ...at]);
    expect(un.code, un.stderr).toBe(0);
    expect(un.stdout).toBe(`removed holder short-lived from ${key}: free 0 of 1\n`);
    const again = await abforge(["lock", "unlock", "short-lived", ...at, "--json"]);
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout)).toEqual({
      key,
      id: "short-lived",
      released: false,
      semaphore: { semaphore: 0, max: 1, holders: ["69d27b356a94476da859461d3a3bc6fd"] },
    });
  });

  it("status text: a stale holder and a locksmith holder say what they are", () => {
    expect(
      formatLockStatus({
        key: "k",
        exists: true,
        semaphore: { semaphore: -1, max: 2, holders: ["a", "bb", "c"] },
        holders: [
          { id: "a", stale: true, ttlRemainingMs: 0 },
          { id: "bb", stale: null, ttlRemainingMs: null },
          { id: "c", stale: false, ttlRemainingMs: 7_500_000 },
        ],
      }),
    ).toBe(
      [
        "k",
        "max 2, free -1, 3 holder(s)",
        "  HOLDER  STATE",
        "  a       stale: no confirmation within TTL (removable by the next host)",
        "  bb      no record (taken by locksmith; never removed automatically)",
        "  c       confirms within 2h05m",
      ].join("\n"),
    );
  });

  it("unreachable etcd: exit 84, one line naming the endpoint and the key; bad arguments: usage (2)", async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const r = await abforge(["lock", "status", "--etcd", dead, "--timeout", "2s"]);
    expect(r.code).toBe(EXIT_CODES.REBOOT_LOCK_UNREACHABLE);
    expect(r.code).toBe(84);
    expect(r.stderr).toContain(
      `abforge: no etcd endpoint answered for coreos.com/updateengine/rebootlock/semaphore: ${dead}: connect ECONNREFUSED`,
    );
    expect(r.stdout).toBe("");
    const j = await abforge(["lock", "unlock", "x", "--etcd", dead, "--json"]);
    expect(JSON.parse(j.stdout).error.code).toBe("REBOOT_LOCK_UNREACHABLE");

    expect((await abforge(["lock", "set-max", "-1"])).code).toBe(2);
    expect((await abforge(["lock", "set-max", "two"])).code).toBe(2);
    expect((await abforge(["lock", "status", "--timeout", "soon"])).code).toBe(2);
    const url = await abforge(["lock", "status", "--etcd", `${dead},ftp://x`]);
    expect(url.code).toBe(2);
    expect(url.stderr).toContain("an etcd endpoint is http:// or https://, got ftp://x");
    expect((await abforge(["lock", "unlock", "a\tb"])).code).toBe(2);
  });

  it("a bad value: status says so (exit 85) and set-max rewrites it", async () => {
    const at = ["--etcd", etcd.endpoints[0] as string, "--group", "bad"];
    const l = new RebootLock({
      endpoints: etcd.endpoints,
      group: "bad",
      lockTTLMs: 60_000,
      log: quiet,
    });
    await l.setMax(1);
    const { EtcdGateway } = await import("../../../src/lock/index.ts");
    await new EtcdGateway({ endpoints: etcd.endpoints }).txn(
      [],
      [{ put: { key: l.key, value: new TextEncoder().encode('{"max":"x"}') } }],
      l.key,
    );
    const s = await abforge(["lock", "status", ...at]);
    expect(s.code).toBe(85);
    expect(s.stderr).toMatch(/holds a bad value \(semaphore is not an integer; max is not/);
    const fix = await abforge(["lock", "set-max", "2", ...at]);
    expect(fix.code, fix.stderr).toBe(0);
    expect(fix.stdout).toBe(`${l.key}: max 2 (was a bad value, rewritten), free 2, 0 holder(s)\n`);
    expect((await abforge(["lock", "status", ...at])).code).toBe(0);
  });
});
