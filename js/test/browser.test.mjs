// A real browser (Debian's chromium, driven by playwright-core) loads TF.js models locked
// by the CLI through the package (js/dist) and TF.js's browser bundle, served over HTTP:
// predictions equal the original's computed in Node, bit for bit; then the example page
// (js/example) predicts with the key from a licence endpoint and refuses a wrong key and
// a tampered model, and its screenshots show it.
//
// Without chromium the test is skipped, unless DEEPLOCK_REQUIRE_BROWSER=1 (CI), where
// it fails. DEEPLOCK_CHROMIUM names another binary.
import assert from "node:assert/strict";
import { cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { inflateSync } from "node:zlib";
import { cliOk, keygen, ROOT, rng, tempDir } from "./helpers.mjs";
import {
  floats, layersModel, predict, readArtifacts, sameBits, serve, tf, writeGraphModel, writeLayersModel,
} from "./tfjs-models.mjs";

const CHROMIUM = process.env.DEEPLOCK_CHROMIUM ?? "/usr/bin/chromium";
const REQUIRED = process.env.DEEPLOCK_REQUIRE_BROWSER === "1";
const JS = join(ROOT, "js");
const RESULTS = join(JS, "test-results");

/** Decodes an 8-bit RGB or RGBA PNG (what chromium's screenshots are): { width, height, rgba(x, y) }. */
function decodePng(png) {
  assert.ok(png.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])), "a PNG signature");
  let at = 8;
  let ihdr;
  const idat = [];
  while (at < png.length) {
    const len = png.readUInt32BE(at);
    const type = png.toString("latin1", at + 4, at + 8);
    const body = png.subarray(at + 8, at + 8 + len);
    if (type === "IHDR") ihdr = body;
    if (type === "IDAT") idat.push(body);
    at += 12 + len;
  }
  const width = ihdr.readUInt32BE(0);
  const height = ihdr.readUInt32BE(4);
  const [depth, colour, , , interlace] = ihdr.subarray(8);
  assert.equal(depth, 8);
  assert.equal(interlace, 0);
  const bpp = { 2: 3, 6: 4 }[colour];
  assert.ok(bpp, `PNG colour type ${colour}`);
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * bpp;
  const px = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)];
    const row = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let i = 0; i < stride; i++) {
      const a = i >= bpp ? px[y * stride + i - bpp] : 0;
      const b = y > 0 ? px[(y - 1) * stride + i] : 0;
      const c = i >= bpp && y > 0 ? px[(y - 1) * stride + i - bpp] : 0;
      let v = row[i];
      if (f === 1) v += a;
      else if (f === 2) v += b;
      else if (f === 3) v += (a + b) >> 1;
      else if (f === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else assert.equal(f, 0, "PNG filter type");
      px[y * stride + i] = v & 0xff;
    }
  }
  return { width, height, rgb: (x, y) => [...px.subarray((y * width + x) * bpp, (y * width + x) * bpp + 3)] };
}

/** Checks a screenshot: a real image, not one colour, with at least `min` pixels near `colour`. */
function checkScreenshot(png, name, colour, min = 40) {
  writeFileSync(join(RESULTS, name), png);
  const img = decodePng(png);
  assert.ok(img.width >= 300 && img.height >= 300, `${name}: ${img.width}x${img.height}`);
  const colours = new Set();
  let near = 0;
  for (let y = 0; y < img.height; y += 2) {
    for (let x = 0; x < img.width; x += 2) {
      const p = img.rgb(x, y);
      colours.add(p.join());
      if (p.every((v, i) => Math.abs(v - colour[i]) < 40)) near++;
    }
  }
  assert.ok(colours.size > 20, `${name} is not blank: ${colours.size} colours`);
  assert.ok(near >= min, `${name} shows the message's colour rgb(${colour}): ${near} pixels`);
}

