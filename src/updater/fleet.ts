/**
 * The agent's side of the fleet server (README.md, "Reports" and "Holds";
 * src/fleet/README.md, "For the agent"): reports go out from a bounded
 * in-memory queue that never holds an update back, and the hold document is
 * read, bounded and validated, before an install. The server carries no
 * authority: a hold can only delay the version it names.
 */
import { readFile } from "node:fs/promises";
import got from "got";
import semver from "semver";
import type { Clock } from "../clock.ts";
import { REPORT_MAX_BYTES, type Report, validateReport } from "../fleet/report.ts";
import type { ReportConfig } from "../image/index.ts";
import type { Logger } from "../log.ts";
import { errText } from "./errors.ts";

/** Reports kept while the server cannot take them; the oldest go first. */
export const REPORT_QUEUE_MAX = 64;
/** Every request to the fleet server ends within this. */
export const FLEET_TIMEOUT_MS = 10_000;
/** Back-off between failed sends: 1 s doubling up to this. */
export const REPORT_MAX_BACKOFF_MS = 60_000;
/** A 429's Retry-After is honoured up to this. */
export const REPORT_MAX_RETRY_AFTER_MS = 300_000;
/** The hold document is refused beyond this size. */
export const HOLDS_MAX_BYTES = 64 * 1024;
/** ... and beyond this many holds. */
export const HOLDS_MAX = 1000;
/** What the reporting agent calls itself (`agentVersion`). */
export const AGENT_VERSION = "0.1.0";

/** The HTTP requests to the fleet server (a seam, STYLE.md point 7). */
export interface FleetHttp {
  post(
    url: string,
    o: { token: string; body: string; timeoutMs: number; signal?: AbortSignal },
  ): Promise<{ status: number; retryAfterMs: number | null }>;
  get(
    url: string,
    o: { token: string; maxBytes: number; timeoutMs: number; signal?: AbortSignal },
  ): Promise<{ status: number; body: Uint8Array }>;
}

/** FleetHttp with the agent's HTTP client (got, as src/repo's): no retries of its own, a timeout on every request. */
export const gotFleetHttp: FleetHttp = {
  async post(url, o) {
    const r = await got.post(url, {
      body: o.body,
      headers: { authorization: `Bearer ${o.token}`, "content-type": "application/json" },
      throwHttpErrors: false,
      retry: { limit: 0 },
      timeout: { request: o.timeoutMs },
      followRedirect: false,
      ...(o.signal ? { signal: o.signal } : {}),
    });
    const after = Number(r.headers["retry-after"]);
    return {
      status: r.statusCode,
      retryAfterMs: Number.isFinite(after) && after >= 0 ? after * 1000 : null,
    };
  },
  get(url, o) {
    return new Promise((resolve, reject) => {
      const req = got.stream(url, {
        headers: { authorization: `Bearer ${o.token}`, accept: "application/json" },
        throwHttpErrors: false,
        retry: { limit: 0 },
        timeout: { request: o.timeoutMs },
        followRedirect: false,
        ...(o.signal ? { signal: o.signal } : {}),
      });
      const chunks: Buffer[] = [];
      let size = 0;
      let status = 0;
      req.on("response", (res: { statusCode: number }) => {
        status = res.statusCode;
      });
      req.on("data", (chunk: Buffer) => {
        size += chunk.length;
        if (size > o.maxBytes) {
          req.destroy(new Error(`the answer is larger than ${o.maxBytes} bytes`));
          return;
        }
        chunks.push(chunk);
      });
      req.on("error", reject);
      req.on("end", () => resolve({ status, body: new Uint8Array(Buffer.concat(chunks)) }));
    });
  },
};

/** A hold as the agent reads it: the version held and why. */
export interface Hold {
  version: string;
  reason: string;
  by: string;
  at: string;
}

export type HoldsResult = { ok: true; holds: Hold[] } | { ok: false; why: string };

/** The `report:` base URL with the API path under it. */
function apiUrl(base: string, path: string): string {
  return new URL(path, base.endsWith("/") ? base : `${base}/`).href;
}

