// Staged waves (src/repo/README.md, "Waves"): the text form, the rules a signed index holds
// them to, and each host's start time from its seed, checked on a fake clock's instants.
import { describe, expect, it } from "vitest";
import {
  formatWaves,
  MAX_WAVES,
  parseWaves,
  SEED_RANGE,
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