/** A page that loads locked models through the package and reports what happened. */
const TEST_PAGE = `<!doctype html><meta charset="utf-8"><title>deeplock tfjs</title>
<script src="/js/node_modules/@tensorflow/tfjs/dist/tf.min.js"></script>
<script type="module">
import * as deeplock from "/js/dist/index.js";
window.run = async ({ url, keyHex, graph, data, shape, cryptoKey }) => {
  await tf.setBackend("cpu");
  const raw = deeplock.keyFromHex(keyHex);
  const key = cryptoKey ? await deeplock.importKey(raw) : raw;
  const fractions = [];
  try {
    const handler = deeplock.tfjs.io(url, key, { onProgress: (f) => fractions.push(f) });
    const model = graph ? await tf.loadGraphModel(handler) : await tf.loadLayersModel(handler);
    const y = model.predict(tf.tensor(Float32Array.from(data), shape));
    return { values: Array.from(await y.data()), fractions, backend: tf.getBackend(), extractable: cryptoKey ? key.extractable : null };
  } catch (e) {
    return { error: e.code ?? e.name, message: e.message, isDeeplock: e instanceof deeplock.DeeplockError };
  }
};
window.ready = true;
</script>`;

test("chromium loads locked TF.js models through the package and predicts exactly as TF.js in Node; the example page refuses a wrong key", async (t) => {
  if (!existsSync(CHROMIUM)) {
    const why = `no chromium at ${CHROMIUM}: install Debian's chromium (apt-get install --no-install-recommends chromium) or set DEEPLOCK_CHROMIUM`;
    if (REQUIRED) assert.fail(`${why} (DEEPLOCK_REQUIRE_BROWSER=1)`);
    t.diagnostic(why);
    t.skip(why);
    return;
  }
  assert.ok(existsSync(join(JS, "dist/index.js")), "js/dist is built (npx --prefix js tsc -p js)");
  const { chromium } = await import("playwright-core");
  mkdirSync(RESULTS, { recursive: true });
  const r = rng(t);
  const dir = tempDir(t);
  const key = keygen(dir);
  const other = keygen(dir, "other.key");
  const hexOf = (k) => readFileSync(k.path, "utf8").trim();

  // The models, locked by the CLI, and the original's predictions in Node.
  const m = layersModel(r);
  await writeLayersModel(join(dir, "layers"), m, { quantized: true, shard: 500 });
  writeGraphModel(join(dir, "graph"), r);
  const cases = [];
  for (const [name, graph] of [["layers", false], ["graph", true]]) {
    cliOk(["lock", join(dir, name), "-o", join(dir, `${name}-locked`), "--key-file", key.path]);
    const load = graph ? tf.loadGraphModel : tf.loadLayersModel;
    const original = await load(tf.io.fromMemory(readArtifacts(join(dir, name))));
    const input = graph ? { data: floats(r, 6), shape: [1, 6] } : { data: floats(r, 64), shape: [1, 8, 8, 1] };
    cases.push({ name, graph, input, expected: predict(original, input) });
  }
  // A copy with one weight byte changed.
  cpSync(join(dir, "layers-locked"), join(dir, "tampered"), { recursive: true });
  const shard = join(dir, "tampered", JSON.parse(readFileSync(join(dir, "tampered", "model.json"), "utf8")).weightsManifest[0].paths[1]);
  const b = readFileSync(shard);
  b[7] ^= 0x10;
  writeFileSync(shard, b);

  let licenceCalls = 0;
  const server = await serve({
    "/test.html": (req, res) => res.writeHead(200, { "content-type": "text/html" }).end(TEST_PAGE),
    "/licence": (req, res) => {
      licenceCalls++;
      res.writeHead(200, { "content-type": "text/plain", "cache-control": "no-store" }).end(`${hexOf(key)}\n`);
    },
    "/js/dist/": join(JS, "dist"),
    "/js/node_modules/@tensorflow/tfjs/dist/": join(JS, "node_modules/@tensorflow/tfjs/dist"),
    "/js/example/": join(JS, "example"),
    "/models/layers/": join(dir, "layers-locked"),
    "/models/graph/": join(dir, "graph-locked"),
    "/models/tampered/": join(dir, "tampered"),
  });
  t.after(server.close);

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--headless", "--no-sandbox"], timeout: 30_000 });
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 900, height: 1100 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));

  // 1. The package in the page, straight: layers and graph models, raw key and CryptoKey.
  await page.goto(`${server.url}/test.html`);
  await page.waitForFunction(() => window.ready === true);
  for (const c of cases) {
    const out = await page.evaluate((a) => window.run(a), {
      url: `${server.url}/models/${c.name}/model.json`, keyHex: hexOf(key), graph: c.graph,
      data: Array.from(c.input.data), shape: c.input.shape, cryptoKey: c.graph,
    });
    assert.ok(out.values, `${c.name}: ${out.error}: ${out.message}`);
    assert.equal(out.backend, "cpu");
    const got = Float32Array.from(out.values);
    assert.ok(sameBits(got, c.expected), `${c.name}: chromium's ${got} equal Node's ${c.expected}`);
    assert.equal(out.fractions.at(-1), 1);
    if (c.graph) assert.equal(out.extractable, false);
  }
  const refused = async (name, k) => page.evaluate((a) => window.run(a), {
    url: `${server.url}/models/${name}/model.json`, keyHex: hexOf(k), graph: false, data: [], shape: [0], cryptoKey: false,
  });
  const wrong = await refused("layers", other);
  assert.equal(wrong.error, "wrong-key", wrong.message);
  assert.ok(wrong.isDeeplock && wrong.message.startsWith("wrong key:"), wrong.message);
  const tampered = await refused("tampered", key);
  assert.equal(tampered.error, "tampered", tampered.message);
  assert.match(tampered.message, /^tensor ".+" in .* was modified after locking/);

  // 2. The example page: the key from the licence endpoint; the prediction shown is Node's.
  await page.goto(`${server.url}/js/example/index.html`);
  const c = cases[0];
  await page.fill("#model", `${server.url}/models/layers/model.json`);
  await page.fill("#licence", `${server.url}/licence`);
  await page.fill("#input", Array.from(c.input.data).join(", "));
  await page.selectOption("#backend", "cpu");
  await page.click("#load");
  await page.waitForSelector("#status.ok, #status.error", { timeout: 20_000 });
  assert.equal(await page.getAttribute("#status", "class"), "ok", await page.textContent("#status"));
  assert.match(await page.textContent("#status"), /Verified and unlocked \(cpu backend\)/);
  const shown = Float32Array.from(JSON.parse(await page.getAttribute("#output", "data-values")));
  assert.ok(sameBits(shown, c.expected), `the example shows ${shown}, Node's ${c.expected}`);
  assert.equal(await page.$eval("#progress", (p) => p.value), 1);
  assert.equal(licenceCalls, 1);
  checkScreenshot(await page.screenshot({ fullPage: true }), "example-unlocked.png", [0x0d, 0x65, 0x2d]);

  // 3. A wrong key typed in: the wrong-key message, in red, and no prediction.
  await page.fill("#licence", "");
  await page.fill("#key", hexOf(other));
  await page.click("#load");
  await page.waitForSelector("#status.error", { timeout: 20_000 });
  const text = await page.textContent("#status");
  assert.match(text, /^Wrong key: this model was locked with a different key/);
  assert.ok(!text.includes(hexOf(other)) && !text.includes(hexOf(key)), "no key in the message");
  assert.equal(await page.textContent("#output"), "(none)");
  checkScreenshot(await page.screenshot({ fullPage: true }), "example-wrong-key.png", [0xb0, 0x00, 0x20]);

  // 4. The right key on a tampered copy: said so.
  await page.fill("#model", `${server.url}/models/tampered/model.json`);
  await page.fill("#key", hexOf(key));
  await page.click("#load");
  await page.waitForFunction(() => /tampered/.test(document.querySelector("#status.error")?.textContent ?? ""));
  assert.match(await page.textContent("#status"), /^The model was tampered with/);
  checkScreenshot(await page.screenshot({ fullPage: true }), "example-tampered.png", [0xb0, 0x00, 0x20]);
  assert.deepEqual(errors, [], "no uncaught error in the pages");
});
