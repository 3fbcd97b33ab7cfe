/**
 * A small seeded fuzzer for the parsers (fuzz.test.ts): a deterministic PRNG,
 * byte-level mutators of valid inputs, and a runner that counts inputs,
 * times them, and collects every failure that is not the parser's own typed
 * error. Seed and count come from the environment so a failure can be
 * replayed: ABFORGE_FUZZ_SEED (default 1), ABFORGE_FUZZ_RUNS (default 10000).
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isBaseError } from "../../src/errors.ts";

export const FUZZ_SEED = Number(process.env.ABFORGE_FUZZ_SEED ?? 1);
export const FUZZ_RUNS = Number(process.env.ABFORGE_FUZZ_RUNS ?? 10_000);

/** mulberry32: small, fast, good enough to drive mutations; same seed, same inputs. */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  next(): number {
    this.#s = (this.#s + 0x6d2b79f5) >>> 0;
    let t = this.#s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  bool(p = 0.5): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)] as T;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

/** Bytes that tend to matter to parsers: bounds, separators, digits, JSON and tar syntax. */
const INTERESTING = [
  0x00, 0x01, 0x7f, 0x80, 0xff, 0x20, 0x0a, 0x0d, 0x22, 0x23, 0x2c, 0x2d, 0x2e, 0x2f, 0x30, 0x31,
  0x37, 0x39, 0x3a, 0x3d, 0x5b, 0x5c, 0x5d, 0x7b, 0x7d, 0x41, 0x61, 0x66,
];

/**
 * One to `max` random edits of `input`, with positions drawn from `focus`
 * (byte ranges that matter) half of the time: bit flips, byte sets, range
 * overwrites, deletions, insertions, duplications, truncation, extension.
 */
export function mutate(
  rng: Rng,
  input: Uint8Array,
  o: { focus?: readonly [number, number][]; max?: number } = {},
): Buffer {
  let b = Buffer.from(input);
  const edits = 1 + rng.int(o.max ?? 6);
  const pos = () => {
    if (b.length === 0) return 0;
    const f = o.focus;
    if (f && f.length > 0 && rng.bool()) {
      const [lo, hi] = rng.pick(f);
      const a = Math.min(lo, b.length - 1);
      const z = Math.min(Math.max(hi, a + 1), b.length);
      return a + rng.int(z - a);
    }
    return rng.int(b.length);
  };
  for (let e = 0; e < edits; e++) {
    switch (rng.int(9)) {
      case 0:
      case 1: {
        if (b.length === 0) break;
        const p = pos();
        b[p] = (b[p] as number) ^ (1 << rng.int(8));
        break;
      }
      case 2: {
        if (b.length === 0) break;
        b[pos()] = rng.bool() ? rng.pick(INTERESTING) : rng.int(256);
        break;
      }
      case 3: {
        const p = pos();
        const n = Math.min(1 + rng.int(32), b.length - p);
        rng.bytes(n).copy(b, p);
        break;
      }
      case 4: {
        const p = pos();
        const n = 1 + rng.int(rng.bool() ? 8 : 600);
        b = Buffer.concat([b.subarray(0, p), b.subarray(Math.min(b.length, p + n))]);
        break;
      }
      case 5: {
        const p = pos();
        const ins = rng.bool() ? Buffer.from([rng.pick(INTERESTING)]) : rng.bytes(1 + rng.int(64));
        b = Buffer.concat([b.subarray(0, p), ins, b.subarray(p)]);
        break;
      }
      case 6: {
        const p = pos();
        const q = pos();
        const n = Math.min(1 + rng.int(512), b.length - q);
        b = Buffer.concat([b.subarray(0, p), b.subarray(q, q + n), b.subarray(p)]);
        break;
      }
      case 7:
        b = b.subarray(0, pos());
        break;
      default:
        b = Buffer.concat([b, rng.bytes(1 + rng.int(128))]);
    }
  }
  return b;
}

export interface FuzzReport {
  name: string;
  runs: number;
  ms: number;
  /** How many inputs the parser accepted (the rest raised its typed error). */
  accepted: number;
  /** Typed error codes seen, with counts. */
  codes: Map<string, number>;
  failures: string[];
  /** The outer checks in the order the parser meets them (the `stages` option). */
  stages: string[];
  /** How many inputs passed each stage (an accepted input passed them all). */
  reached: Map<string, number>;
}

/** Called by `check` when the input passed an outer check (framing, CRC, signature). */
export type Reach = (stage: string) => void;

/**
 * Run `check` over `runs` generated inputs. `check` returns true when the
 * parser accepted the input and throws when it did not; a throw that is not a
 * BaseError with a code of the allowed class, or an assertion inside `check`
 * (a property of an accepted input), is a failure. Failing inputs are saved
 * to files whose paths are in the failure messages.
 */
export async function fuzz<T extends Uint8Array>(
  name: string,
  o: {
    runs?: number;
    seed?: number;
    generate: (rng: Rng, i: number) => T;
    check: (input: T, reach: Reach) => boolean | Promise<boolean>;
    /** The outer checks `check` reports with `reach`, outermost first. */
    stages?: readonly string[];
    /** The error class the parser may throw (a BaseError subclass). */
    errorClass: abstract new (
      ...args: never[]
    ) => Error;
  },
): Promise<FuzzReport> {
  const runs = o.runs ?? FUZZ_RUNS;
  const rng = new Rng((o.seed ?? FUZZ_SEED) * 1_000_003 + hash(name));
  const stages = [...(o.stages ?? [])];
  const report: FuzzReport = {
    name,
    runs,
    ms: 0,
    accepted: 0,
    codes: new Map(),
    failures: [],
    stages,
    reached: new Map(stages.map((st) => [st, 0])),
  };
  let saveDir: string | undefined;
  const t0 = performance.now();
  for (let i = 0; i < runs; i++) {
    const input = o.generate(rng, i);
    const passed = new Set<string>();
    const reach: Reach = (stage) => {
      if (!report.reached.has(stage)) throw new Error(`fuzz ${name}: unknown stage "${stage}"`);
      passed.add(stage);
    };
    const count = () => {
      for (const st of passed) report.reached.set(st, (report.reached.get(st) ?? 0) + 1);
    };
    try {
      if (await o.check(input, reach)) {
        report.accepted += 1;
        for (const st of stages) passed.add(st);
      }
      count();
    } catch (err) {
      count();
      const typed =
        isBaseError(err) &&
        err instanceof o.errorClass &&
        typeof err.code === "string" &&
        err.code.length > 0;
      if (typed) {
        report.codes.set(err.code, (report.codes.get(err.code) ?? 0) + 1);
        continue;
      }
      if (report.failures.length < 5) {
        saveDir ??= mkdtempSync(join(tmpdir(), `abforge-fuzz-${name}-`));
        const file = join(saveDir, `input-${i}.bin`);
        writeFileSync(file, input);
        const e = err as Error;
        report.failures.push(
          `${name} input #${i} (seed ${o.seed ?? FUZZ_SEED}, saved as ${file}): ${e?.constructor?.name}: ${e?.message}\n${e?.stack?.split("\n").slice(1, 4).join("\n")}`,
        );
      } else report.failures.push(`${name} input #${i}`);
    }
  }
  report.ms = performance.now() - t0;
  return report;
}

function hash(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** Each stage's share of the inputs that passed it, in stage order. */
export function depth(r: FuzzReport): { stage: string; share: number }[] {
  return r.stages.map((stage) => ({ stage, share: (r.reached.get(stage) ?? 0) / r.runs }));
}

/**
 * Assert the generator's depth: at least `min[stage]` of the inputs passed
 * each outer check and reached what lies behind it. A generator whose inputs
 * all die at the first check (random bytes against a signed format) fails
 * here, instead of printing 10,000 inputs that tested nothing but the CRC.
 */
export function expectDepth(r: FuzzReport, min: Record<string, number>): void {
  const shallow: string[] = [];
  for (const [stage, want] of Object.entries(min)) {
    if (!r.stages.includes(stage)) throw new Error(`fuzz ${r.name}: unknown stage "${stage}"`);
    const share = (r.reached.get(stage) ?? 0) / r.runs;
    if (share < want)
      shallow.push(`${stage}: ${(share * 100).toFixed(1)}% passed, at least ${want * 100}% wanted`);
  }
  if (shallow.length > 0)
    throw new Error(
      `fuzz ${r.name}: the generated inputs do not reach deep enough: ${shallow.join("; ")}`,
    );
}

export function describeReport(r: FuzzReport): string {
  const codes = [...r.codes]
    .sort((a, b) => b[1] - a[1])
    .map(([c, n]) => `${c} ${n}`)
    .join(", ");
  const reached = depth(r)
    .map((d) => `${d.stage} ${(d.share * 100).toFixed(0)}%`)
    .join(", ");
  return `fuzz ${r.name}: ${r.runs} inputs in ${(r.ms / 1000).toFixed(1)} s, passed: ${reached || "-"}, ${r.accepted} accepted, refused: ${codes || "none"}; other failures: ${r.failures.length}`;
}
