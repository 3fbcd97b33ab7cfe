/**
 * A small etcd v3 client over its JSON gateway (README.md, "Client"): POST
 * /v3/kv/range, /v3/kv/txn, /v3/lease/grant, /v3/lease/revoke and
 * /v3/lease/timetolive with base64 keys and values, over node's own http and
 * https, so the agent carries no etcd library. Every call has a deadline
 * and a response size bound, and every response is validated before use.
 * Endpoints are tried in order, from the one that last worked.
 */
import { readFile } from "node:fs/promises";
import * as http from "node:http";
import * as https from "node:https";
import { ToolError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { LockError } from "./errors.ts";

export interface EtcdEndpointOptions {
  /** Client URLs of any members of one cluster, e.g. http://10.0.0.1:2379. */
  endpoints: string[];
  /** PEM file of the CA that signed the members' certificates (etcdctl --cacert). */
  ca?: string;
  /** PEM file of this client's certificate (etcdctl --cert). */
  cert?: string;
  /** PEM file of this client's private key (etcdctl --key). */
  key?: string;
  /** Deadline of each request to one endpoint (default 5000). */
  timeoutMs?: number;
}

export const DEFAULT_TIMEOUT_MS = 5000;
export const MAX_RESPONSE_BYTES = 1024 * 1024;

export interface KeyValue {
  key: string;
  value: Uint8Array;
  createRevision: string;
  modRevision: string;
  /** The lease the key is attached to, "0" for none. */
  lease: string;
}

/** A transaction compare, always EQUAL: `mod_revision` or `create_revision` ("0": the key is missing). */
export interface Compare {
  key: string;
  target: "MOD" | "CREATE";
  revision: string;
}

export type Op =
  | { put: { key: string; value: Uint8Array; lease?: string } }
  | { delete: { key: string } }
  | { range: { key: string; prefix?: boolean; keysOnly?: boolean } };

export interface TxnResult {
  succeeded: boolean;
  /** For each `range` op of the branch that ran, its keys, in op order (other ops give null). */
  ranges: (KeyValue[] | null)[];
}

/** An answer that is an etcd error (gRPC status) rather than a result. */
interface Refusal {
  endpoint: string;
  httpStatus: number;
  grpcCode: number | null;
  message: string;
}

// gRPC codes that say "this member cannot serve now": try another one.
const UNAVAILABLE = 14;
const DEADLINE_EXCEEDED = 4;
const NOT_FOUND = 5;

export class EtcdGateway {
  readonly endpoints: readonly string[];
  readonly #timeoutMs: number;
  readonly #o: EtcdEndpointOptions;
  readonly #log: Logger | undefined;
  #tls: Promise<{ ca?: Buffer; cert?: Buffer; key?: Buffer }> | undefined;
  #current = 0;

  constructor(o: EtcdEndpointOptions, log?: Logger) {
    if (o.endpoints.length === 0) throw new TypeError("etcd: no endpoints");
    this.endpoints = o.endpoints.map(normalizeEndpoint);
    this.#timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#o = o;
    this.#log = log;
  }

  /** The endpoint the next call tries first: the one that last answered. */
  get currentEndpoint(): string {
    return this.endpoints[this.#current] as string;
  }

  async range(key: string, o: { prefix?: boolean; keysOnly?: boolean } = {}): Promise<KeyValue[]> {
    const r = await this.#call("/v3/kv/range", rangeBody(key, o), key, parseRange);
    if ("refusal" in r) throw refused(r.refusal, "range", key);
    return r.result;
  }

  async txn(compare: Compare[], success: Op[], about: string): Promise<TxnResult> {
    const body = {
      compare: compare.map((c) => ({
        key: b64(c.key),
        result: "EQUAL",
        target: c.target,
        [c.target === "MOD" ? "mod_revision" : "create_revision"]: c.revision,
      })),
      success: success.map(opBody),
      failure: [],
    };
    const r = await this.#call("/v3/kv/txn", body, about, parseTxn);
    if ("refusal" in r) throw refused(r.refusal, "txn", about);
    return r.result;
  }

  /** A new lease of `ttlS` seconds; etcd may lengthen a very short one (its minimum is about 2 s). */
  async leaseGrant(ttlS: number, about: string): Promise<string> {
    const r = await this.#call("/v3/lease/grant", { TTL: String(ttlS), ID: "0" }, about, (j) =>
      int64(field(j, "ID"), "ID", false),
    );
    if ("refusal" in r) throw refused(r.refusal, "lease grant", about);
    return r.result;
  }

  /** Revoke a lease (its keys go with it); a lease already gone is not an error. */
  async leaseRevoke(id: string, about: string): Promise<void> {
    const r = await this.#call("/v3/lease/revoke", { ID: id }, about, () => undefined);
    if ("refusal" in r && r.refusal.grpcCode !== NOT_FOUND)
      throw refused(r.refusal, "lease revoke", about);
  }

  /** Seconds the lease has left, or -1 when it has expired. */
  async leaseTimeToLive(id: string, about: string): Promise<number> {
    const r = await this.#call("/v3/lease/timetolive", { ID: id }, about, (j) =>
      Number(int64(field(j, "TTL"), "TTL", true)),
    );
    if ("refusal" in r) {
      if (r.refusal.grpcCode === NOT_FOUND) return -1;
      throw refused(r.refusal, "lease time-to-live", about);
    }
    return r.result;
  }

  /**
   * POST to each endpoint in turn, from the current one, until one answers:
   * a connection failure, a timeout, a response that is not etcd's JSON, or
   * an "unavailable" error moves on; an etcd error is a refusal, returned.
   */
  async #call<T>(
    path: string,
    body: unknown,
    about: string,
    parse: (json: unknown) => T,
  ): Promise<{ result: T } | { refusal: Refusal }> {
    const tls = await this.#loadTls();
    const failures: string[] = [];
    const n = this.endpoints.length;
    for (let i = 0; i < n; i++) {
      const index = (this.#current + i) % n;
      const endpoint = this.endpoints[index] as string;
      let answer: { status: number; body: Buffer };
      try {
        answer = await post(endpoint + path, JSON.stringify(body), tls, this.#timeoutMs);
      } catch (err) {
        failures.push(`${endpoint}: ${transportReason(err)}`);
        continue;
      }
      let json: unknown;
      try {
        json = JSON.parse(answer.body.toString("utf8"));
      } catch {
        failures.push(`${endpoint}: HTTP ${answer.status}, not JSON (is it etcd?)`);
        continue;
      }
      if (answer.status !== 200) {
        const e = grpcError(json);
        if (
          answer.status === 502 ||
          answer.status === 503 ||
          answer.status === 504 ||
          e.code === UNAVAILABLE ||
          e.code === DEADLINE_EXCEEDED
        ) {
          failures.push(`${endpoint}: ${e.message}`);
          continue;
        }
        this.#answered(index, failures);
        return {
          refusal: { endpoint, httpStatus: answer.status, grpcCode: e.code, message: e.message },
        };
      }
      try {
        const result = parse(json);
        this.#answered(index, failures);
        return { result };
      } catch (err) {
        failures.push(`${endpoint}: a bad ${path} response (${(err as Error).message})`);
      }
    }
    throw new LockError(
      "REBOOT_LOCK_UNREACHABLE",
      `no etcd endpoint answered for ${about}: ${failures.join("; ")}`,
      { details: { key: about, endpoints: [...this.endpoints], failures } },
    );
  }

  /** Remember the endpoint that answered; say which ones did not (all failing is the caller's error). */
  #answered(index: number, failures: string[]): void {
    this.#current = index;
    if (failures.length > 0) {
      this.#log?.warn(
        { endpoint: this.endpoints[index], failures },
        "etcd endpoints failed before one answered",
      );
    }
  }

  #loadTls(): Promise<{ ca?: Buffer; cert?: Buffer; key?: Buffer }> {
    this.#tls ??= (async () => {
      const out: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {};
      for (const [name, flag] of [
        ["ca", "--cacert"],
        ["cert", "--cert"],
        ["key", "--key"],
      ] as const) {
        const path = this.#o[name];
        if (path === undefined) continue;
        try {
          out[name] = await readFile(path);
        } catch (err) {
          throw new ToolError("IO_ERROR", `cannot read the etcd TLS file ${path} (${flag})`, {
            cause: err,
            details: { path },
          });
        }
      }
      return out;
    })();
    return this.#tls;
  }
}

