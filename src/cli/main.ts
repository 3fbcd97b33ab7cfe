/** Entry point of the abforge command-line program (bin/abforge runs this file). */
import { loadLean } from "./lean-load.ts";

const { createProgram } = await loadLean(() => import("./program.ts"));
await createProgram().parseAsync(process.argv);
