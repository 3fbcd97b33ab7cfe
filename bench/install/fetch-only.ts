/**
 * The floor under any agent built on Node and the project's HTTP client:
 * `node bench/install/fetch-only.ts got|http URL` fetches URL into nothing —
 * no check, no write, no sync — with got (as the agent does, same options) or
 * with bare `node:http`, and prints the byte count. bench/install/run.ts
 * times it as it times the agent: a fresh process, the agent's V8 flags.
 */
import { get } from "node:http";

const [mode, url] = process.argv.slice(2);
if ((mode !== "got" && mode !== "http") || !url) {
  process.stderr.write("usage: fetch-only.ts got|http URL\n");
  process.exit(2);
}
let bytes = 0;
if (mode === "got") {
  const { default: got } = await import("got");
  const stream = got.stream(url, {
    headers: { "accept-encoding": "identity" },
    decompress: false,
    retry: { limit: 0 },
  });
  for await (const chunk of stream) bytes += (chunk as Buffer).length;
} else {
  await new Promise<void>((resolve, reject) => {
    get(url, (res) => {
      res.on("data", (chunk: Buffer) => {
        bytes += chunk.length;
      });
      res.on("end", resolve);
      res.on("error", reject);
    }).on("error", reject);
  });
}
process.stdout.write(`${bytes}\n`);
