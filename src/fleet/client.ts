/**
 * The operator's side of the API (`fleet status|hosts|pause|resume`): one
 * request each, the operator token as bearer, the server's JSON error turned
 * into a FleetError that says what the server said.
 */
import { FleetError } from "./errors.ts";
import type { Hold, Host, HostFilter, Summary } from "./store.ts";

export interface FleetClientOptions {
  server: string;
  token: string;
  /** Milliseconds before a request is given up. */
  timeoutMs?: number;
}

async function request<T>(
  o: FleetClientOptions,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; data: T }> {
  let base: URL;
  try {
    base = new URL(o.server.endsWith("/") ? o.server : `${o.server}/`);
    if (base.protocol !== "http:" && base.protocol !== "https:") throw new Error("not http(s)");
  } catch (cause) {
    throw new FleetError(
      "FLEET_REQUEST_FAILED",
      `--server ${o.server} is not an http:// or https:// URL`,
      {
        cause,
      },
    );
  }
  const url = new URL(path, base);
  let res: Response;
  try {
    res = await fetch(url, {
      method,
      headers: {
        Authorization: `Bearer ${o.token}`,
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(o.timeoutMs ?? 30_000),
    });
  } catch (cause) {
    throw new FleetError("FLEET_REQUEST_FAILED", `${method} ${url}: ${(cause as Error).message}`, {
      cause,
      details: { url: String(url) },
    });
  }
  const text = await res.text();
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    data = undefined;
  }
  if (res.ok && data !== undefined) return { status: res.status, data: data as T };
  const e = (data as { error?: { code?: string; message?: string } } | undefined)?.error;
  const said = e?.message ?? `HTTP ${res.status}${text ? `: ${text.slice(0, 200)}` : ""}`;
  const code =
    res.status === 401 || res.status === 403
      ? "FLEET_UNAUTHORIZED"
      : res.status === 404
        ? "FLEET_NOT_FOUND"
        : "FLEET_REQUEST_FAILED";
  throw new FleetError(code, `${method} ${url}: ${said}`, {
    details: { url: String(url), status: res.status, ...(e?.code ? { serverCode: e.code } : {}) },
  });
}

export async function fleetSummary(o: FleetClientOptions): Promise<Summary> {
  return (await request<Summary>(o, "GET", "v1/summary")).data;
}

export async function fleetHosts(o: FleetClientOptions, f: HostFilter): Promise<Host[]> {
  const q = new URLSearchParams();
  if (f.channel) q.set("channel", f.channel);
  if (f.version) q.set("version", f.version);
  if (f.state) q.set("state", f.state);
  if (f.search) q.set("q", f.search);
  if (f.limit) q.set("limit", String(f.limit));
  const qs = q.toString();
  return (await request<{ hosts: Host[] }>(o, "GET", `v1/hosts${qs ? `?${qs}` : ""}`)).data.hosts;
}

const holdPath = (channel: string, version: string) =>
  `v1/holds/${encodeURIComponent(channel)}/${encodeURIComponent(version)}`;

export async function fleetPause(
  o: FleetClientOptions,
  channel: string,
  version: string,
  reason?: string,
): Promise<{ hold: Hold; created: boolean }> {
  return (
    await request<{ hold: Hold; created: boolean }>(
      o,
      "PUT",
      holdPath(channel, version),
      reason === undefined ? {} : { reason },
    )
  ).data;
}

export async function fleetResume(
  o: FleetClientOptions,
  channel: string,
  version: string,
): Promise<void> {
  await request(o, "DELETE", holdPath(channel, version));
}
