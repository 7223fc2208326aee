"""``DIR/report.html``: the sweep's sections (``plots``) laid out as one page, and plotly's JavaScript beside it.

A long sweep is understood offline, often on a laptop without network and after the cluster is gone, so the
page needs nothing from the network: plotly's library is written once into the sweep folder next to the page
(``plotly-VERSION.min.js``, named by its version, so a page always finds the library it was drawn for), and the
page loads it by a relative path. The page itself holds the sweep's numbers only and stays small. Both files are
written atomically (``results.write_atomically``), the library first, so a reader never finds a page without it;
through the folder's file system, so a URI folder works as a local one does.
"""

from __future__ import annotations

import html
from typing import Any, Dict, Optional, Sequence

import plotly.io as pio
import pyarrow as pa
import pyarrow.fs as pafs
from omegaconf import OmegaConf
from plotly.offline import get_plotlyjs, get_plotlyjs_version

from . import leaderboard, report, results, selection
from .metrics import TEST
from .optuna_journal import opened_study
from .plots import Command, Section, build_sections, finished_rows, ordered_statuses, status_name
from .results import Stage, SweepFolder

PLOTLY_JS = f"plotly-{get_plotlyjs_version()}.min.js"  # beside report.html
STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}"
         "section{margin-top:2em}.caption{color:#555}.note{color:#a33;font-style:italic}"
         ".scroll{overflow-x:auto}table{border-collapse:collapse}"
         "td,th{padding:2px 8px;text-align:right;border-bottom:1px solid #ddd;white-space:nowrap}"
         "tr.command td{text-align:left;white-space:normal;color:#555;padding-bottom:6px}"
         "tr.command code{user-select:all;font-size:85%;word-break:break-all;color:#222}")


def status_counts(rows: Sequence[Dict[str, Any]]) -> str:
    """'12 trials: 7 TERMINATED (finished), 4 STOPPED (...)': ended statuses first, in a fixed order."""
    parts = [f"{sum(row['status'] == status for row in rows)} {status_name(status)}"
             for status in ordered_statuses(rows)]
    return f"{len(rows)} trials" + (": " + ", ".join(parts) if parts else "")


def render_html(table: pa.Table, sections: Sequence[Section]) -> str:
    """The page: a head saying what the sweep searched and chose, then each section's table, note and figure;
    the figures drawn by the plotly library beside the page."""
    meta = results.sweep_metadata(table)
    everything = table.to_pylist()
    rows = selection.stage_rows(everything, Stage.SEARCH)
    reruns = selection.stage_rows(everything, Stage.CONFIRM)
    objectives = ", ".join(f"{m} ({mode})" for m, mode in zip(meta["metrics"], meta["modes"]))
    on_test = meta.get("selected_on") == TEST
    head = [f"<h1>Sweep {html.escape(meta['sweep'])}</h1>",
            f"<p>Space {html.escape(str(meta.get('space')))}; objectives {html.escape(objectives)}"
            f"{' <b>(selected on test)</b>' if on_test else ' (on validation data)'}; searched: "
            f"{html.escape(', '.join(meta['searched']) or 'nothing')}.</p>",
            f"<p class='counts'>{html.escape(status_counts(rows))}"
            f"{'; ' + str(len(reruns)) + ' confirmation runs' if reruns else ''}.</p>"]
    if on_test:
        head.append("<p class='note'>Selected on test: the best of many noisy test numbers is optimistic.</p>")
    _, confirmed = leaderboard.chosen(table)
    if confirmed is not None:
        head.append("<p class='headline'><b>Headline</b>, confirmed on fresh seeds: "
                    f"{html.escape(leaderboard.headline(confirmed))}.</p>")
    elif finished_rows(rows):
        head.append("<p class='note'>Not confirmed on fresh seeds: the best row's numbers are the search's own, "
                    "the best of noisy draws.</p>")
    if not finished_rows(rows):
        head.append("<p class='note'>No trial has finished yet: plots of final metrics are empty.</p>")
    body = []
    for section in sections:
        parts = [f"<section id='{html.escape(section.name)}'><h2>{html.escape(section.title)}</h2>",
                 f"<p class='caption'>{html.escape(section.caption)}</p>"]
        if section.table is not None:
            parts.append(_html_table(*section.table))
        if section.note:
            parts.append(f"<p class='note'>{html.escape(section.note)}</p>")
        if section.figure is not None:
            height = section.figure.layout.height or 450
            parts.append(pio.to_html(section.figure, include_plotlyjs=False, full_html=False,
                                     default_height=f"{height}px", config={"displaylogo": False}))
        body.append("\n".join(parts) + "</section>")
    return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>ness_sweep report: {html.escape(meta['sweep'])}</title><style>{STYLE}</style>"
            f"<script charset='utf-8' src='{PLOTLY_JS}'></script></head>\n"
            "<body>\n" + "\n".join(head + body) + "\n</body></html>\n")


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of text cells; a column of commands (``plots.Command``) goes on a row of its own under each row,
    as wide as the table, so a long command neither widens the table nor is cut."""
    commands = [i for i, _ in enumerate(header) if any(isinstance(row[i], Command) for row in rows)]
    columns = [i for i, _ in enumerate(header) if i not in commands]
    lines = ["<tr>" + "".join(f"<th>{html.escape(header[i])}</th>" for i in columns) + "</tr>"]
    for row in rows:
        lines.append("<tr>" + "".join(f"<td>{html.escape(row[i])}</td>" for i in columns) + "</tr>")
        lines += [f"<tr class='command'><td colspan='{len(columns)}'>{html.escape(header[i])}: "
                  f"<code>{html.escape(row[i])}</code></td></tr>" for i in commands]
    return f"<div class='scroll'><table>{''.join(lines)}</table></div>"


def read_plan(fs: pafs.FileSystem, root: str) -> Optional[Dict[str, Any]]:
    """plan.yaml as a dict, or None when the sweep folder has none (axes then fall back to linear)."""
    path = f"{root}/{SweepFolder.PLAN}"
    if not results.exists(fs, path):
        return None
    with fs.open_input_stream(path) as stream:
        return OmegaConf.to_container(OmegaConf.create(stream.read().decode()))


def write_plotly_js(fs: pafs.FileSystem, root: str) -> None:
    """plotly's library beside the page, unless the folder holds it whole already (the same version's file of
    the same size: written atomically, it is never a torn one)."""
    path = f"{root}/{PLOTLY_JS}"
    library = get_plotlyjs().encode()
    if fs.get_file_info(path).size != len(library):
        results.write_atomically(fs, path, library)


def write_html(sweep_dir: str) -> str:
    """Write ``DIR/report.html`` (and plotly's library beside it) from the sweep folder (local path or URI);
    returns where the page went, as ``report.shown_file`` prints paths."""
    table = results.read_table(sweep_dir)
    fs, root = results.filesystem_and_path(sweep_dir)
    root = root.rstrip("/")
    with opened_study(fs, root, results.sweep_metadata(table)["sweep"]) as (study, why):
        page = render_html(table, build_sections(table, read_plan(fs, root), study, why))
    write_plotly_js(fs, root)
    results.write_atomically(fs, f"{root}/{SweepFolder.REPORT}", page.encode())
    return report.shown_file(sweep_dir, SweepFolder.REPORT)
