/**
 * The fleet server's HTTP API under /v1/ and the dashboard at / (README.md,
 * "API"). Every request is checked before anything is stored: the bearer
 * token (constant time, never logged), the body's size and type, the report
 * schema, the rate per host. A refusal is a 4xx with a JSON error.
 */
import { readFileSync } from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import semver from "semver";
import { type Clock, systemClock } from "../clock.ts";
import { isBaseError } from "../errors.ts";
import { CHANNEL_NAME } from "../image/names.ts";
import { type Logger, logger } from "../log.ts";
import { openSql, parseDbUrl } from "./db.ts";
import { FleetError } from "./errors.ts";
import { DEFAULT_RATE, RateLimiter, type RateOptions } from "./rate.ts";
import { decodeReport, REPORT_EVENTS, REPORT_MAX_BYTES } from "./report.ts";
import { FleetStore, type HaltPolicy, type HostFilter } from "./store.ts";
import { ENROLL_TOKEN_FILE, OPERATOR_TOKEN_FILE, readToken, tokenMatches } from "./tokens.ts";

export interface FleetServerOptions {
  store: FleetStore;
  operatorToken: string;
  enrollToken: string;
  host?: string;
  /** 0 picks a free port; the returned url carries the real one. */
  port: number;
  clock?: Clock;
  log?: Logger;
  rate?: RateOptions;
}

export interface FleetServer {
  url: string;
  store: FleetStore;
  close(): Promise<void>;
}

/** Body limit of an operator's request (a hold's reason). */
const OPERATOR_BODY_MAX = 4096;
const MACHINE_ID = /^[0-9a-f]{32}$/;
const HOST_STATES = new Set<string>([...REPORT_EVENTS, "stuck"]);

class HttpError extends Error {
  readonly status: number;
  readonly code: string;
  readonly details: Record<string, unknown>;
  readonly headers: Record<string, string>;
  constructor(
    status: number,
    code: string,
    message: string,
    o: { details?: Record<string, unknown>; headers?: Record<string, string> } = {},
  ) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = o.details ?? {};
    this.headers = o.headers ?? {};
  }
}

/** `N` hosts or `N%` of the hosts that tried a version. */
export function parseHaltAfter(value: string): HaltPolicy {
  const m = /^(\d{1,7})(%?)$/.exec(value.trim());
  const n = m ? Number(m[1]) : 0;
  if (!m || n < 1 || (m[2] === "%" && n > 100))
    throw new FleetError(
      "FLEET_SERVE_FAILED",
      `--halt-after must be a number of hosts (e.g. 3) or a percentage 1-100% (e.g. 20%), got "${value}"`,
    );
  return m[2] === "%" ? { percent: n } : { hosts: n };
}

const ASSETS: Record<string, { file: string; type: string }> = {
  "/": { file: "index.html", type: "text/html; charset=utf-8" },
  "/dashboard.js": { file: "dashboard.js", type: "text/javascript; charset=utf-8" },
  "/dashboard.css": { file: "dashboard.css", type: "text/css; charset=utf-8" },
};
const ASSET_DIR = join(import.meta.dirname, "dashboard");

function loadAssets(): Map<string, { body: Buffer; type: string }> {
  const out = new Map<string, { body: Buffer; type: string }>();
  for (const [path, a] of Object.entries(ASSETS))
    out.set(path, { body: readFileSync(join(ASSET_DIR, a.file)), type: a.type });
  return out;
}

const SECURITY_HEADERS = {
  "X-Content-Type-Options": "nosniff",
  "Referrer-Policy": "no-referrer",
  "X-Frame-Options": "DENY",
};

function send(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, {
    "Content-Type": "application/json",
    "Content-Length": String(Buffer.byteLength(text)),
    "Cache-Control": "no-store",
    ...SECURITY_HEADERS,
    ...headers,
  });
  res.end(text);
}

function bearer(req: IncomingMessage): string | undefined {
  const h = req.headers.authorization;
  const m = h === undefined ? null : /^Bearer +(\S+) *$/i.exec(h);
  return m?.[1];
}

