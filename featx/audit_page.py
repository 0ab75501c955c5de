"""The audit's page: near-duplicate pairs side by side, then outliers, as embedded thumbnails."""

from __future__ import annotations

import html
import os
from pathlib import Path

from featx.atomic import atomic_output
from featx.report.thumbnails import make_thumbnails

SHOWN = 60  # pairs and outliers shown each; the CSVs hold all of them

_STYLE = ("body{font-family:sans-serif;margin:1.5em}figure{display:inline-block;margin:4px;text-align:center;"
          "font-size:11px;max-width:120px;word-break:break-all}.pair{display:inline-flex;border:1px solid #ccc;"
          "margin:4px;padding:2px}.pair.across{border-color:#c00}img{max-width:110px;max-height:110px}"
          ".missing{width:96px;height:96px;background:#eee;display:flex;align-items:center;justify-content:center}")


def image_path(store, path: str) -> str:
    """Where image `path` of a feature file's row is on disk: under the file's recorded dataset root."""
    return os.path.join(store.dataset_root, path) if store.dataset_root else path


def audit_section(rows, pairs, outliers, shown: int = SHOWN) -> str:
    """An HTML section (thumbnails embedded) of the first `shown` near-duplicate pairs and outliers."""
    pairs, outliers = pairs[:shown], outliers[:shown]
    wanted = {i for i, j, _ in pairs} | {j for _, j, _ in pairs} | {found["row"] for found in outliers}
    where = {i: image_path(rows.stores[rows.file[i]], rows.paths[i]) for i in wanted if rows.paths[i]}
    thumbs = make_thumbnails(where.values())

    def figure(i, caption):
        thumb = thumbs.get(where.get(i, ""))
        picture = (f'<img src="{thumb.url}" alt="">' if thumb is not None and thumb.url
                   else f'<div class="missing">{html.escape(thumb.missing if thumb else "no path")}</div>')
        text = f"{rows.splits[rows.file[i]]}: {rows.paths[i] or f'row {rows.local[i]}'} {caption}"
        return f"<figure>{picture}<figcaption>{html.escape(text)}</figcaption></figure>"

    parts = [f"<section id=\"audit\"><h2>Near-duplicates ({len(pairs)} shown; red: across splits)</h2>"]
    for i, j, sim in pairs:
        across = " across" if rows.splits[rows.file[i]] != rows.splits[rows.file[j]] else ""
        parts.append(f'<div class="pair{across}">{figure(i, "")}{figure(j, f"cos {sim:.3f}")}</div>')
    parts.append(f"<h2>Outliers ({len(outliers)} shown)</h2>")
    for found in outliers:
        parts.append(figure(found["row"], f"{found['reason']} (nearest: {found['nearest_class']})"))
    parts.append("</section>")
    return "".join(parts)


def write_audit_page(path, rows, pairs, outliers) -> Path:
    """Write the self-contained audit page to `path`."""
    body = audit_section(rows, pairs, outliers)
    text = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>featx audit</title>"
            f"<style>{_STYLE}</style></head><body><h1>featx audit</h1>{body}</body></html>")
    with atomic_output(path) as temporary:
        Path(temporary).write_text(text, encoding="utf-8")
    return Path(path)
