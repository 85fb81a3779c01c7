// WebGPU entry points for the Node tests: the `webgpu` package (Dawn's dawn.node) on each
// backend this machine may have: OpenGL ES through EGL without a display (Mesa's
// llvmpipe here), Vulkan as the loader finds it (a real GPU), and Vulkan on SwiftShader
// (the ICD the Chromium package ships). Dawn refuses Mesa 22's lavapipe ("Vulkan
// shaderUniform*ArrayDynamicIndexing required").
import { existsSync } from "node:fs";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const SWIFTSHADER = ["/usr/lib/chromium/vk_swiftshader_icd.json", "/usr/lib/chromium-browser/vk_swiftshader_icd.json"];

/**
 * The entry points that have an adapter: `[{ label, gpu, adapter }]`; each one tried is
 * reported through `t.diagnostic`. `DEEPLOCK_WEBGPU` (`gles`, `vulkan`, `swiftshader`,
 * comma-separated) limits which are tried.
 */
export async function gpus(t) {
  let create;
  try {
    ({ create } = await import("webgpu"));
  } catch (e) {
    t.diagnostic(`no WebGPU binding for Node (npm package webgpu): ${e.message}`);
    return [];
  }
  process.env.XDG_RUNTIME_DIR ??= mkdtempSync(join(tmpdir(), "deeplock-xdg-"));
  const want = (process.env.DEEPLOCK_WEBGPU ?? "gles,vulkan,swiftshader").split(",");
  const found = [];
  const tries = [
    ["gles", () => {
      process.env.EGL_PLATFORM ??= "surfaceless";
      return create(["backend=opengles"]);
    }],
    ["vulkan", () => create(["backend=vulkan"])],
    ["swiftshader", () => {
      const icd = SWIFTSHADER.find(existsSync);
      if (icd === undefined) return undefined;
      process.env.VK_ICD_FILENAMES = icd;
      return create(["backend=vulkan"]);
    }],
  ];
  for (const [label, make] of tries) {
    if (!want.includes(label)) continue;
    const gpu = make();
    if (gpu === undefined) {
      t.diagnostic(`${label}: not on this machine`);
      continue;
    }
    let level = "core";
    let a = await gpu.requestAdapter();
    if (a === null) {
      level = "compatibility mode";
      a = await gpu.requestAdapter({ featureLevel: "compatibility" });
    }
    if (a === null) {
      t.diagnostic(`${label}: no adapter`);
      continue;
    }
    // One SwiftShader adapter is enough: skip Vulkan's if it is SwiftShader too.
    if (found.some((f) => f.adapter === a.info.description)) continue;
    t.diagnostic(`${label}: ${a.info.vendor} ${a.info.architecture} ${a.info.device} ${a.info.description} (${level})`);
    found.push({ label, gpu, adapter: a.info.description });
  }
  return found;
}

/** Whether a missing adapter must fail the test (DEEPLOCK_REQUIRE_GPU=1) rather than skip it. */
export const requireGpu = process.env.DEEPLOCK_REQUIRE_GPU === "1";
