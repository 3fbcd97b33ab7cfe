/** `abforge agent`: the on-host update agent (src/updater). Argument handling only. */
import type { Command } from "commander";
import { logger } from "../log.ts";
import {
  type AgentCliOptions,
  createAgent,
  formatAfterBoot,
  formatCheck,
  formatStatus,
} from "../updater/index.ts";
import { action, type JsonOption, output } from "./command.ts";
import { exitCodeFor } from "./exit-codes.ts";

type Opts = AgentCliOptions & JsonOption;

function common(cmd: Command): Command {
  return cmd
    .option(
      "--config <file>",
      "agent config (default /etc/abforge/agent.yaml; with --disk, the one inside the slot the image boots)",
    )
    .option(
      "--disk <image>",
      "a disk image standing for the boot disk: the slot the boot state boots now counts as booted",
    )
    .option(
      "--state-dir <dir>",
      "state directory (default /var/lib/abforge; with --disk, <image>.abforge-state)",
    )
    .option(
      "--pubkey <file>",
      "trust only this public key (SPKI PEM), instead of the config's or the image's; repeatable",
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option(
      "--reboot-command <command>",
      "with --disk: run this (/bin/sh -c) where a host would reboot, instead of only logging it",
    )
    .option("--json", "print JSON");
}

export function register(program: Command): void {
  const agent = program
    .command("agent")
    .description(
      "the update agent: poll a repository, install into the idle slot, mark good, record rollbacks",
    );
  const log = () => logger().child({ module: "updater" });

  common(agent.command("run"))
    .description(
      "the daemon: after-boot handling, then check now and every pollIntervalMs; stops on SIGTERM",
    )
    .action(
      action(async (opts: Opts) => {
        const a = await createAgent(opts, log());
        const stop = new AbortController();
        const onSignal = () => stop.abort(new Error("SIGTERM"));
        process.once("SIGTERM", onSignal);
        process.once("SIGINT", onSignal);
        try {
          await a.run(stop.signal);
        } finally {
          process.off("SIGTERM", onSignal);
          process.off("SIGINT", onSignal);
        }
      }),
    );

  common(agent.command("check"))
    .description("one poll: fetch and verify the channel index, install the update if there is one")
    .action(
      action(async (opts: Opts) => {
        const a = await createAgent(opts, log());
        const r = await a.check().finally(() => a.close());
        output(opts, r, () => formatCheck(r));
      }),
    );

  common(agent.command("install"))
    .description("install a bundle from a local file or an http(s) URL into the idle slot")
    .argument("<bundle-or-url>", "bundle file or URL")
    .action(
      action(async (location: string, opts: Opts) => {
        const a = await createAgent(opts, log());
        const r = await a.install(location).finally(() => a.close());
        output(opts, r, () => formatCheck(r));
      }),
    );

  common(agent.command("status"))
    .description(
      "booted and other slot, boot state, last check and error, progress, rollbacks, bad versions",
    )
    .action(
      action(async (opts: Opts) => {
        const s = await (await createAgent(opts, log(), {}, { readOnly: true })).status();
        output(opts, s, () => formatStatus(s));
      }),
    );

  common(agent.command("reboot"))
    .description(
      "reboot into the installed update now: also with strategy off or outside the window; with etcd-lock only holding a place in the lock",
    )
    .addHelpText(
      "after",
      "\nExamples:\n  abforge agent status          # shows what the reboot waits for\n  abforge agent reboot          # the operator says: now\n",
    )
    .action(
      action(async (opts: Opts) => {
        const a = await createAgent(opts, log());
        const r = await a.reboot().finally(() => a.close());
        output(opts, r, () => formatCheck(r));
        return r.rebooting ? 0 : exitCodeFor("REBOOT_WAITING");
      }),
    );

  common(agent.command("mark-good"))
    .description(
      "after boot: run the health checks and mark the booted slot good (or record a rollback)",
    )
    .action(
      action(async (opts: Opts) => {
        const a = await createAgent(opts, log());
        const r = await a.afterBoot().finally(() => a.close());
        output(opts, r, () => formatAfterBoot(r));
        return r.action === "unhealthy" ? exitCodeFor("HEALTH_CHECK_FAILED") : 0;
      }),
    );
}
