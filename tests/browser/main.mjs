// Runs the browser scenarios: `node tests/browser/main.mjs [NAME-FILTER]`. Needs the
// cargo-built binaries (target/debug), the built web client (web/dist), Chromium and
// playwright-core; scripts/browser-test provides all of them.

import { runScenarios } from "./harness.mjs";
import "./chat.mjs";

const failed = await runScenarios(process.argv[2] ?? "");
process.exit(failed === 0 ? 0 : 1);
