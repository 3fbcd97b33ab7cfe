/**
 * The fleet's two bearer tokens (README.md, "Tokens"): `operator.token` for
 * the operator's endpoints and the dashboard, `enroll.token` for agents.
 * Files of mode 0600, written once by `fleet init`; compared in constant time.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { FleetError } from "./errors.ts";

export const OPERATOR_TOKEN_FILE = "operator.token";
export const ENROLL_TOKEN_FILE = "enroll.token";
const TOKEN = /^[A-Za-z0-9._~+/=-]{16,512}$/;

export interface InitResult {
  dir: string;
  operatorTokenFile: string;
  enrollTokenFile: string;
}

/** A token of 32 random bytes, base64url; `random` is injected for tests. */
export function newToken(random: (n: number) => Uint8Array = randomBytes): string {
  return Buffer.from(random(32)).toString("base64url");
}

/** Write both token files (0600), refusing to replace either: none is written when one exists. */
export function initTokens(
  dir: string,
  random: (n: number) => Uint8Array = randomBytes,
): InitResult {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const files = [join(dir, OPERATOR_TOKEN_FILE), join(dir, ENROLL_TOKEN_FILE)] as const;
  const written: string[] = [];
  for (const file of files) {
    try {
      // wx: O_EXCL, so an existing token is never replaced, even by a concurrent init.
      writeFileSync(file, `${newToken(random)}\n`, { flag: "wx", mode: 0o600 });
      written.push(file);
    } catch (cause) {
      const code = (cause as NodeJS.ErrnoException).code;
      if (code === "EEXIST")
        throw new FleetError(
          "FLEET_TOKEN_EXISTS",
          `${file} exists; fleet init never replaces a token (remove it first to make a new one, and re-provision what used it)`,
          { cause, details: { file, written } },
        );
      throw new FleetError(
        "FLEET_TOKEN_UNREADABLE",
        `cannot write ${file}: ${(cause as Error).message}`,
        {
          cause,
          details: { file, written },
        },
      );
    }
  }
  return { dir, operatorTokenFile: files[0], enrollTokenFile: files[1] };
}

/** A token file's token: one line, not readable or writable by group or others. */
export async function readToken(file: string): Promise<string> {
  let text: string;
  let mode: number;
  try {
    mode = (await stat(file)).mode;
    text = await readFile(file, "utf8");
  } catch (cause) {
    throw new FleetError(
      "FLEET_TOKEN_UNREADABLE",
      `cannot read the token file ${file}: ${(cause as Error).message}`,
      {
        cause,
        details: { file },
      },
    );
  }
  if ((mode & 0o077) !== 0)
    throw new FleetError(
      "FLEET_TOKEN_UNREADABLE",
      `the token file ${file} has mode ${(mode & 0o777).toString(8)}; it must be 600 (chmod 600 ${file})`,
      { details: { file, mode: (mode & 0o777).toString(8) } },
    );
  const token = text.trim();
  if (!TOKEN.test(token))
    throw new FleetError(
      "FLEET_TOKEN_UNREADABLE",
      `the token file ${file} does not hold one token (16-512 characters)`,
      {
        details: { file },
      },
    );
  return token;
}

const digest = (s: string) => createHash("sha256").update(s).digest();

/** Whether `given` is `expected`, in time independent of where they differ (both hashed first). */
export function tokenMatches(given: string, expected: string): boolean {
  return timingSafeEqual(digest(given), digest(expected));
}
