// Builds the web client into web/dist: web/src/main.ts (with the SDK and its runtime)
// bundled and minified by esbuild into app.js, plus index.html and app.css as they are.
// The gateway serves web/dist (`--web-root`). `--watch` rebuilds app.js as the sources change.
import { copyFile, mkdir, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const web = dirname(fileURLToPath(import.meta.url));
const dist = join(web, "dist");
const watch = process.argv.includes("--watch");

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });
await copyFile(join(web, "index.html"), join(dist, "index.html"));
await copyFile(join(web, "styles.css"), join(dist, "app.css"));

const options = {
  entryPoints: [join(web, "src", "main.ts")],
  outfile: join(dist, "app.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  // BigInt (protobuf's 64-bit seqs), private fields and top-level await need ES2022.
  target: ["es2022", "chrome100", "firefox100", "safari15.4"],
  minify: !watch,
  sourcemap: true,
  legalComments: "none",
  logLevel: "info",
};

if (watch) {
  const context = await esbuild.context(options);
  await context.watch();
} else {
  await esbuild.build(options);
}
