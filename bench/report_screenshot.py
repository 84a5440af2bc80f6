"""Look at a report as a person would: headless Chromium at a laptop-sized window.

    python -m bench.report_screenshot REPORT_DIR/report.html [--out shot.png] [--width 1400]

Writes a PNG of the first screen (what is visible without scrolling) and prints the page's
layout as Chromium computes it: the page width against the window (horizontal scrolling),
which tables are wider than the page, and where the headline table ends. Needs `chromium`
(Debian: `apt-get install chromium`); nothing else of the project.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

WIDTH, HEIGHT = 1400, 1000  # px: a laptop browser window
TIMEOUT = 120  # seconds per Chromium call (a cold start on a busy 2-core machine takes ~10 s)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")

# Run after load: the layout facts a reader would notice, stored on <body> for --dump-dom.
_PROBE = """<script>
(() => {
  const doc = document.documentElement;
  const head = document.querySelector("table.headline");
  // A table wider than its box scrolls sideways inside it (figure { overflow-x: auto }).
  const wide = [...document.querySelectorAll("table")]
    .filter(t => t.getBoundingClientRect().width >
                 (t.closest("figure") || document.body).clientWidth + 1)
    .map(t => t.closest("figure")?.querySelector("figcaption")?.textContent.slice(0, 60));
  const layout = {
    scroll_width: doc.scrollWidth, client_width: doc.clientWidth, window_height: innerHeight,
    headline_bottom: head ? head.getBoundingClientRect().bottom : null,
    headline_columns: head ? [...head.querySelectorAll("th")].map(th => th.textContent) : [],
    wide_tables: wide,
    overflowing_cells: [...document.querySelectorAll("td, th")]
      .filter(c => c.scrollWidth > c.clientWidth + 1).length,
  };
  document.body.setAttribute("data-layout", JSON.stringify(layout));
})();
</script>"""


_CSP_META = re.compile(r'<meta http-equiv="Content-Security-Policy"[^>]*>\n?')


def browser() -> str | None:
    """The Chromium executable on PATH, or None."""
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def _chromium(args: list[str], width: int, height: int) -> subprocess.CompletedProcess:
    exe = browser()
    if exe is None:
        raise RuntimeError(f"no Chromium on PATH (looked for {', '.join(BROWSERS)})")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={width},{height}", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=True)


def screenshot(page: Path, out: Path, width: int = WIDTH, height: int = HEIGHT) -> Path:
    """A PNG of the first `width` x `height` pixels of `page` as Chromium renders it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _chromium([f"--screenshot={out.resolve()}", page.resolve().as_uri()], width, height)
    if not out.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot to {out}")
    return out


def layout(page: Path, width: int = WIDTH, height: int = HEIGHT) -> dict:
    """The page's layout at that window size (see `_PROBE`), from a probed copy of `page`. The
    copy leaves out the page's Content-Security-Policy, which (rightly) forbids the probe's
    script; the stylesheet, and so the layout, is the page's own."""
    text = _CSP_META.sub("", page.read_text(), count=1)
    with tempfile.TemporaryDirectory() as tmp:
        probed = Path(tmp) / page.name
        probed.write_text(text.replace("</body>", _PROBE + "\n</body>", 1))
        dom = _chromium(["--dump-dom", probed.as_uri()], width, height).stdout
    start = dom.find('data-layout="')
    if start < 0:
        raise RuntimeError("the layout probe did not run (no data-layout on <body>)")
    value = dom[start + len('data-layout="') : dom.index('"', start + len('data-layout="'))]
    return json.loads(html.unescape(value))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report_screenshot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("page", type=Path, help="report.html")
    parser.add_argument("--out", type=Path, help="PNG to write (default: next to the page)")
    parser.add_argument("--width", type=int, default=WIDTH, help="window width, px")
    parser.add_argument("--height", type=int, default=HEIGHT, help="window height, px")
    args = parser.parse_args(argv)
    if not args.page.is_file():
        parser.exit(2, f"error: {args.page} is not a file\n")
    if browser() is None:
        parser.exit(2, f"error: no Chromium on PATH (looked for {', '.join(BROWSERS)})\n")
    out = args.out or args.page.with_name(f"screenshot-{args.width}px.png")
    screenshot(args.page, out, args.width, args.height)
    facts = layout(args.page, args.width, args.height)
    print(f"wrote {out}")
    print(json.dumps(facts, indent=2))
    scrolls = facts["scroll_width"] > facts["client_width"] or bool(facts["wide_tables"])
    print(f"horizontal scrolling at {args.width} px: {'YES' if scrolls else 'no'}")
    bottom = facts["headline_bottom"]
    seen = bottom is not None and bottom <= facts["window_height"]
    print(f"headline results visible without scrolling: {'yes' if seen else 'NO'}")
    return 0 if seen and not scrolls else 1


if __name__ == "__main__":
    sys.exit(main())
