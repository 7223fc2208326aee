"""Does report.html open and draw in a real browser, offline? Headless Chromium, network off, screenshots.

    python perf/report_check.py [DIR] [screenshots=FOLDER]

DIR is a sweep folder (its report.html is rewritten first, as ``python -m ness_sweep.report DIR`` does); without
one, a small sweep runs first (``space=smoke``, 4 trials, the best one confirmed on 2 fresh seeds, W&B off) under
``ness_sweep_results/``. Chromium (``/usr/bin/chromium``, Debian's ``apt-get install chromium``; or
``$CHROMIUM``) then loads the page from disk three times, with every network request sent to a dead proxy and
every host name unresolvable: once to dump the DOM the page's scripts built, logging the console, and twice
for screenshots (the top of the page, and the whole of it) saved under ``screenshots=`` (default
``ness_sweep_results/report_check/``). It fails (exit 1) when the console printed anything (a script error, a
missing library), when fewer plots were drawn than the page holds, or when the page loads anything but a file
beside it. Exit 2, with one line, when Chromium is absent or an argument is bad.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

from ness_sweep.config import UserError
from ness_sweep.results import SweepFolder

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
OFFLINE = ["--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"]  # port 9: discard; no DNS
SETTLE_MS = 15_000  # virtual time the page's scripts get before the DOM is dumped or the screenshot taken
WIDTH, TOP_HEIGHT = 1280, 900
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]? ?(.*)")  # Chromium's log line of a console message or an uncaught error


def chromium(page: Path, *mode: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """One headless Chromium run on the page file, offline, logging the console to stderr."""
    with tempfile.TemporaryDirectory(prefix="report_check_profile_") as profile:
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                               "--enable-logging=stderr", "--v=0", f"--virtual-time-budget={SETTLE_MS}", *OFFLINE,
                               *mode, page.as_uri()], capture_output=True, text=True, timeout=timeout)


def page_height(page_text: str) -> int:
    """A window tall enough for the whole page: every plot's height, and room for the text and tables."""
    plots = sum(int(h) for h in re.findall(r'"height":\s*(\d+)', page_text))  # each figure's layout height
    return plots + 250 * page_text.count("<section") + 40 * page_text.count("<tr") + 400


def check(page: Path, screenshots: Path) -> Tuple[List[str], List[str]]:
    """(what it found, what is wrong) for one page."""
    found, wrong = [], []
    text = page.read_text()
    figures = text.count("Plotly.newPlot(")
    found.append(f"page {page}: {len(text.encode()) / 1024:.0f} KiB, {figures} figures, "
                 f"{text.count('<section')} sections")
    for resource in re.findall(r"<(?:script|link|img|iframe)[^>]*\b(?:src|href)\s*=\s*['\"]([^'\"]+)", text, re.I):
        inside = page.parent / resource
        if "//" in resource or not inside.resolve().is_relative_to(page.parent.resolve()) or not inside.is_file():
            wrong.append(f"the page loads {resource}: not a file beside it")
        else:
            found.append(f"loads {resource}: {inside.stat().st_size / 1024:.0f} KiB beside the page")
    started = time.perf_counter()
    dumped = chromium(page, "--dump-dom")
    found.append(f"chromium --dump-dom: exit {dumped.returncode}, {time.perf_counter() - started:.1f} s")
    console = [m.group(1) for line in dumped.stderr.splitlines() if (m := CONSOLE.search(line))]
    drawn = len(re.findall(r'class="[^"]*\bjs-plotly-plot\b', dumped.stdout))
    found.append(f"plots drawn: {drawn} of {figures}; console messages: {len(console)}")
    if dumped.returncode != 0:
        wrong.append(f"chromium exited {dumped.returncode}: {dumped.stderr.strip().splitlines()[-1:]}")
    wrong += [f"console: {message}" for message in console]
    if drawn != figures:
        wrong.append(f"{drawn} plots drawn, the page holds {figures}")
    screenshots.mkdir(parents=True, exist_ok=True)
    for name, height in (("top", TOP_HEIGHT), ("full", page_height(text))):
        shot = screenshots / f"report_{name}.png"
        taken = chromium(page, f"--screenshot={shot}", f"--window-size={WIDTH},{height}", "--hide-scrollbars")
        if taken.returncode != 0 or not shot.exists():
            wrong.append(f"screenshot {shot} not taken (exit {taken.returncode})")
        else:
            found.append(f"screenshot {shot} ({WIDTH}x{height}, {shot.stat().st_size / 1024:.0f} KiB)")
    return found, wrong


def small_sweep() -> str:
    """A smoke sweep's folder, its best configuration confirmed: a page with every kind of section."""
    import ness_sweep

    name = f"report_check-{time.strftime('%Y%m%d-%H%M%S')}"
    result = ness_sweep.sweep("space=smoke", f"sweep.name={name}", "wandb.mode=disabled", "sweep.confirm_top=1",
                              "sweep.confirm_seeds=2", out=lambda line: None)
    return result.folder.location


def parse(argv: List[str]) -> Tuple[Optional[str], Path]:
    folder, screenshots = None, Path("ness_sweep_results/report_check")
    for arg in argv:
        key, equals, value = arg.partition("=")
        if equals and key == "screenshots":
            screenshots = Path(value)
        elif equals or arg.startswith("-") or folder is not None:
            raise UserError(f"argument {arg}: unknown; usage: python perf/report_check.py [DIR] [screenshots=FOLDER]")
        else:
            folder = arg
    return folder, screenshots


def main(argv: List[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        folder, screenshots = parse(argv)
        if shutil.which(CHROMIUM) is None:
            raise UserError(f"no Chromium at {CHROMIUM}: apt-get install -y chromium, or set CHROMIUM to its path")
        if folder is not None and not (Path(folder) / SweepFolder.TABLE).is_file():
            raise UserError(f"{folder}: no {SweepFolder.TABLE} there (give a local sweep folder)")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from ness_sweep.report_page import write_html

    page = Path(write_html(folder or small_sweep()))
    found, wrong = check(page, screenshots)
    print("\n".join(found))
    print(json.dumps({"ok": not wrong, "problems": wrong}))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
