/**
 * Real etcd servers for tests (Debian's /usr/bin/etcd): one member or an
 * N-member cluster on 127.0.0.1 random ports with temporary data dirs,
 * never the system's service on 2379. A member can be stopped or killed
 * mid-test and started again with the same data and ports. `stop()` ends
 * every process and removes the data; processes still running when the
 * test process exits are killed.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { freePort } from "./net.ts";

export const ETCD = "/usr/bin/etcd";
const HEALTH_TIMEOUT_MS = 20_000;

/** Server TLS for the client URLs (peers stay plain HTTP on 127.0.0.1). */
export interface EtcdTls {
  certFile: string;
  keyFile: string;
  caFile: string;
  /** --client-cert-auth: clients must show a certificate signed by caFile. */
  clientCertAuth: boolean;
  /** The client certificate and key the health check uses when clientCertAuth is on. */
  clientCertFile?: string;
  clientKeyFile?: string;
}

export interface EtcdMember {
  name: string;
  endpoint: string;
  readonly running: boolean;
  /** SIGTERM and wait for the exit; the data stays. */
  stop(): Promise<void>;
  /** SIGKILL and wait for the exit; the data stays. */
  kill(): Promise<void>;
  /** Start again with the same data and ports; resolves once it is healthy. */
  start(): Promise<void>;
  /** stop, then start. */
  restart(): Promise<void>;
  /** Its log so far (for a failure message). */
  log(): string;
}

export interface EtcdCluster {
  endpoints: string[];
  members: EtcdMember[];
  /** Stop every member and remove the data. */
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
process.once("exit", () => {
  for (const c of live) c.kill("SIGKILL");
});

/** One etcd member. */
export function startEtcd(o: { tls?: EtcdTls } = {}): Promise<EtcdCluster> {
  return startEtcdCluster(1, o);
}

/** An `n`-member cluster; resolves once every member is healthy (a leader was elected). */
export async function startEtcdCluster(n: number, o: { tls?: EtcdTls } = {}): Promise<EtcdCluster> {
  const root = mkdtempSync(join(tmpdir(), "abforge-etcd-"));
  const scheme = o.tls ? "https" : "http";
  const specs: { name: string; client: string; peer: string }[] = [];
  for (let i = 0; i < n; i++) {
    specs.push({
      name: `m${i}`,
      client: `${scheme}://127.0.0.1:${await freePort()}`,
      peer: `http://127.0.0.1:${await freePort()}`,
    });
  }
  const initialCluster = specs.map((s) => `${s.name}=${s.peer}`).join(",");
  const members = specs.map((s) => member(root, s, initialCluster, o.tls));
  const cluster: EtcdCluster = {
    endpoints: specs.map((s) => s.client),
    members,
    async stop() {
      await Promise.all(members.map((m) => m.kill()));
      rmSync(root, { recursive: true, force: true });
    },
  };
  try {
    // Members of a new cluster wait for each other: start all, then wait.
    await Promise.all(members.map((m) => m.start()));
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}

function member(
  root: string,
  s: { name: string; client: string; peer: string },
  initialCluster: string,
  tls: EtcdTls | undefined,
): EtcdMember {
  const logPath = join(root, `${s.name}.log`);
  const args = [
    "--name",
    s.name,
    "--data-dir",
    join(root, s.name),
    "--listen-client-urls",
    s.client,
    "--advertise-client-urls",
    s.client,
    "--listen-peer-urls",
    s.peer,
    "--initial-advertise-peer-urls",
    s.peer,
    "--initial-cluster",
    initialCluster,
    "--initial-cluster-token",
    `abforge-test-${root}`,
    "--initial-cluster-state",
    "new",
    ...(tls
      ? [
          "--cert-file",
          tls.certFile,
          "--key-file",
          tls.keyFile,
          "--trusted-ca-file",
          tls.caFile,
          ...(tls.clientCertAuth ? ["--client-cert-auth"] : []),
        ]
      : []),
  ];
  // etcd reads ETCD_* variables as flags: none of the caller's may leak in.
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith("ETCD")),
  );
  let child: ChildProcess | null = null;
  let exited: Promise<void> = Promise.resolve();

