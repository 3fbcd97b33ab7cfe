/**
 * The image spec: a YAML file, validated once at load into a typed
 * `ImageSpec` with units in the names (src/build/README.md, "The spec").
 * `parseSpec` is pure (the texts of extended bases are passed in);
 * `loadSpec` reads the files and checks that every referenced file exists.
 * Its located YAML and typed readers are src/image's (yaml.ts), which the
 * agent config shares.
 */
export { MIB } from "../../image/index.ts";
export { loadSpec, resolveHostBinary } from "./load.ts";
export { parseSpec } from "./parse.ts";
export type {
  Compression,
  DebootstrapLayer,
  DirLayer,
  FileEntry,
  FilesLayer,
  HealthCheck,
  HostBinariesLayer,
  HostBinary,
  ImageSpec,
  LayerOrigin,
  LayerSpec,
  ParseSpecOptions,
  SpecIssue,
  SpecIssueKind,
  SpecOrigin,
  TarLayer,
  UpdateMode,
} from "./types.ts";
export { UPDATE_MODES } from "./types.ts";
