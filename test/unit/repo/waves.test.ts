// Staged waves (src/repo/README.md, "Waves"): the text form, the rules a signed index holds
// them to, and each host's start time from its seed, checked on a fake clock's instants.
import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { keyId, signBytes } from "../../../src/bundle/index.ts";
import {
  formatWaves,
  type IndexSigned,
  MAX_WAVES,
  parseWaves,
  RepoError,
  SEED_RANGE,
  signedBytes,
  signIndex,
  verifyIndex,
  type Wave,
  waveSlot,
  wavesProblems,
} from "../../../src/repo/index.ts";
import { FakeClock } from "../../helpers/clock.ts";

const H = 3600;
const waves = (text: string): Wave[] => {
  const r = parseWaves(text);
  if ("problems" in r) throw new Error(r.problems.join("; "));
  return r.waves;
};

describe("waves", () => {
  it("reads TIME=PERCENT% pairs and writes them back", () => {
    const w = waves("1h=1%,6h=5%,1d=25%,3d=100%");
    expect(w).toEqual([
      { afterSeconds: H, percent: 1 },
      { afterSeconds: 6 * H, percent: 5 },
      { afterSeconds: 24 * H, percent: 25 },
      { afterSeconds: 72 * H, percent: 100 },
    ]);
    expect(formatWaves(w)).toBe("1h=1%,6h=5%,1d=25%,3d=100%");
    expect(formatWaves(waves("0s=10%,90m=100%"))).toBe("0s=10%,90m=100%");
  });

  it("refuses bad lists with a clear reason naming the wave", () => {
    const problems = (t: string) => {
      const r = parseWaves(t);
      return "problems" in r ? r.problems.join("; ") : "";
    };
    expect(problems("1h=1%,6h=5%")).toMatch(/wave 2 "6h=5%".*must reach 100%/);
    expect(problems("6h=5%,1h=100%")).toMatch(/wave 2 "1h=100%".*times must strictly increase/);
    expect(problems("1h=50%,6h=50%,1d=100%")).toMatch(/wave 2 "6h=50%".*strictly increase/);
    expect(problems("1h=1")).toMatch(/wave 1 "1h=1": not TIME=PERCENT%/);
    expect(problems("1x=1%")).toMatch(/not TIME=PERCENT%/);
    expect(problems("1h=0%,2h=100%")).toMatch(/percent: must be an integer 1-100/);
    const many = Array.from({ length: MAX_WAVES + 1 }, (_, i) => ({
      afterSeconds: i + 1,
      percent: i + 1,
    }));
    expect(wavesProblems(many, "w")).toEqual([`w: 33 waves, more than the ${MAX_WAVES} allowed`]);
    expect(wavesProblems([{ afterSeconds: 1, percent: 100, extra: 1 }], "w")).toEqual([
      "w[0].extra: unknown field",
    ]);
    expect(wavesProblems("1h=100%", "w")).toEqual(["w: must be a list of {afterSeconds, percent}"]);
  });

  it("spreads the hosts evenly inside their wave, from the previous wave's time to its own", () => {
    const issued = Date.parse("2026-01-01T00:00:00Z");
    const w = waves("1h=1%,6h=5%,1d=25%,3d=100%");
    // position 0: the first host of the first wave starts at issuedAt
    expect(waveSlot(w, issued, 0)).toEqual({ wave: 0, percent: 1, startsAtMs: issued });
    // 1% of 2048 = 20.48 seeds: seed 10 is about halfway through the first hour
    const s10 = waveSlot(w, issued, 10);
    expect(s10.wave).toBe(0);
    expect(s10.startsAtMs - issued).toBe(Math.floor((1000 * H * (10 * 100)) / (1 * 2048)));
    // seed 21 is the first of wave 2 (21/2048 = 1.025%): just after the 1 h mark
    const s21 = waveSlot(w, issued, 21);
    expect(s21.wave).toBe(1);
    expect(s21.startsAtMs).toBeGreaterThanOrEqual(issued + H * 1000);
    expect(s21.startsAtMs).toBeLessThan(issued + 2 * H * 1000);
    // the last seed starts just before the last wave's time
    const last = waveSlot(w, issued, SEED_RANGE - 1);
    expect(last.wave).toBe(3);
    expect(last.startsAtMs).toBeLessThan(issued + 72 * H * 1000);
    expect(last.startsAtMs).toBeGreaterThan(issued + 71 * H * 1000);
    // start times never go back as the seed grows, and each wave holds its share
    let prev = -1;
    const perWave = [0, 0, 0, 0];
    for (let seed = 0; seed < SEED_RANGE; seed++) {
      const s = waveSlot(w, issued, seed);
      expect(s.startsAtMs).toBeGreaterThanOrEqual(prev);
      prev = s.startsAtMs;
      perWave[s.wave] = (perWave[s.wave] as number) + 1;
    }
    // wave i holds the seeds below ceil(percent × 2048 / 100): 21, 103, 512, 2048
    const below = [1, 5, 25, 100].map((p) => Math.ceil((p * SEED_RANGE) / 100));
    expect(perWave).toEqual(below.map((b, i) => b - (below[i - 1] ?? 0)));
    expect(perWave).toEqual([21, 82, 409, 1536]);
    expect(() => waveSlot(w, issued, SEED_RANGE)).toThrow(RangeError);
  });

  it("on a fake clock: the share of a fleet whose start time has come follows the waves", () => {
    const issued = new Date("2026-03-01T12:00:00Z");
    const clock = new FakeClock({ start: issued });
    const w = waves("1h=10%,2h=50%,4h=100%");
    const fleet = Array.from({ length: SEED_RANGE }, (_, seed) =>
      waveSlot(w, issued.getTime(), seed),
    );
    const started = () => fleet.filter((s) => s.startsAtMs <= clock.now().getTime()).length;
    expect(started()).toBe(1); // seed 0 starts at issuedAt
    clock.advance(30 * 60_000);
    expect(started() / SEED_RANGE).toBeCloseTo(0.05, 2);
    clock.advance(30 * 60_000);
    expect(started() / SEED_RANGE).toBeCloseTo(0.1, 2);
    clock.advance(60 * 60_000);
    expect(started() / SEED_RANGE).toBeCloseTo(0.5, 2);
    clock.advance(60 * 60_000);
    expect(started() / SEED_RANGE).toBeCloseTo(0.75, 2);
    clock.advance(60 * 60_000);
    expect(started()).toBe(SEED_RANGE);
  });
});

