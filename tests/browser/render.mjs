// Open a `dvc plots show` page in headless Chromium, offline, and report what it rendered.
//
//   node render.mjs PAGE.html OUT_DIR
//
// Writes OUT_DIR/page.png (the whole page) and OUT_DIR/chart-<n>.png (each Vega chart), and prints
// a JSON report: console errors, uncaught exceptions, requests that tried to leave the machine, and
// for each chart its title, whether vegaEmbed succeeded, its x and colour scales, and what it drew:
// the stroke colours of its lines, the fills of its rectangles, its text marks, its legend labels.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

import { chromium } from "playwright-core";

const [page_path, out_dir] = process.argv.slice(2);
if (!page_path || !out_dir) {
  console.error("usage: node render.mjs PAGE.html OUT_DIR");
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run"];

// Runs in the page before its scripts: every vegaEmbed call is recorded, with its outcome, so that
// the report can wait for all charts and read their views. The page's own calls are unchanged.
function recordEmbeds() {
  window.__embeds = [];
  let wrapped;
  Object.defineProperty(window, "vegaEmbed", {
    configurable: true,
    get: () => wrapped,
    set: (embed) => {
      wrapped = (el, spec, opts) => {
        const result = embed(el, spec, opts);
        const title = typeof spec.title === "object" ? spec.title.text : spec.title;
        window.__embeds.push({ el, title, result });
        return result;
      };
      Object.assign(wrapped, embed);
    },
  });
}

// Runs in the page after loading: what each chart drew.
async function describeCharts() {
  const charts = [];
  for (const { el, title, result } of window.__embeds) {
    const chart = { title, selector: `#${el.replace(/^#/, "")}` };
    try {
      const { view } = await result;
      const svg = new DOMParser().parseFromString(await view.toSVG(), "image/svg+xml");
      const strokes = [...svg.querySelectorAll("g.mark-line.role-mark path")].map((p) => p.getAttribute("stroke"));
      chart.line_strokes = [...new Set(strokes.filter(Boolean))];
      chart.line_count = strokes.length;
      chart.rect_fills = [...svg.querySelectorAll("g.mark-rect.role-mark path")].map((p) => p.getAttribute("fill"));
      chart.mark_texts = [...svg.querySelectorAll("g.mark-text.role-mark text")].map((t) => t.textContent);
      chart.legend_labels = [...svg.querySelectorAll("g.role-legend-label text")].map((t) => t.textContent);
      try {
        chart.x_domain = view.scale("x").domain();
      } catch {
        chart.x_domain = null; // concatenated views name their x scales apart
      }
      try {
        const color = view.scale("color");
        chart.color_domain = color.domain();
        chart.color_range = color.domain().map((d) => color(d));
      } catch {
        chart.color_domain = null; // a chart without a colour scale
      }
      chart.ok = true;
    } catch (e) {
      chart.ok = false;
      chart.error = String(e);
    }
    charts.push(chart);
  }
  return charts;
}

const profile = mkdtempSync(join(tmpdir(), "plots-page-chromium-"));
const report = { console_errors: [], page_errors: [], blocked_requests: [], charts: [] };
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, args: ARGS, headless: true, viewport: { width: 1200, height: 900 },
  });
  const page = context.pages()[0] || (await context.newPage());
  // Offline: anything but the page's own files is refused, and reported.
  await page.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith("file:") || url.startsWith("data:")) return route.continue();
    report.blocked_requests.push(url);
    return route.abort();
  });
  page.on("console", (msg) => {
    if (msg.type() === "error") report.console_errors.push(msg.text());
  });
  page.on("pageerror", (err) => report.page_errors.push(String(err)));
  await page.addInitScript(recordEmbeds);
  await page.goto(pathToFileURL(resolve(page_path)).href, { waitUntil: "load" });
  report.charts = await page.evaluate(describeCharts);
  await page.waitForTimeout(200); // let the last canvases paint before the screenshots
  await page.screenshot({ path: join(out_dir, "page.png"), fullPage: true });
  for (const [n, chart] of report.charts.entries()) {
    chart.screenshot = join(out_dir, `chart-${n}.png`);
    await page.locator(chart.selector).screenshot({ path: chart.screenshot });
  }
} finally {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(report, null, 1));
