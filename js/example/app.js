// The example page: loads a locked TF.js model with deeplock's tfjs.io and runs it.
// `tf` is TF.js's browser bundle (a <script> in index.html); deeplock is js/dist.
import { importKey, keyFromHex, tfjs } from "../dist/index.js";

/* global tf */
const $ = (id) => document.getElementById(id);
const status = $("status");
const progress = $("progress");
const output = $("output");

function show(kind, text, detail) {
  status.hidden = false;
  status.className = kind;
  status.textContent = text;
  if (detail) {
    const d = document.createElement("span");
    d.className = "detail";
    d.textContent = detail;
    status.append(d);
  }
}

/** What to tell the user for each of deeplock's errors (`e.code`), and what to do. */
function explain(e) {
  switch (e.code) {
    case "wrong-key":
      return "Wrong key: this model was locked with a different key. Check the key you typed, or that the licence endpoint is the one for this model.";
    case "tampered":
      return "The model was tampered with: a file changed after it was locked, so it was not loaded. Get the model again from where it came from.";
    case "missing-file":
      return "A file of the model could not be fetched. Check the model URL and that every weight file is served next to model.json.";
    case "not-locked":
      return "This model is not locked with deeplock: load it with TF.js directly.";
    case "bad-key":
      return "That is not a deeplock key: a key is 32 hexadecimal characters (the content of the key file).";
    case "bad-file":
      return "This is not a locked TF.js model, or its lock record is damaged.";
    default:
      return "The model could not be loaded.";
  }
}

/** The key: from the licence endpoint if one is given, else the typed one; a non-extractable CryptoKey. */
async function getKey() {
  const licence = $("licence").value.trim();
  let text = $("key").value;
  if (licence !== "") {
    const res = await fetch(new URL(licence, location.href), { credentials: "include", cache: "no-store" });
    if (!res.ok) throw Object.assign(new Error(`the licence endpoint answered HTTP ${res.status}`), { code: "licence" });
    text = await res.text();
  }
  return importKey(keyFromHex(text));
}

/** One example of the model's input: the numbers typed, or a fixed sequence. */
function inputFor(model) {
  const shape = model.inputs[0].shape.map((d) => (d === null || d < 0 ? 1 : d));
  const size = shape.reduce((a, b) => a * b, 1);
  const typed = $("input").value.split(/[\s,]+/).filter((s) => s !== "").map(Number);
  if (typed.length === 0) return tf.tensor(Float32Array.from({ length: size }, (_, i) => Math.sin(i + 1)), shape);
  if (typed.length !== size || typed.some((x) => !Number.isFinite(x))) {
    throw Object.assign(new Error(`the model takes ${size} numbers (shape [${shape}]), ${typed.length} were given`), { code: "input" });
  }
  return tf.tensor(Float32Array.from(typed), shape);
}

async function run() {
  $("load").disabled = true;
  progress.value = 0;
  output.textContent = "(loading)";
  show("", "Loading…");
  try {
    const backend = $("backend").value;
    if (backend !== "") await tf.setBackend(backend);
    await tf.ready();
    const key = await getKey();
    const handler = tfjs.io($("model").value.trim(), key, { onProgress: (f) => (progress.value = f) });
    // One load of the files: the format they declare says which TF.js loader runs them.
    const artifacts = await handler.load();
    const memory = { load: async () => artifacts };
    const model = artifacts.format === "graph-model" ? await tf.loadGraphModel(memory) : await tf.loadLayersModel(memory);
    const x = inputFor(model);
    const y = model.predict(x);
    const values = Array.from(await (Array.isArray(y) ? y[0] : y).data());
    tf.dispose([x, y]);
    output.textContent = values.join(", ");
    output.dataset.values = JSON.stringify(values);
    let best = 0;
    values.forEach((v, i) => { if (v > values[best]) best = i; });
    show("ok", `Verified and unlocked (${tf.getBackend()} backend): ${values.length} outputs, the largest is #${best}.`);
  } catch (e) {
    output.textContent = "(none)";
    delete output.dataset.values;
    show("error", e.code === "licence" || e.code === "input" ? `Cannot run: ${e.message}.` : explain(e), e.message);
    console.error(e);
  } finally {
    $("load").disabled = false;
  }
}

$("form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  void run();
});
