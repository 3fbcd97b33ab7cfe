/**
 * Staged waves (README.md, "Waves"): the signed index says by when which
 * share of the fleet may take `latest`; each host works out its own start
 * time from its seed, so no server computes anything. Pure: no I/O, no
 * clock — the caller passes the index's `issuedAt` and the host's seed.
 */

/** One wave: by `afterSeconds` after the index's issuedAt, `percent` of the fleet (cumulative) may install. */
export interface Wave {
  afterSeconds: number;
  percent: number;
}

/** A signed index holds at most this many waves. */
export const MAX_WAVES = 32;
/** Seeds are 0 to SEED_RANGE - 1; a host's position in the fleet is seed / SEED_RANGE. */
export const SEED_RANGE = 2048;
/** The last wave ends at most this long after issuedAt (a year). */
export const MAX_WAVE_SECONDS = 366 * 86_400;

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400, w: 604_800 };

/**
 * Every problem of a list of waves (empty: valid): at most MAX_WAVES, times
 * and percents integers that strictly increase, percents 1-100, the last
 * 100, times 0 to MAX_WAVE_SECONDS. `where` prefixes each problem.
 */
export function wavesProblems(waves: unknown, where: string): string[] {
  if (!Array.isArray(waves)) return [`${where}: must be a list of {afterSeconds, percent}`];
  const problems: string[] = [];
  if (waves.length === 0) problems.push(`${where}: must hold at least one wave`);
  if (waves.length > MAX_WAVES)
    return [`${where}: ${waves.length} waves, more than the ${MAX_WAVES} allowed`];
  let prev: Wave | undefined;
  waves.forEach((w, i) => {
    const at = `${where}[${i}]`;
    if (typeof w !== "object" || w === null || Array.isArray(w)) {
      problems.push(`${at}: must be an object {afterSeconds, percent}`);
      prev = undefined;
      return;
    }
    const o = w as Record<string, unknown>;
    for (const k of Object.keys(o))
      if (k !== "afterSeconds" && k !== "percent") problems.push(`${at}.${k}: unknown field`);
    const t = o.afterSeconds;
    const p = o.percent;
    const tOk = Number.isSafeInteger(t) && (t as number) >= 0 && (t as number) <= MAX_WAVE_SECONDS;
    const pOk = Number.isSafeInteger(p) && (p as number) >= 1 && (p as number) <= 100;
    if (!tOk)
      problems.push(
        `${at}.afterSeconds: must be an integer 0-${MAX_WAVE_SECONDS}, got ${JSON.stringify(t)}`,
      );
    if (!pOk) problems.push(`${at}.percent: must be an integer 1-100, got ${JSON.stringify(p)}`);
    if (tOk && pOk && prev) {
      if ((t as number) <= prev.afterSeconds)
        problems.push(
          `${at}.afterSeconds: ${t} is not later than the wave before (${prev.afterSeconds}): times must strictly increase`,
        );
      if ((p as number) <= prev.percent)
        problems.push(
          `${at}.percent: ${p} is not more than the wave before (${prev.percent}): percents are cumulative and must strictly increase`,
        );
    }
    prev = tOk && pOk ? { afterSeconds: t as number, percent: p as number } : undefined;
  });
  const last = waves.at(-1) as Record<string, unknown> | undefined;
  if (waves.length > 0 && last && typeof last === "object" && last.percent !== 100)
    problems.push(
      `${where}[${waves.length - 1}].percent: the last wave must reach 100%, got ${JSON.stringify(last.percent)}`,
    );
  return problems;
}

/**
 * `--waves "1h=1%,6h=5%,1d=25%,3d=100%"`: TIME=PERCENT% pairs, times as
 * `<n>s|m|h|d|w` after issuedAt. Returns the waves or the problems.
 */
export function parseWaves(text: string): { waves: Wave[] } | { problems: string[] } {
  const parts = text.split(",").map((p) => p.trim());
  const waves: Wave[] = [];
  const problems: string[] = [];
  parts.forEach((part, i) => {
    const m = /^(\d+)([smhdw])=(\d+)%$/.exec(part);
    if (!m) {
      problems.push(
        `wave ${i + 1} "${part}": not TIME=PERCENT% (a time like 30m, 6h, 1d or 2w after the index's issuedAt, then the cumulative share, e.g. 6h=5%)`,
      );
      return;
    }
    waves.push({ afterSeconds: Number(m[1]) * (UNITS[m[2]!] as number), percent: Number(m[3]) });
  });
  if (problems.length > 0) return { problems };
  const invalid = wavesProblems(waves, "waves").map((p) =>
    p.replace(/^waves\[(\d+)\]/, (_, n: string) => `wave ${Number(n) + 1} "${parts[Number(n)]}"`),
  );
  return invalid.length > 0 ? { problems: invalid } : { waves };
}

/** Where a host falls in the waves and when it may start. */
export interface WaveSlot {
  /** 0-based index of the host's wave. */
  wave: number;
  /** That wave's cumulative percent. */
  percent: number;
  /** When this host may install (ms since the epoch). */
  startsAtMs: number;
}

/**
 * A host's start time (README.md, "Waves"): its position is seed /
 * SEED_RANGE of the fleet; it falls in the first wave whose cumulative
 * percent is above that position; inside the wave the hosts are spread
 * evenly between the previous wave's time (issuedAt for the first) and this
 * wave's time, in the order of their position. Waves must be valid
 * (`wavesProblems`), the seed an integer 0 to SEED_RANGE - 1.
 */
export function waveSlot(waves: readonly Wave[], issuedAtMs: number, seed: number): WaveSlot {
  if (!Number.isSafeInteger(seed) || seed < 0 || seed >= SEED_RANGE)
    throw new RangeError(`seed must be an integer 0-${SEED_RANGE - 1}, got ${seed}`);
  // compare in integers: position × 100 = seed × 100 / SEED_RANGE
  const pos100 = seed * 100;
  let prevPercent = 0;
  let prevSeconds = 0;
  for (let i = 0; i < waves.length; i++) {
    const w = waves[i] as Wave;
    if (pos100 < w.percent * SEED_RANGE) {
      const share = (pos100 - prevPercent * SEED_RANGE) / ((w.percent - prevPercent) * SEED_RANGE);
      const seconds = prevSeconds + share * (w.afterSeconds - prevSeconds);
      return { wave: i, percent: w.percent, startsAtMs: issuedAtMs + Math.floor(seconds * 1000) };
    }
    prevPercent = w.percent;
    prevSeconds = w.afterSeconds;
  }
  // the last wave is 100%: every seed falls in one
  throw new RangeError("waves must end at 100%");
}

/** The text form `parseWaves` reads: `1h=1%,6h=5%`. */
export function formatWaves(waves: readonly Wave[]): string {
  return waves
    .map((w) => {
      if (w.afterSeconds === 0) return `0s=${w.percent}%`;
      const unit =
        (["w", "d", "h", "m"] as const).find((u) => w.afterSeconds % (UNITS[u] as number) === 0) ??
        "s";
      return `${w.afterSeconds / (UNITS[unit] as number)}${unit}=${w.percent}%`;
    })
    .join(",");
}