/**
 * Reports to the fleet server (src/fleet/README.md, "For the agent", step 2).
 * `send` validates and queues, never waits: a queue of REPORT_QUEUE_MAX (the
 * oldest dropped and counted when full), one request at a time, each within
 * FLEET_TIMEOUT_MS; 5xx or no answer is retried with back-off (1 s doubling
 * to 60 s), 429 after its Retry-After; 400/413 (never going to succeed) and
 * 401 (the token is wrong: a configuration error) are dropped and logged.
 * The token is never logged.
 */
export class FleetReporter {
  readonly #config: ReportConfig;
  readonly #http: FleetHttp;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #capacity: number;
  readonly #queue: string[] = [];
  readonly #stop = new AbortController();
  #token: string | undefined;
  #pumping: Promise<void> | undefined;
  #idle: (() => void)[] = [];
  /** Reports dropped because the queue was full, refused by the server, or invalid. */
  dropped = 0;
  /** Reports the server accepted. */
  sent = 0;

  constructor(o: {
    config: ReportConfig;
    http: FleetHttp;
    clock: Clock;
    log: Logger;
    capacity?: number;
  }) {
    this.#config = o.config;
    this.#http = o.http;
    this.#clock = o.clock;
    this.#log = o.log.child({ module: "fleet-report" });
    this.#capacity = o.capacity ?? REPORT_QUEUE_MAX;
  }

  get queued(): number {
    return this.#queue.length;
  }

  get onUnreachable(): ReportConfig["onUnreachable"] {
    return this.#config.onUnreachable;
  }

  /** Queue a report; returns at once. An invalid one (a bug) is logged and dropped. */
  send(report: Report): void {
    if (this.#stop.signal.aborted) return;
    let body: string;
    try {
      body = JSON.stringify(validateReport(report));
    } catch (err) {
      this.dropped += 1;
      this.#log.error({ event: report.event }, `report not sent, it is invalid: ${errText(err)}`);
      return;
    }
    if (Buffer.byteLength(body) > REPORT_MAX_BYTES) {
      this.dropped += 1;
      this.#log.error({ event: report.event }, `report not sent: over ${REPORT_MAX_BYTES} bytes`);
      return;
    }
    this.#queue.push(body);
    while (this.#queue.length > this.#capacity) {
      this.#queue.shift();
      this.dropped += 1;
      this.#log.warn(
        { dropped: this.dropped },
        `report queue full (${this.#capacity}): dropped the oldest report`,
      );
    }
    this.#kick();
  }

  /** Start the sender unless it runs; a report queued as it was ending starts it again. */
  #kick(): void {
    if (this.#pumping || this.#stop.signal.aborted) return;
    this.#pumping = this.#pump().finally(() => {
      this.#pumping = undefined;
      if (this.#queue.length > 0 && !this.#stop.signal.aborted) this.#kick();
      else for (const f of this.#idle.splice(0)) f();
    });
  }