/** Why `e` is not an etcd client URL (http:// or https://, host, optional port), or undefined. */
export function endpointProblem(e: string): string | undefined {
  let u: URL;
  try {
    u = new URL(e);
  } catch {
    return `not a URL: ${e}`;
  }
  if (u.protocol !== "http:" && u.protocol !== "https:")
    return `an etcd endpoint is http:// or https://, got ${e}`;
  if (u.username || u.password || u.search || u.hash)
    return `an etcd endpoint has no user, query or fragment, got ${e}`;
  return undefined;
}

function normalizeEndpoint(e: string): string {
  const problem = endpointProblem(e);
  if (problem) throw new TypeError(`etcd endpoint: ${problem}`);
  const u = new URL(e);
  return `${u.protocol}//${u.host}${u.pathname.replace(/\/+$/, "")}`;
}

function post(
  url: string,
  body: string,
  tls: { ca?: Buffer; cert?: Buffer; key?: Buffer },
  timeoutMs: number,
): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const isHttps = url.startsWith("https:");
    const options: https.RequestOptions = {
      method: "POST",
      agent: false,
      headers: {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(body),
        connection: "close",
      },
      ...(isHttps ? tls : {}),
    };
    const req = (isHttps ? https : http).request(url, options, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on("data", (c: Buffer) => {
        size += c.length;
        if (size > MAX_RESPONSE_BYTES) {
          req.destroy(new Error(`response larger than ${MAX_RESPONSE_BYTES} bytes`));
          return;
        }
        chunks.push(c);
      });
      res.on("end", () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) });
      });
      res.on("error", fail);
    });
    const timer = setTimeout(
      () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)),
      timeoutMs,
    );
    function fail(err: Error): void {
      clearTimeout(timer);
      reject(err);
    }
    req.on("error", fail);
    req.end(body);
  });
}

