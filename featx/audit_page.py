"""The audit on a page: near-duplicate pairs side by side, then outliers, as report-page sections.

`audit_sections` returns `featx.report.PageSection`s, so the audit's findings can join any report page
(`ReportData.sections`); `write_audit_page` writes them as a page of their own with the report's look.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from featx.report import PageSection, ReportData, write_report_page
from featx.report.thumbnails import make_thumbnails

SHOWN = 60  # pairs and outliers shown each; the CSVs hold all of them
_PAIR = 'style="display:inline-flex;gap:4px;padding:4px;margin:3px;border:2px solid {}"'


def image_path(store, path: str) -> str:
    """Where image `path` of a feature file's row is on disk: under the file's recorded dataset root."""
    return os.path.join(store.dataset_root, path) if store.dataset_root else path


def audit_sections(rows, pairs, outliers, shown: int = SHOWN) -> list[PageSection]:
    """Sections of the first `shown` near-duplicate pairs (red border: across splits) and outliers."""
    pairs, outliers = pairs[:shown], outliers[:shown]
    wanted = {i for i, j, _ in pairs} | {j for _, j, _ in pairs} | {found["row"] for found in outliers}
    where = {i: image_path(rows.stores[rows.file[i]], rows.paths[i]) for i in wanted if rows.paths[i]}
    thumbs = make_thumbnails(where.values())

    def figure(i, caption):
        thumb = thumbs.get(where.get(i, ""))
        lines = [f"{rows.splits[rows.file[i]]}: {rows.paths[i] or f'row {rows.local[i]}'}", caption]
        text = "<br>".join(html.escape(line) for line in lines if line)
        picture = (f'<img src="{thumb.url}" alt="">' if thumb is not None and thumb.url else
                   f'<div class="noimg">image not available:<br>{html.escape(thumb.missing if thumb else "no path")}'
                   "</div>")
        title = html.escape(" ".join(lines))
        return f'<figure class="thumb" title="{title}">{picture}<figcaption>{text}</figcaption></figure>'

    duplicates = []
    for i, j, sim in pairs:
        across = rows.splits[rows.file[i]] != rows.splits[rows.file[j]]
        duplicates.append(f'<div {_PAIR.format("#c00" if across else "#ccc")}>'
                          f'{figure(i, "")}{figure(j, f"cosine {sim:.3f}")}</div>')
    outlying = [figure(found["row"], f"{found['reason']} (nearest: {found['nearest_class']})") for found in outliers]
    note = "<p>All of them are in the CSVs beside this page.</p>"
    return [
        PageSection("near-duplicates", f"Near-duplicates ({len(pairs)} shown; red: across splits)",
                    note + ("".join(duplicates) or "<p>None found.</p>")),
        PageSection("outliers", f"Outliers ({len(outliers)} shown)",
                    note + (f'<div class="thumbs">{"".join(outlying)}</div>' if outlying else "<p>None found.</p>")),
    ]


def write_audit_page(path, rows, pairs, outliers, summary: str) -> Path:
    """Write the audit's sections as a self-contained page at `path`."""
    data = ReportData(title="featx audit", class_names=list(rows.label_names), notes=[summary],
                      sections=audit_sections(rows, pairs, outliers))
    return write_report_page(path, data)
