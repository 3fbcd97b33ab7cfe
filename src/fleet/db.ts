/**
 * The one seam between the fleet store and a database (README.md, "Storage"):
 * `Sql`, with two implementations, node:sqlite (DatabaseSync, WAL) and
 * PostgreSQL through `pg`. The store writes its SQL once, with `?`
 * placeholders and the syntax both accept (ON CONFLICT upserts, CASE, COALESCE);
 * the PostgreSQL side numbers the placeholders.
 */
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import type { DatabaseSync, StatementSync } from "node:sqlite";
import type { Pool, PoolClient } from "pg";
import { FleetError } from "./errors.ts";

export type Dialect = "sqlite" | "postgres";
export type Row = Record<string, unknown>;

export interface Sql {
  readonly dialect: Dialect;
  /** Rows of a SELECT (or of a statement with RETURNING). */
  query<T extends Row = Row>(sql: string, params?: readonly unknown[]): Promise<T[]>;
  /** A statement without rows: the number of rows it changed. */
  run(sql: string, params?: readonly unknown[]): Promise<number>;
  /** `fn` inside one transaction: committed when it resolves, rolled back when it throws. */
  transaction<T>(fn: (tx: Sql) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

export type DbTarget = { kind: "sqlite"; path: string } | { kind: "postgres"; url: string };

/** `sqlite:PATH` or `postgres://...` / `postgresql://...`. */
export function parseDbUrl(url: string): DbTarget {
  if (url.startsWith("sqlite:")) {
    const path = url.slice("sqlite:".length);
    if (path === "") throw badUrl(url, "sqlite: needs a file path, e.g. sqlite:/var/lib/fleet.db");
    return { kind: "sqlite", path };
  }
  if (/^postgres(ql)?:\/\//.test(url)) {
    try {
      new URL(url);
    } catch (cause) {
      throw badUrl(url, "not a URL", cause);
    }
    return { kind: "postgres", url };
  }
  throw badUrl(url, "must start with sqlite: or postgres://");
}

function badUrl(url: string, why: string, cause?: unknown): FleetError {
  // The URL may hold a password: shown without it.
  const shown = url.replace(/\/\/[^@/]*@/, "//***@");
  return new FleetError("FLEET_BAD_DB_URL", `database ${shown}: ${why}`, {
    cause,
    details: { db: shown },
  });
}

export async function openSql(target: DbTarget): Promise<Sql> {
  return target.kind === "sqlite" ? openSqlite(target.path) : openPostgres(target.url);
}

export async function openSqlite(path: string): Promise<Sql> {
  const { DatabaseSync } = await import("node:sqlite");
  let db: DatabaseSync;
  try {
    if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
    db = new DatabaseSync(path);
    db.exec("PRAGMA journal_mode = WAL");
    // WAL with NORMAL loses at most the last transactions on a power cut, never consistency.
    db.exec("PRAGMA synchronous = NORMAL");
    db.exec("PRAGMA busy_timeout = 5000");
    db.exec("PRAGMA foreign_keys = ON");
  } catch (cause) {
    throw new FleetError("FLEET_DB_FAILED", `cannot open ${path}: ${(cause as Error).message}`, {
      cause,
      details: { path },
    });
  }
  const statements = new Map<string, StatementSync>();
  const prepare = (sql: string): StatementSync => {
    let s = statements.get(sql);
    if (!s) {
      s = db.prepare(sql);
      statements.set(sql, s);
    }
    return s;
  };
  const bind = (params: readonly unknown[]) =>
    params.map((p) => (typeof p === "boolean" ? Number(p) : p)) as (string | number | null)[];
  const sql: Sql = {
    dialect: "sqlite",
    async query<T extends Row>(text: string, params: readonly unknown[] = []) {
      return prepare(text).all(...bind(params)) as T[];
    },
    async run(text, params = []) {
      return Number(prepare(text).run(...bind(params)).changes);
    },
    transaction: (fn) => {
      // One connection: transactions take turns, as SQLite has one writer anyway.
      const run = queue.then(async () => {
        db.exec("BEGIN IMMEDIATE");
        try {
          const r = await fn(sql);
          db.exec("COMMIT");
          return r;
        } catch (err) {
          db.exec("ROLLBACK");
          throw err;
        }
      });
      queue = run.then(
        () => undefined,
        () => undefined,
      );
      return run;
    },
    async close() {
      await queue;
      db.close();
    },
  };
  let queue: Promise<void> = Promise.resolve();
  return sql;
}

const numbered = new Map<string, string>();
/** `?` placeholders as PostgreSQL's `$1, $2, ...` (the store's SQL has no `?` in literals). */
function toPg(text: string): string {
  let out = numbered.get(text);
  if (out === undefined) {
    let n = 0;
    out = text.replace(/\?/g, () => `$${++n}`);
    numbered.set(text, out);
  }
  return out;
}

export async function openPostgres(url: string, max = 10): Promise<Sql> {
  const pg = (await import("pg")).default;
  // int8 (count, bigint columns) and numeric (sum) as numbers: the store's values fit.
  const types = {
    getTypeParser: (oid: number, format?: "text" | "binary") =>
      oid === 20 || oid === 1700
        ? (v: string) => Number(v)
        : pg.types.getTypeParser(oid, format ?? "text"),
  };
  const pool: Pool = new pg.Pool({ connectionString: url, max, types } as never);
  pool.on("error", () => {
    // An idle client's connection dropped: the pool replaces it on the next query.
  });
  const over = (c: Pool | PoolClient): Omit<Sql, "transaction" | "close"> => ({
    dialect: "postgres",
    async query<T extends Row>(text: string, params: readonly unknown[] = []) {
      return (await c.query(toPg(text), params as unknown[])).rows as T[];
    },
    async run(text, params = []) {
      return (await c.query(toPg(text), params as unknown[])).rowCount ?? 0;
    },
  });
  try {
    await pool.query("SELECT 1");
  } catch (cause) {
    await pool.end().catch(() => {});
    throw new FleetError(
      "FLEET_DB_FAILED",
      `cannot connect to PostgreSQL: ${(cause as Error).message}`,
      { cause },
    );
  }
  return {
    ...over(pool),
    async transaction(fn) {
      const client = await pool.connect();
      const tx: Sql = {
        ...over(client),
        transaction: (inner) => inner(tx),
        close: async () => {},
      };
      try {
        await client.query("BEGIN");
        const r = await fn(tx);
        await client.query("COMMIT");
        return r;
      } catch (err) {
        await client.query("ROLLBACK").catch(() => {});
        throw err;
      } finally {
        client.release();
      }
    },
    close: () => pool.end(),
  };
}