/** One line on why a request failed, with a hint for a client certificate the server wants. */
function transportReason(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  // OpenSSL's text is "…:error:0A000412:SSL routines:ssl3_read_bytes:<reason>:<file>:<line>:…"
  const ssl = /:SSL routines:[^:]*:([^:]+):/.exec(e.message);
  const message = ssl
    ? `TLS: ${ssl[1]}`
    : e.message
        .replace(/; if the root CA is installed locally.*$/s, "") // node's hint, not ours
        .replace(/\s+/g, " ")
        .trim();
  const text = e.code && !ssl && !message.includes(e.code) ? `${e.code}: ${message}` : message;
  if (/certificate required|bad certificate|handshake failure/i.test(text))
    return `${text} (the server wants a client certificate: --cert and --key)`;
  if (/self[- ]signed|unable to (get|verify)|unknown ca/i.test(text))
    return `${text} (is --ca the CA that signed the server's certificate?)`;
  return text;
}

function grpcError(json: unknown): { code: number | null; message: string } {
  const o = (typeof json === "object" && json !== null ? json : {}) as Record<string, unknown>;
  const code = typeof o.code === "number" ? o.code : null;
  const message =
    typeof o.message === "string" ? o.message : typeof o.error === "string" ? o.error : "error";
  return { code, message };
}