  /** Wait until the queue is empty, at most `ms`; true when it is. */
  async flush(ms: number): Promise<boolean> {
    if (this.#queue.length === 0) return true;
    let timer: { cancel(): void } | undefined;
    await new Promise<void>((resolve) => {
      this.#idle.push(resolve);
      timer = this.#clock.timer(ms, resolve);
    });
    timer?.cancel();
    return this.#queue.length === 0;
  }

  /** Stop sending: what is still queued is dropped (counted). */
  close(): void {
    this.#stop.abort(new Error("reporter closed"));
    this.dropped += this.#queue.length;
    this.#queue.length = 0;
  }

  async #tokenValue(): Promise<string> {
    if (this.#config.token !== null) return this.#config.token;
    this.#token ??= (await readFile(this.#config.tokenFile as string, "utf8")).trim();
    return this.#token;
  }

  async #pump(): Promise<void> {
    let failures = 0;
    const url = apiUrl(this.#config.url, "v1/reports");
    while (this.#queue.length > 0 && !this.#stop.signal.aborted) {
      const body = this.#queue[0] as string;
      let wait = 0;
      try {
        const r = await this.#http.post(url, {
          token: await this.#tokenValue(),
          body,
          timeoutMs: FLEET_TIMEOUT_MS,
          signal: this.#stop.signal,
        });
        if (r.status >= 200 && r.status < 300) {
          failures = 0;
          this.sent += 1;
          this.#done(body);
        } else if (r.status === 400 || r.status === 413) {
          this.dropped += 1;
          this.#done(body);
          this.#log.error({ status: r.status }, `the fleet server refused a report (${r.status})`);
        } else if (r.status === 401) {
          this.dropped += 1;
          this.#done(body);
          this.#token = undefined;
          this.#log.error(
            { status: r.status },
            "the fleet server refused the enrollment token (401): check report.token or report.tokenFile",
          );
        } else if (r.status === 429) {
          wait = Math.min(REPORT_MAX_RETRY_AFTER_MS, r.retryAfterMs ?? 2000);
        } else {
          failures += 1;
          wait = Math.min(REPORT_MAX_BACKOFF_MS, 1000 * 2 ** Math.min(16, failures - 1));
          this.#log.warn(
            { status: r.status, retryInMs: wait },
            `the fleet server answered ${r.status}; report kept`,
          );
        }
      } catch (err) {
        if (this.#stop.signal.aborted) return;
        failures += 1;
        wait = Math.min(REPORT_MAX_BACKOFF_MS, 1000 * 2 ** Math.min(16, failures - 1));
        this.#log.warn(
          { retryInMs: wait, queued: this.#queue.length },
          `cannot send a report to the fleet server (${errText(err)}); kept, retry in ${wait} ms`,
        );
      }
      if (wait > 0) {
        try {
          await this.#clock.sleep(wait, this.#stop.signal);
        } catch {
          return;
        }
      }
    }
  }

  /** Remove `body` from the head (the queue may have dropped it meanwhile). */
  #done(body: string): void {
    if (this.#queue[0] === body) this.#queue.shift();
  }

  /**
   * The holds of `channel` (src/fleet/README.md, "For the agent", step 1):
   * `GET <url>/v1/holds/<channel>`, at most HOLDS_MAX_BYTES within
   * FLEET_TIMEOUT_MS, validated. Anything else is `{ok: false, why}`.
   */
  async holds(channel: string): Promise<HoldsResult> {
    const url = apiUrl(this.#config.url, `v1/holds/${encodeURIComponent(channel)}`);
    let r: { status: number; body: Uint8Array };
    try {
      r = await this.#http.get(url, {
        token: await this.#tokenValue(),
        maxBytes: HOLDS_MAX_BYTES,
        timeoutMs: FLEET_TIMEOUT_MS,
        signal: this.#stop.signal,
      });
    } catch (err) {
      return { ok: false, why: `${url}: ${errText(err)}` };
    }
    if (r.status !== 200) return { ok: false, why: `${url} answered ${r.status}` };
    return parseHolds(r.body, channel, url);
  }
}

/** The hold document `{format: 1, channel, holds: [{version, reason, by, at}]}`, validated. */
export function parseHolds(bytes: Uint8Array, channel: string, where: string): HoldsResult {
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    return { ok: false, why: `${where}: not UTF-8 JSON (${errText(err)})` };
  }
  const bad = (what: string): HoldsResult => ({ ok: false, why: `${where}: ${what}` });
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) return bad("not an object");
  const d = doc as Record<string, unknown>;
  if (d.format !== 1) return bad(`format ${JSON.stringify(d.format)}, not 1`);
  if (d.channel !== channel)
    return bad(`for channel ${JSON.stringify(d.channel)}, not ${JSON.stringify(channel)}`);
  if (!Array.isArray(d.holds)) return bad("holds is not a list");
  if (d.holds.length > HOLDS_MAX) return bad(`more than ${HOLDS_MAX} holds`);
  const holds: Hold[] = [];
  for (const [i, h] of d.holds.entries()) {
    const o = h as Record<string, unknown> | null;
    if (
      typeof o !== "object" ||
      o === null ||
      typeof o.version !== "string" ||
      semver.valid(o.version) !== o.version ||
      typeof o.reason !== "string" ||
      o.reason.length > 4096 ||
      typeof o.by !== "string" ||
      o.by.length > 64 ||
      typeof o.at !== "string" ||
      o.at.length > 64
    )
      return bad(`holds[${i}] is not {version (semver), reason, by, at}`);
    holds.push({ version: o.version, reason: o.reason, by: o.by, at: o.at });
  }
  return { ok: true, holds };
}
