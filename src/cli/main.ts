/** Entry point of the abforge command-line program (bin/abforge runs this file). */
import { createRequire } from "node:module";

// Node's ESM view of `node:http` reads every export once, and three of them
// (WebSocket, CloseEvent, MessageEvent) are getters that load undici, a large
// module abforge never uses: +13 MB of memory and +40 ms for every command,
// since got imports `node:http`. They are taken off while the program's
// modules load (when that view is made) and put back after, so
// `require("node:http").WebSocket` still works; only an ESM import of them
// from `node:http` would see undefined, and no abforge module has one.
const http = createRequire(import.meta.url)("node:http") as Record<string, unknown>;
const lazy: [string, PropertyDescriptor][] = [];
for (const name of ["WebSocket", "CloseEvent", "MessageEvent"]) {
  const d = Object.getOwnPropertyDescriptor(http, name);
  if (d?.get && d.configurable) {
    lazy.push([name, d]);
    delete http[name];
  }
}
const { createProgram } = await import("./program.ts");
for (const [name, d] of lazy) Object.defineProperty(http, name, d);
await createProgram().parseAsync(process.argv);