function refused(r: Refusal, what: string, about: string): LockError {
  return new LockError(
    "REBOOT_LOCK_UNREACHABLE",
    `etcd at ${r.endpoint} refused the ${what} for ${about}: ${r.message}${r.grpcCode === null ? "" : ` (gRPC code ${r.grpcCode})`}`,
    {
      details: { key: about, endpoint: r.endpoint, httpStatus: r.httpStatus, grpcCode: r.grpcCode },
    },
  );
}

function b64(s: string): string {
  return Buffer.from(s, "utf8").toString("base64");
}

/** The end of the range of keys that start with `key`: the key with its last byte + 1 (etcd's rule). */
export function prefixEnd(key: string): Buffer {
  const end = Buffer.from(key, "utf8");
  for (let i = end.length - 1; i >= 0; i--) {
    if ((end[i] as number) < 0xff) {
      end[i] = (end[i] as number) + 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]); // every key
}

function rangeBody(key: string, o: { prefix?: boolean; keysOnly?: boolean }) {
  return {
    key: b64(key),
    ...(o.prefix ? { range_end: prefixEnd(key).toString("base64") } : {}),
    ...(o.keysOnly ? { keys_only: true } : {}),
  };
}

function opBody(op: Op): unknown {
  if ("put" in op) {
    const p = op.put;
    return {
      request_put: {
        key: b64(p.key),
        value: Buffer.from(p.value).toString("base64"),
        ...(p.lease ? { lease: p.lease } : {}),
      },
    };
  }
  if ("delete" in op) return { request_delete_range: { key: b64(op.delete.key) } };
  return { request_range: rangeBody(op.range.key, op.range) };
}

// Response validation. The gateway leaves out fields that hold their zero
// value (false, 0, empty lists), so a missing field means zero.

function field(j: unknown, name: string): unknown {
  if (typeof j !== "object" || j === null || Array.isArray(j)) throw new Error("not an object");
  return (j as Record<string, unknown>)[name];
}

/** An int64, which the gateway writes as a decimal string; kept as text (lease ids pass 2^53). */
function int64(v: unknown, name: string, signed: boolean): string {
  if (v === undefined) return "0";
  if (typeof v !== "string" || !(signed ? /^-?\d{1,19}$/ : /^\d{1,20}$/).test(v))
    throw new Error(`${name} is not an integer string`);
  return v;
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function base64(v: unknown, name: string): Buffer {
  if (v === undefined) return Buffer.alloc(0);
  if (typeof v !== "string" || !BASE64.test(v)) throw new Error(`${name} is not base64`);
  return Buffer.from(v, "base64");
}

export function parseKeyValues(j: unknown): KeyValue[] {
  const kvs = field(j, "kvs");
  if (kvs === undefined) return [];
  if (!Array.isArray(kvs)) throw new Error("kvs is not a list");
  return kvs.map((kv) => ({
    key: base64(field(kv, "key"), "key").toString("utf8"),
    value: base64(field(kv, "value"), "value"),
    createRevision: int64(field(kv, "create_revision"), "create_revision", false),
    modRevision: int64(field(kv, "mod_revision"), "mod_revision", false),
    lease: int64(field(kv, "lease"), "lease", true),
  }));
}

function parseRange(j: unknown): KeyValue[] {
  return parseKeyValues(j);
}

export function parseTxn(j: unknown): TxnResult {
  const succeeded = field(j, "succeeded");
  if (succeeded !== undefined && typeof succeeded !== "boolean")
    throw new Error("succeeded is not a boolean");
  const responses = field(j, "responses") ?? [];
  if (!Array.isArray(responses)) throw new Error("responses is not a list");
  return {
    succeeded: succeeded === true,
    ranges: responses.map((r) => {
      const range = field(r, "response_range");
      return range === undefined ? null : parseKeyValues(range);
    }),
  };
}
