/**
 * The container host (images/host.yaml) under QEMU as an operator meets it,
 * shared by `scripts/demo.sh host` and bench/host/run.ts (test/qemu/host.test.ts
 * does the same steps with its own assertions): a cloud-config that makes
 * user `ops` with an SSH key and sudo and writes a systemd unit running
 * busybox httpd in a container (its pages on a volume under /var); commands
 * over SSH; the container image made here and loaded with `podman load`.
 */
import { rmSync } from "node:fs";
import { join } from "node:path";
import { ociArchive } from "./oci.ts";
import { copyTo, ssh, waitForSsh } from "./ssh.ts";

/** The port httpd listens on in the container, published on the host's. */
export const HTTPD_PORT = 8080;
/** The image `web.service` runs, as `podman load` names it. */
export const HTTPD_IMAGE = "localhost/httpd:1";
export const USER = "ops";

/**
 * cloud-config user-data: hostname, user `ops` (key, passwordless sudo),
 * web.service; `motd` adds /etc/motd, `runcmd` commands run once per instance.
 */
export function hostUserData(o: {
  hostname: string;
  publicKey: string;
  motd?: string;
  runcmd?: readonly string[];
}): string {
  const motd =
    o.motd === undefined
      ? ""
      : `  - path: /etc/motd\n    content: ${JSON.stringify(`${o.motd}\n`)}\n`;
  const runcmd = o.runcmd?.length
    ? `runcmd:\n${o.runcmd.map((c) => `  - [sh, -c, ${JSON.stringify(c)}]\n`).join("")}`
    : "";
  return `#cloud-config
hostname: ${o.hostname}
users:
  - name: ${USER}
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    shell: /bin/bash
    ssh_authorized_keys:
      - ${o.publicKey}
write_files:
${motd}  - path: /etc/systemd/system/web.service
    content: |
      [Unit]
      Description=web: busybox httpd in a container, its pages on a volume under /var
      Wants=network-online.target
      After=network-online.target
      [Service]
      ExecStartPre=-/usr/bin/podman rm -f web
      ExecStart=/usr/bin/podman run --rm --name web -p ${HTTPD_PORT}:${HTTPD_PORT} -v /var/lib/web:/www ${HTTPD_IMAGE}
      ExecStop=/usr/bin/podman stop -t 5 web
      Restart=on-failure
      [Install]
      WantedBy=multi-user.target
${runcmd}`;
}

/** A booted host reached as `ops` over 127.0.0.1:sshPort. */
export class HostShell {
  readonly sshPort: number;
  readonly key: string;
  constructor(sshPort: number, key: string) {
    this.sshPort = sshPort;
    this.key = key;
  }

  /** Run a command as ops; its stdout, or an error with its output when it fails. */
  async on(command: string, timeoutMs = 120_000): Promise<string> {
    const r = await ssh(this.sshPort, this.key, USER, command, { timeoutMs });
    if (r.code !== 0) {
      throw new Error(
        `on the host, \`${command}\` failed (exit ${r.code}): ${r.stdout}${r.stderr}`,
      );
    }
    return r.stdout;
  }

  /** Wait until sshd answers with the provisioned key. */
  async up(totalMs: number, intervalMs = 3000): Promise<void> {
    await waitForSsh(this.sshPort, this.key, USER, {
      attempts: Math.ceil(totalMs / intervalMs),
      totalMs,
      intervalMs,
    });
  }

  /** Wait until abforge-mark-good.service is active: the booted slot is marked good. */
  async markedGood(timeoutMs: number, intervalSec = 2): Promise<void> {
    const tries = Math.ceil(timeoutMs / 1000 / intervalSec);
    await this.on(
      `for i in $(seq 1 ${tries}); do systemctl is-active -q abforge-mark-good.service && exit 0; sleep ${intervalSec}; done; exit 1`,
      timeoutMs + 30_000,
    );
  }

  /**
   * Make the busybox httpd OCI archive in `dir`, copy it in, `podman load` it,
   * write the page to /var/lib/web and start web.service.
   */
  async runHttpd(dir: string, page: string): Promise<void> {
    const archive = await ociArchive(join(dir, "httpd.tar"), {
      name: HTTPD_IMAGE.split(":")[0]!,
      tag: HTTPD_IMAGE.split(":")[1]!,
      cmd: ["/bin/httpd", "-f", "-p", String(HTTPD_PORT), "-h", "/www"],
      exposedPorts: [HTTPD_PORT],
    });
    try {
      // /tmp is a tmpfs on the host: the archive leaves it once loaded
      await copyTo(this.sshPort, this.key, USER, archive.path, "/tmp/httpd.tar");
    } finally {
      rmSync(archive.path, { force: true });
    }
    await this.on("sudo podman load -q -i /tmp/httpd.tar && rm /tmp/httpd.tar", 300_000);
    const quoted = `'${page.replace(/'/g, "'\\''")}'`;
    await this.on(
      `sudo mkdir -p /var/lib/web && printf '%s\\n' ${quoted} | sudo tee /var/lib/web/index.html >/dev/null`,
    );
    await this.on(
      "sudo systemctl daemon-reload && sudo systemctl enable --now web.service",
      300_000,
    );
  }
}

/** GET http://127.0.0.1:PORT/ until it answers 200 (the container may still be starting). */
export async function webPage(port: number, timeoutMs = 120_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(5000) });
      if (res.ok) return await res.text();
    } catch (err) {
      if (Date.now() > deadline) throw err;
    }
    if (Date.now() > deadline) throw new Error(`http://127.0.0.1:${port}/ never answered 200`);
    await new Promise((r) => setTimeout(r, 2000));
  }
}
