"""Render the HTML page of `dvc plots show` offline in headless Chromium; report what it drew.

    python -m tools.plots_page docs/images/plots_page.png

runs `dvc plots show` in the current repository, opens the page with the CDN scripts replaced by
the npm copies under tests/browser/node_modules (`npm ci` there first), and saves a screenshot of
the page's Vega charts. tests/test_plots_page.py uses the same functions on its test repository.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROWSER_DIR = ROOT / "tests" / "browser"
NODE_MODULES = BROWSER_DIR / "node_modules"
CHROMIUM = Path("/usr/bin/chromium")
# <script src="https://cdn.jsdelivr.net/npm/vega-lite@5.2.0">: the package and its version.
CDN_SCRIPT = re.compile(r'src="https://cdn\.jsdelivr\.net/npm/(vega|vega-lite|vega-embed)@([\w.\-]+)"')


def missing_tools() -> list[str]:
    """What the browser check needs and this machine lacks (empty when it can run)."""
    needs = {"chromium (apt-get install chromium)": CHROMIUM.exists(),
             "node (apt-get install nodejs)": shutil.which("node") is not None,
             f"{NODE_MODULES} (npm ci in {BROWSER_DIR})": (NODE_MODULES / "playwright-core").is_dir()}
    return [name for name, present in needs.items() if not present]


def local_script(package: str, version: str) -> Path:
    """The npm copy of a script that DVC's page loads from the CDN; an error if its version differs."""
    installed = json.loads((NODE_MODULES / package / "package.json").read_text())["version"]
    if installed != version:
        raise RuntimeError(f"DVC's page loads {package}@{version} but {BROWSER_DIR}/package.json pins "
                           f"{installed}: pin {version} there and run `npm install`")
    return NODE_MODULES / package / "build" / f"{package}.min.js"


def offline_page(page: Path) -> Path:
    """Rewrite the page's CDN script links to the local npm copies, in place; the page. The CDN serves the
    scripts as UTF-8; a file has no such header, so the tag says it (else Vega's "−" in tick labels garbles)."""
    html, count = CDN_SCRIPT.subn(lambda m: f'charset="utf-8" src="{local_script(*m.groups()).as_uri()}"',
                                  page.read_text())
    if count != 3:  # vega, vega-lite, vega-embed: DVC's page changed if not
        raise RuntimeError(f"expected 3 CDN script links in {page}, found {count}")
    page.write_text(html)
    return page


def render(page: Path, out: Path) -> dict:
    """Open `page` (offline) in headless Chromium; the report of tests/browser/render.mjs."""
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["node", str(BROWSER_DIR / "render.mjs"), str(page), str(out)],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"render.mjs failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout)


def show_page(repo: Path, out: Path, env: dict | None = None) -> Path:
    """`dvc plots show` of `repo` written to `out`, made offline; the HTML file."""
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "plots", "show", "-o", str(out)],
                   cwd=repo, env=env, check=True, capture_output=True, text=True)
    return offline_page(out / "index.html")


def charts_only(page: Path) -> Path:
    """The page cut before its PNG figures (the README shows those already), in place; the page."""
    html = page.read_text()
    # DVC puts the image plots last, each in a div with this border.
    first_image = html.find('style="border:1px solid black;')
    if first_image != -1:
        page.write_text(html[: html.rfind("<div", 0, first_image)] + "</body>\n</html>\n")
    return page


def trim(png: Path, target: Path, margin: int = 12) -> None:
    """Save `png` at `target` cut to its non-white content plus `margin` pixels (the page is wider)."""
    from PIL import Image, ImageChops

    image = Image.open(png).convert("RGB")
    left, top, right, bottom = ImageChops.difference(image, Image.new("RGB", image.size, "white")).getbbox()
    box = (max(0, left - margin), max(0, top - margin), min(image.width, right + margin),
           min(image.height, bottom + margin))
    image.crop(box).save(target, optimize=True)


def main(target: str) -> None:
    """Screenshot of this repository's plots page (its Vega charts) at `target`."""
    if missing := missing_tools():
        sys.exit(f"missing: {', '.join(missing)}")
    with tempfile.TemporaryDirectory() as tmp:
        page = charts_only(show_page(ROOT, Path(tmp) / "html"))
        report = render(page, Path(tmp) / "shots")
        problems = report["console_errors"] + report["page_errors"] + report["blocked_requests"]
        if problems or not all(c["ok"] for c in report["charts"]):
            sys.exit(f"the page did not render cleanly: {json.dumps(report, indent=1)}")
        trim(Path(tmp) / "shots" / "page.png", Path(target))
    print(f"wrote {target} ({len(report['charts'])} charts)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "docs" / "images" / "plots_page.png"))