/** The body, refused unread past `max` bytes (Content-Length) or as soon as it passes it. */
async function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const type = (req.headers["content-type"] ?? "").split(";")[0]?.trim().toLowerCase();
  if (type !== "application/json")
    throw new HttpError(415, "UNSUPPORTED_MEDIA_TYPE", "the body must be application/json");
  const declared = Number(req.headers["content-length"] ?? Number.NaN);
  const tooLarge = () =>
    new HttpError(413, "TOO_LARGE", `the body is larger than ${max} bytes`, { details: { max } });
  if (declared > max) throw tooLarge();
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > max) throw tooLarge();
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

function segment(s: string | undefined): string {
  try {
    return decodeURIComponent(s ?? "");
  } catch {
    throw new HttpError(400, "BAD_REQUEST", "malformed percent-encoding in the path");
  }
}

function channelOf(s: string | undefined): string {
  const c = segment(s);
  if (!CHANNEL_NAME.test(c))
    throw new HttpError(
      400,
      "BAD_REQUEST",
      `"${c.slice(0, 80)}" is not a channel name (1-64 of a-z 0-9 . _ -)`,
    );
  return c;
}

function versionOf(s: string | undefined): string {
  const v = segment(s);
  if (v.length > 64 || semver.valid(v) !== v)
    throw new HttpError(400, "BAD_REQUEST", `"${v.slice(0, 80)}" is not a semantic version`);
  return v;
}

function hostFilter(q: URLSearchParams): HostFilter {
  const known = new Set(["channel", "version", "state", "q", "limit"]);
  const bad = [...q.keys()].filter((k) => !known.has(k));
  if (bad.length > 0)
    throw new HttpError(400, "BAD_REQUEST", `unknown query parameter ${bad.join(", ")}`, {
      details: { known: [...known] },
    });
  const f: HostFilter = {};
  const channel = q.get("channel");
  if (channel !== null && channel !== "") f.channel = channelOf(encodeURIComponent(channel));
  const version = q.get("version");
  if (version !== null && version !== "") f.version = versionOf(encodeURIComponent(version));
  const state = q.get("state");
  if (state !== null && state !== "") {
    if (!HOST_STATES.has(state))
      throw new HttpError(
        400,
        "BAD_REQUEST",
        `state must be one of ${[...HOST_STATES].join(", ")}`,
      );
    f.state = state;
  }
  const search = q.get("q");
  if (search !== null && search !== "") {
    if (search.length > 128)
      throw new HttpError(400, "BAD_REQUEST", "q must be at most 128 characters");
    f.search = search;
  }
  const limit = q.get("limit");
  if (limit !== null) {
    if (!/^\d{1,4}$/.test(limit) || Number(limit) < 1 || Number(limit) > 5000)
      throw new HttpError(400, "BAD_REQUEST", "limit must be an integer 1-5000");
    f.limit = Number(limit);
  }
  return f;
}