describe("waves in the signed index", () => {
  const key = generateKeyPairSync("ed25519");
  const base = (rollout: unknown): IndexSigned =>
    ({
      type: "abforge-channel-index",
      formatVersion: 2,
      channel: "stable",
      name: "demo",
      compatible: "demo-x86_64",
      serial: 3,
      issuedAt: "2026-03-01T00:00:00.000Z",
      expiresAt: "2026-03-31T00:00:00.000Z",
      latest: {
        version: "2.0.0",
        bundle: "../bundles/demo-2.0.0.bundle",
        size: 123456,
        sha256: "ab".repeat(32),
        slotDataOffset: 2048,
        manifestSha256: "cd".repeat(32),
        minUpdateFrom: "0.0.0",
      },
      rollout,
    }) as IndexSigned;
  /** Signed by a trusted key, bypassing signIndex's own check: what a careless or hostile publisher could serve. */
  const served = (s: IndexSigned) =>
    new TextEncoder().encode(
      JSON.stringify({
        signed: s,
        signatures: [
          {
            keyid: keyId(key.publicKey),
            sig: Buffer.from(signBytes(signedBytes(s), key.privateKey)).toString("base64"),
          },
        ],
      }),
    );
  const verify = (s: IndexSigned) =>
    verifyIndex(served(s), {
      channel: "stable",
      trustedKeys: [key.publicKey],
      now: new Date("2026-03-02T00:00:00.000Z"),
      minSerial: 0,
    });
  const problems = (s: IndexSigned): string[] => {
    try {
      verify(s);
    } catch (err) {
      expect(err).toBeInstanceOf(RepoError);
      expect((err as RepoError).code).toBe("REPO_BAD_INDEX");
      return (err as RepoError).details.problems as string[];
    }
    return [];
  };

  it("a valid list verifies and reaches the agent", () => {
    const w = waves("1h=1%,3d=100%");
    expect(verify(base({ percent: 100, waves: w })).signed.rollout.waves).toEqual(w);
  });

  it("a signed index with bad waves is refused as a bad index, every problem named", () => {
    expect(problems(base({ percent: 100, waves: [{ afterSeconds: 60, percent: 50 }] }))).toEqual([
      "signed.rollout.waves[0].percent: the last wave must reach 100%, got 50",
    ]);
    expect(
      problems(
        base({
          percent: 100,
          waves: [
            { afterSeconds: 60, percent: 50 },
            { afterSeconds: 30, percent: 100 },
          ],
        }),
      ),
    ).toEqual([
      "signed.rollout.waves[1].afterSeconds: 30 is not later than the wave before (60): times must strictly increase",
    ]);
    expect(problems(base({ percent: 40, waves: waves("1h=100%") }))).toEqual([
      "signed.rollout.percent: must be 100 with waves (got 40): the waves say who takes it when",
    ]);
    const many = Array.from({ length: 40 }, (_, i) => ({
      afterSeconds: i + 1,
      percent: Math.min(100, i + 61),
    }));
    expect(problems(base({ percent: 100, waves: many }))).toEqual([
      "signed.rollout.waves: 40 waves, more than the 32 allowed",
    ]);
    expect(problems(base({ percent: 100, waves: "1h=100%" }))).toEqual([
      "signed.rollout.waves: must be a list of {afterSeconds, percent}",
    ]);
    // (a fraction cannot even be signed: canonical JSON holds integers only)
    expect(wavesProblems([{ afterSeconds: 1.5, percent: 100 }], "w")).toEqual([
      `w[0].afterSeconds: must be an integer 0-${366 * 86_400}, got 1.5`,
    ]);
  });

  it("publish and signIndex refuse them before anything is signed", () => {
    expect(() =>
      signIndex(base({ percent: 100, waves: [{ afterSeconds: 1, percent: 5 }] }), key.privateKey),
    ).toThrow(/the last wave must reach 100%/);
  });
});