  const signal = async (sig: NodeJS.Signals) => {
    const c = child;
    if (!c) return;
    c.kill(sig);
    const killer = setTimeout(() => c.kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(killer);
  };
  const m: EtcdMember = {
    name: s.name,
    endpoint: s.client,
    get running() {
      return child !== null;
    },
    stop: () => signal("SIGTERM"),
    kill: () => signal("SIGKILL"),
    async start() {
      if (child) return;
      const fd = openSync(logPath, "a");
      const c = spawn(ETCD, args, { env, stdio: ["ignore", fd, fd] });
      closeSync(fd);
      child = c;
      live.add(c);
      exited = new Promise((resolve) => {
        c.once("exit", () => {
          live.delete(c);
          if (child === c) child = null;
          resolve();
        });
        c.once("error", () => {
          live.delete(c);
          if (child === c) child = null;
          resolve();
        });
      });
      await waitHealthy(m, tls);
    },
    async restart() {
      await m.stop();
      await m.start();
    },
    log: () => {
      try {
        return readFileSync(logPath, "utf8");
      } catch {
        return "";
      }
    },
  };
  return m;
}

/** GET /health until it says {"health":"true"}, for at most HEALTH_TIMEOUT_MS. */
async function waitHealthy(m: EtcdMember, tls: EtcdTls | undefined): Promise<void> {
  const deadline = Date.now() + HEALTH_TIMEOUT_MS;
  let last = "";
  while (Date.now() < deadline) {
    if (!m.running) break;
    try {
      const body = await get(`${m.endpoint}/health`, tls);
      if ((JSON.parse(body) as { health?: string }).health === "true") return;
      last = body;
    } catch (err) {
      last = (err as Error).message;
    }
    await sleep(100);
  }
  throw new Error(
    `etcd ${m.name} at ${m.endpoint} not healthy (${m.running ? "running" : "exited"}; last: ${last}):\n${m.log().slice(-3000)}`,
  );
}

function get(url: string, tls: EtcdTls | undefined): Promise<string> {
  return new Promise((resolve, reject) => {
    const opts: https.RequestOptions = { agent: false, timeout: 2000 };
    if (tls) {
      opts.ca = readFileSync(tls.caFile);
      if (tls.clientCertFile) opts.cert = readFileSync(tls.clientCertFile);
      if (tls.clientKeyFile) opts.key = readFileSync(tls.clientKeyFile);
    }
    const req = (url.startsWith("https:") ? https : http).get(url, opts, (res) => {
      let body = "";
      res.on("data", (d) => {
        body += d;
      });
      res.on("end", () => resolve(body));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error("timed out")));
    req.on("error", reject);
  });
}

export interface TlsFiles {
  caFile: string;
  serverCertFile: string;
  serverKeyFile: string;
  clientCertFile: string;
  clientKeyFile: string;
}

/**
 * A CA and a server (IP 127.0.0.1) and a client certificate signed by it,
 * made with openssl in `dir` (P-256 keys: fast), valid for a day.
 */
export function generateTls(dir: string): TlsFiles {
  const f = (name: string) => join(dir, name);
  const openssl = (...args: string[]) => execFileSync("openssl", args, { stdio: "pipe" });
  // a new P-256 key in NAME.key and a request for it (-x509: a self-signed certificate) in `out`
  const request = (name: string, out: string, ...extra: string[]) =>
    openssl(
      "req",
      ...extra,
      ...["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"],
      ...["-keyout", f(`${name}.key`), "-out", f(out), "-subj", `/CN=abforge test ${name}`],
    );
  request("ca", "ca.crt", "-x509", "-days", "1");
  const leaf = (name: string, ext: string) => {
    request(name, `${name}.csr`);
    writeFileSync(f(`${name}.ext`), ext);
    openssl(
      "x509",
      "-req",
      "-in",
      f(`${name}.csr`),
      "-CA",
      f("ca.crt"),
      "-CAkey",
      f("ca.key"),
      "-CAcreateserial",
      "-days",
      "1",
      "-out",
      f(`${name}.crt`),
      "-extfile",
      f(`${name}.ext`),
    );
  };
  leaf("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n");
  leaf("client", "extendedKeyUsage=clientAuth\n");
  return {
    caFile: f("ca.crt"),
    serverCertFile: f("server.crt"),
    serverKeyFile: f("server.key"),
    clientCertFile: f("client.crt"),
    clientKeyFile: f("client.key"),
  };
}