export async function startFleetServer(o: FleetServerOptions): Promise<FleetServer> {
  const log = (o.log ?? logger()).child({ module: "fleet" });
  const clock = o.clock ?? systemClock;
  const host = o.host ?? "127.0.0.1";
  const limiter = new RateLimiter(o.rate ?? DEFAULT_RATE, () => clock.monotonicMs());
  const assets = loadAssets();
  const { store } = o;

  const auth = (req: IncomingMessage, roles: ("operator" | "enroll")[]): "operator" | "enroll" => {
    const token = bearer(req);
    if (token !== undefined) {
      for (const role of roles)
        if (tokenMatches(token, role === "operator" ? o.operatorToken : o.enrollToken)) return role;
    }
    throw new HttpError(
      401,
      "UNAUTHORIZED",
      `this endpoint needs the ${roles.join(" or ")} token as "Authorization: Bearer <token>"`,
      { headers: { "WWW-Authenticate": 'Bearer realm="abforge-fleet"' } },
    );
  };

  const routes = async (
    req: IncomingMessage,
    res: ServerResponse,
    ctx: Record<string, unknown>,
  ): Promise<void> => {
    const url = new URL(req.url ?? "/", "http://fleet");
    const path = url.pathname;
    const method = req.method ?? "GET";
    const parts = path.split("/").slice(1);
    const allow = (...methods: string[]) => {
      if (!methods.includes(method))
        throw new HttpError(405, "METHOD_NOT_ALLOWED", `${method} is not allowed on ${path}`, {
          headers: { Allow: methods.join(", ") },
        });
    };
    const asset = assets.get(path);
    if (asset) {
      allow("GET", "HEAD");
      res.writeHead(200, {
        "Content-Type": asset.type,
        "Content-Length": String(asset.body.length),
        "Cache-Control": "no-cache",
        "Content-Security-Policy":
          "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ...SECURITY_HEADERS,
      });
      res.end(method === "HEAD" ? undefined : asset.body);
      return;
    }
    if (parts[0] !== "v1") throw new HttpError(404, "NOT_FOUND", `no such path ${path}`);
    const now = clock.now().getTime();
    const [, what, a, b, extra] = parts;

    if (what === "reports" && a === undefined) {
      allow("POST");
      auth(req, ["enroll"]);
      const body = await readBody(req, REPORT_MAX_BYTES);
      let report: ReturnType<typeof decodeReport>;
      try {
        report = decodeReport(body);
      } catch (err) {
        if (err instanceof FleetError && err.code === "FLEET_BAD_REPORT")
          throw new HttpError(400, err.code, err.message, { details: err.details });
        throw err;
      }
      ctx.machineId = report.machineId;
      const wait = limiter.take(report.machineId);
      if (wait > 0)
        throw new HttpError(
          429,
          "RATE_LIMITED",
          `too many reports from ${report.machineId}; retry later`,
          {
            headers: { "Retry-After": String(Math.ceil(wait / 1000)) },
            details: { retryAfterMs: wait },
          },
        );
      const r = await store.record(report, now);
      ctx.event = report.event;
      if (r.halted) log.warn({ hold: r.halted }, r.halted.reason);
      return send(res, 202, { accepted: true });
    }

    if (what === "holds" && a !== undefined && b === undefined) {
      allow("GET");
      auth(req, ["enroll", "operator"]);
      const channel = channelOf(a);
      const holds = await store.holds(channel);
      return send(res, 200, {
        format: 1,
        channel,
        holds: holds.map((h) => ({ version: h.version, reason: h.reason, by: h.by, at: h.at })),
      });
    }

    if (what === "holds" && a !== undefined && b !== undefined && extra === undefined) {
      allow("PUT", "DELETE");
      auth(req, ["operator"]);
      const channel = channelOf(a);
      const version = versionOf(b);
      if (method === "PUT") {
        let reason = "paused by an operator";
        if (Number(req.headers["content-length"] ?? 0) > 0 || req.headers["transfer-encoding"]) {
          const body = await readBody(req, OPERATOR_BODY_MAX);
          let json: unknown;
          try {
            json = JSON.parse(body.toString("utf8"));
          } catch {
            throw new HttpError(400, "BAD_REQUEST", "the body is not JSON");
          }
          const given = (json as { reason?: unknown } | null)?.reason;
          const keys = json && typeof json === "object" ? Object.keys(json) : [];
          if (
            typeof json !== "object" ||
            json === null ||
            keys.some((k) => k !== "reason") ||
            (given !== undefined && (typeof given !== "string" || given.length > 1024))
          )
            throw new HttpError(
              400,
              "BAD_REQUEST",
              'the body must be {"reason": "text of at most 1024 characters"}',
            );
          if (typeof given === "string" && given.trim() !== "") reason = given.trim();
        }
        const created = await store.pause(channel, version, reason, now);
        log.info({ channel, version, reason, created }, `paused ${channel} ${version}`);
        const [hold] = (await store.holds(channel)).filter((h) => h.version === version);
        return send(res, created ? 201 : 200, { hold, created });
      }
      const resumed = await store.resume(channel, version, now);
      if (!resumed) throw new HttpError(404, "NOT_FOUND", `${channel} ${version} is not held`);
      log.info({ channel, version }, `resumed ${channel} ${version}`);
      return send(res, 200, { resumed: true, channel, version });
    }

    if (what === "holds" && a === undefined) {
      allow("GET");
      auth(req, ["operator"]);
      return send(res, 200, {
        holds: await store.holds(undefined, url.searchParams.get("all") === "1"),
      });
    }

    if (what === "summary" && a === undefined) {
      allow("GET");
      auth(req, ["operator"]);
      return send(res, 200, await store.summary(now));
    }

    if (what === "hosts" && a === undefined) {
      allow("GET");
      auth(req, ["operator"]);
      const hosts = await store.hosts(hostFilter(url.searchParams), now);
      return send(res, 200, { hosts });
    }

    if (what === "hosts" && a !== undefined && b === undefined) {
      allow("GET");
      auth(req, ["operator"]);
      const id = segment(a);
      if (!MACHINE_ID.test(id))
        throw new HttpError(400, "BAD_REQUEST", "a machine id is 32 lowercase hex digits");
      const found = await store.host(id, now);
      if (!found) throw new HttpError(404, "NOT_FOUND", `no host ${id} has reported`);
      return send(res, 200, found);
    }

    if (what === "rollout" && a !== undefined && b === undefined) {
      allow("GET");
      auth(req, ["operator"]);
      return send(res, 200, await store.rollout(channelOf(a), now));
    }

    throw new HttpError(404, "NOT_FOUND", `no such path ${path}`);
  };

  const server = createServer((req, res) => {
    const started = clock.monotonicMs();
    const ctx: Record<string, unknown> = {};
    const remote = req.socket.remoteAddress;
    res.on("close", () => {
      const fields = {
        method: req.method,
        path: (req.url ?? "").split("?")[0],
        status: res.statusCode,
        ms: Math.round(clock.monotonicMs() - started),
        remote,
        ...ctx,
      };
      if (res.statusCode >= 500) log.error(fields, "request failed");
      else log.debug(fields, `${req.method} ${fields.path} ${res.statusCode}`);
    });
    routes(req, res, ctx).catch((err) => {
      if (err instanceof HttpError) {
        ctx.error = err.code;
        if (!res.headersSent)
          send(
            res,
            err.status,
            { error: { code: err.code, message: err.message, details: err.details } },
            {
              ...err.headers,
              // the rest of a refused body is not read
              ...(err.status === 413 || err.status === 415 ? { Connection: "close" } : {}),
            },
          );
        return;
      }
      log.error({ err, path: (req.url ?? "").split("?")[0] }, "request failed");
      if (!res.headersSent)
        send(res, 500, {
          error: {
            code: isBaseError(err) ? err.code : "INTERNAL",
            message: isBaseError(err) ? err.message : "internal error (logged by the server)",
          },
        });
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 5_000;
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  server.maxHeadersCount = 50;

  await new Promise<void>((resolve, reject) => {
    server.once("error", (cause) =>
      reject(
        new FleetError(
          "FLEET_SERVE_FAILED",
          `cannot listen on ${host}:${o.port}: ${(cause as Error).message}`,
          {
            cause,
            details: { host, port: o.port },
          },
        ),
      ),
    );
    server.listen(o.port, host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const shownHost = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  const url = `http://${shownHost}:${addr.port}/`;
  log.info({ url }, `fleet server on ${url}`);
  return {
    url,
    store,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

export interface ServeFleetOptions {
  dir: string;
  /** sqlite:PATH or postgres://...; default sqlite:DIR/fleet.db. */
  db?: string;
  host?: string;
  port: number;
  haltAfter?: HaltPolicy;
  clock?: Clock;
  log?: Logger;
  rate?: RateOptions;
}

/** `fleet serve`: the tokens from DIR, the database opened and migrated, the server listening. */
export async function serveFleet(o: ServeFleetOptions): Promise<FleetServer> {
  const [operatorToken, enrollToken] = await Promise.all([
    readToken(join(o.dir, OPERATOR_TOKEN_FILE)),
    readToken(join(o.dir, ENROLL_TOKEN_FILE)),
  ]);
  const clock = o.clock ?? systemClock;
  const sql = await openSql(parseDbUrl(o.db ?? `sqlite:${join(o.dir, "fleet.db")}`));
  let store: FleetStore;
  try {
    store = await FleetStore.open(sql, {
      now: () => clock.now(),
      ...(o.haltAfter ? { halt: o.haltAfter } : {}),
    });
  } catch (err) {
    await sql.close();
    throw err;
  }
  try {
    const server = await startFleetServer({
      store,
      operatorToken,
      enrollToken,
      port: o.port,
      clock,
      ...(o.host === undefined ? {} : { host: o.host }),
      ...(o.log === undefined ? {} : { log: o.log }),
      ...(o.rate === undefined ? {} : { rate: o.rate }),
    });
    return {
      ...server,
      close: async () => {
        await server.close();
        await store.close();
      },
    };
  } catch (err) {
    await store.close();
    throw err;
  }
}
