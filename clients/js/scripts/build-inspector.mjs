// Builds the inspector into the Python package: the page needs no bundling
// (one ES module, no dependencies), so building is copying its files to
// nexusd/http/static/, where the daemon serves them from.
import { copyFile, mkdir, readdir } from "node:fs/promises";
import { fileURLToPath } from "node:url";

const source = new URL("../inspector/", import.meta.url);
const target = new URL("../../../nexusd/http/static/", import.meta.url);
await mkdir(target, { recursive: true });
for (const name of (await readdir(source)).sort()) {
  await copyFile(new URL(name, source), new URL(name, target));
  console.log(`${fileURLToPath(new URL(name, target))}`);
}
