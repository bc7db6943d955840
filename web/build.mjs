// Builds the web client into web/dist: web/src/main.ts (with the SDK and its runtime)
// bundled and minified by esbuild into app.js, the service worker web/src/sw.ts into sw.js
// (a classic script at the site root, so its scope is the whole app), plus index.html and
// app.css as they are. The gateway serves web/dist (`--web-root`). `--watch` rebuilds the
// scripts as the sources change.
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

const app = {
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

// Registered without `type: "module"`, which not every browser runs in a worker: one script.
const worker = { ...app, entryPoints: [join(web, "src", "sw.ts")], outfile: join(dist, "sw.js"), format: "iife" };

for (const options of [app, worker]) {
  if (watch) {
    const context = await esbuild.context(options);
    await context.watch();
  } else {
    await esbuild.build(options);
  }
}
