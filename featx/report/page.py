"""The report page: one self-contained HTML file showing the images behind every number.

No network, no CDN, no framework: inline CSS, a little plain JavaScript, inline SVG, and the
thumbnails as base64 JPEGs, so the file can be mailed or archived and still opens years later.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx.atomic import atomic_output
from featx.report.feature_map import MAX_POINTS, layout_2d
from featx.report.label_issues import LabelIssues, issue_rule
from featx.report.metrics import (
    confusion_matrix,
    leaderboard_cells,
    per_class_scores,
    quadratic_weighted_kappa,
)
from featx.report.page_style import CSS, ERROR_HOOK, SCRIPT
from featx.report.thumbnails import Thumbnail, make_thumbnails

__all__ = ["FeatureMap", "PageSection", "Predictions", "ReportData", "write_report_page"]

PER_CELL = 24  # thumbnails per confusion-matrix cell
GALLERY_BUDGET = 1200  # thumbnails in all the cells together (~3.5 KB each), mistakes first
ISSUES_SHOWN = 100  # label issues listed on the page (the CSV has them all)


@dataclass
class Predictions:
    """A head's predictions on labelled rows, with the images behind them."""

    y_true: np.ndarray  # class index
    y_pred: np.ndarray  # class index
    probabilities: np.ndarray | None  # (rows, classes), or None for a head without them
    paths: Sequence[str]  # relative to root
    root: str | None = None  # dataset root; None when paths are usable as they are
    source: str = ""  # what the rows are, in words ("153 rows of features/hy-val.h5")


@dataclass
class FeatureMap:
    """Rows to lay out in 2-D, coloured by label, mistakes marked."""

    features: np.ndarray  # (rows, D)
    labels: np.ndarray  # class index
    mistakes: np.ndarray  # bool: drawn as marked points
    paths: Sequence[str]  # relative to root
    root: str | Sequence[str | None] | None = None  # one dataset root, or one per row (rows of several files)
    notes: Sequence[str] | None = None  # one line per row shown on hover (e.g. "predicted bees")

    def full_path(self, row: int) -> str:
        root = self.root if self.root is None or isinstance(self.root, (str, os.PathLike)) else self.root[row]
        return _full_path(root, str(self.paths[row]))


@dataclass
class ReportData:
    """Everything the report page shows; the sections whose data is None are left out."""

    title: str
    class_names: list[str]
    graded: bool = False
    leaderboard: list[dict] = field(default_factory=list)  # the rows `leaderboard_table` takes
    best: str | None = None  # the best head's name (its row is highlighted; `test` is its predictions)
    metric: str = "accuracy"  # what chose the best head
    recipe: dict = field(default_factory=dict)  # how the features were made, flat
    test: Predictions | None = None
    label_issues: LabelIssues | None = None
    label_issues_csv: str | None = None  # where all label issues were written, to say so
    feature_map: FeatureMap | None = None
    notes: list[str] = field(default_factory=list)  # shown under the title
    sections: list[PageSection] = field(default_factory=list)  # more sections, after featx's own


@dataclass(frozen=True)
class PageSection:
    """One numbered section of the page. Another stage (e.g. an audit) adds its own through
    `ReportData.sections`; title and body are HTML, so escape what goes into them."""

    id: str  # the anchor: page.html#<id>
    title: str
    body: str

    def html(self, number: int) -> str:
        return f'<section id="{html.escape(self.id)}"><h2>{number}. {self.title}</h2>{self.body}</section>'


def _full_path(root, relative: str) -> str:
    return os.path.join(root, relative) if root else relative


class _Thumbs:
    """The page's thumbnails: each image decoded once, embedded once, referred to by key elsewhere."""

    def __init__(self, wanted: dict[str, None]):
        self._found = make_thumbnails(wanted)
        self._keys = {path: f"t{i}" for i, path in enumerate(self._found)}
        self._embedded: set[str] = set()

    def figure(self, path: str, lines: Sequence[str], hover: str, attributes: str = "") -> str:
        """The image at `path` with caption `lines` below it and `hover` (plus the lines) as its tooltip."""
        thumb = self._found.get(path) or Thumbnail(None, "not loaded")
        title = html.escape("\n".join([*lines, hover]).strip())
        caption = "<br>".join(html.escape(line) for line in lines)
        opening = f'<figure class="thumb" title="{title}"{attributes}>'
        if thumb.url is None:
            return (f'{opening}<div class="noimg">image not available:<br>{html.escape(thumb.missing or "")}</div>'
                    f"<figcaption>{caption}</figcaption></figure>")
        self._embedded.add(path)
        return (f'{opening}<img data-key="{self._keys[path]}" src="{thumb.url}" alt="">'
                f"<figcaption>{caption}</figcaption></figure>")

    def key(self, path: str) -> str:
        """The key a map point uses to borrow this image's thumbnail ("" when there is none)."""
        thumb = self._found.get(path)
        return self._keys[path] if thumb is not None and thumb.url else ""

    def store(self, paths) -> str:
        """Hidden copies of the thumbnails `paths` need that no figure embedded already."""
        extra = [path for path in dict.fromkeys(paths) if self.key(path) and path not in self._embedded]
        self._embedded.update(extra)
        images = "".join(f'<img data-key="{self._keys[p]}" src="{self._found[p].url}" alt="">' for p in extra)
        return f'<div id="thumbstore" hidden>{images}</div>'

    @property
    def count(self) -> int:
        return len(self._embedded)


def _probability_text(probabilities, names: Sequence[str], top: int | None = None) -> str:
    order = np.argsort(-probabilities, kind="stable")[:top]
    return "  ".join(f"{names[k]} {probabilities[k]:.2f}" for k in order)


# --------------------------------------------------------------------------- sections


def _section_leaderboard(data: ReportData) -> PageSection:
    parts = ['<div class="side"><div>']
    if data.leaderboard:
        cells = leaderboard_cells(data.leaderboard)
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in cells[0])
        body = []
        for row, line in zip(data.leaderboard, cells[1:]):
            # A comparison marks its best row itself: one head name recurs for every feature file.
            best = ' class="best"' if row.get("best", row.get("head") == data.best) else ""
            body.append(f"<tr{best}>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in line) + "</tr>")
        parts.append(f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')
        parts.append(f'<p class="note">Best head by {html.escape(data.metric)}: <b>{html.escape(str(data.best))}</b> '
                     "(highlighted). Intervals: 95% bootstrap over the test rows; cv score: the head's own "
                     "hyperparameter search on the training rows.</p>")
    parts.append("</div>")
    if data.recipe:
        rows = "".join(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(_recipe_value(value))}</td></tr>"
                       for key, value in data.recipe.items())
        parts.append(f'<div><h3>Recipe (how the features were made)</h3><table class="recipe">{rows}</table></div>')
    parts.append("</div>")
    return PageSection("leaderboard", "Leaderboard and recipe", "".join(parts))


def _recipe_value(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return str(value)


def _even_cap(counts: list[int], per_cell: int, budget: int) -> list[int]:
    """Images to show per cell: the same cap for all (at most per_cell) within budget, leftovers to the largest."""
    cap = next(c for c in range(per_cell, -1, -1) if sum(min(count, c) for count in counts) <= budget)
    shown = [min(count, cap) for count in counts]
    leftover = budget - sum(shown)
    for k in sorted(range(len(counts)), key=lambda k: -counts[k]):
        if leftover <= 0:
            break
        if counts[k] > shown[k] and shown[k] < per_cell:
            shown[k] += 1
            leftover -= 1
    return shown


def _gallery_rows(test: Predictions, n_classes: int, per_cell: int, budget: int) -> dict[tuple, tuple]:
    """(count, rows shown) of every non-empty confusion cell: least sure first, at most `per_cell` each and
    `budget` in all, the mistakes (off-diagonal cells) served before the hits."""
    members = {}
    for i in range(n_classes):
        for j in np.unique(test.y_pred[test.y_true == i]):
            rows = np.flatnonzero((test.y_true == i) & (test.y_pred == j))
            members[(i, int(j))] = _least_sure_first(rows, test, int(j))
    galleries, left = {}, budget
    for cells in ([c for c in members if c[0] != c[1]], [c for c in members if c[0] == c[1]]):
        shown = _even_cap([len(members[c]) for c in cells], per_cell, left)
        for cell, k in zip(cells, shown):
            galleries[cell] = (len(members[cell]), members[cell][:k])
        left -= sum(shown)
    return galleries


def _section_confusion(data: ReportData, thumbs: _Thumbs, cell_rows: dict, per_cell: int,
                       budget: int) -> PageSection:
    test, names = data.test, data.class_names
    n = len(names)
    cm = confusion_matrix(test.y_true, test.y_pred, n)
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    off_diagonal = np.where(np.eye(n, dtype=bool), -1, cm)
    opened = np.unravel_index(np.argmax(off_diagonal), cm.shape) if off_diagonal.max() > 0 else (0, 0)
    header = "".join(f"<th>{html.escape(name)}</th>" for name in names)
    rows, galleries, capped = [], [], 0
    for i in range(n):
        cells = []
        for j in range(n):
            count = int(cm[i, j])
            style = f"background:rgba({'31,119,180' if i == j else '214,39,40'},{0.08 + 0.8 * shares[i, j]:.2f})"
            if count == 0:
                cells.append(f'<td class="cell empty" style="{style}">0</td>')
                continue
            selected = " open" if (i, j) == tuple(opened) else ""
            cells.append(f'<td class="cell{selected}" data-cell="{i}-{j}" style="{style}" '
                         f'title="true {html.escape(names[i])}, predicted {html.escape(names[j])}: {count}">'
                         f"{count}</td>")
            shown = cell_rows[(i, j)][1]
            capped += count > len(shown)
            figures = "".join(_prediction_figure(row, test, names, thumbs) for row in shown)
            more = (f'<p class="note">showing {len(shown)} of {count} (least confident first)</p>'
                    if count > len(shown) else "")
            hidden = "" if selected else " hidden"
            galleries.append(
                f'<div class="gallery" id="cell-{i}-{j}"{hidden}><h3>true <b>{html.escape(names[i])}</b>, '
                f"predicted <b>{html.escape(names[j])}</b>: {count} image(s)</h3>{more}"
                f'<div class="thumbs">{figures}</div></div>'
            )
        rows.append(f'<tr><th>{html.escape(names[i])}</th>{"".join(cells)}</tr>')
    source = f" on {html.escape(test.source)}" if test.source else ""
    return PageSection("confusion", f'Confusion matrix of {html.escape(str(data.best or "the head"))}{source}', (
        f'<p class="note">Rows: true class; columns: predicted. Click a cell to see its images (up to '
        f"{per_cell} per cell and {budget:,} in all, mistakes first{f'; {capped} cell(s) have more' if capped else ''}"
        "); hover an image for its path and probabilities.</p>"
        f'<table class="confusion"><thead><tr><th class="corner">true \\ predicted</th>{header}</tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table>{"".join(galleries)}'
    ))


def _least_sure_first(rows: np.ndarray, test: Predictions, predicted: int) -> np.ndarray:
    """The cell's rows, the ones the head was least sure of first: those are the ones worth a look."""
    if test.probabilities is None or len(rows) == 0:
        return rows
    return rows[np.argsort(test.probabilities[rows, predicted], kind="stable")]


def _prediction_figure(row: int, test: Predictions, names, thumbs: _Thumbs) -> str:
    path = str(test.paths[row])
    if test.probabilities is None:
        caption, hover = f"predicted {names[test.y_pred[row]]}", ""
    else:
        caption = _probability_text(test.probabilities[row], names, top=2)
        hover = _probability_text(test.probabilities[row], names)
    return thumbs.figure(_full_path(test.root, path), [path, caption], hover)


def _section_per_class(data: ReportData) -> PageSection:
    test, names = data.test, data.class_names
    cm = confusion_matrix(test.y_true, test.y_pred, len(names))
    scores = per_class_scores(cm)
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{scores['precision'][k]:.3f}</td><td>{scores['recall'][k]:.3f}</td>"
        f"<td>{scores['f1'][k]:.3f}</td><td>{scores['support'][k]}</td></tr>"
        for k, name in enumerate(names)
    )
    present = scores["support"] > 0
    macro = (f"<tr class=\"total\"><th>macro average</th><td>{scores['precision'][present].mean():.3f}</td>"
             f"<td>{scores['recall'][present].mean():.3f}</td><td>{scores['f1'][present].mean():.3f}</td>"
             f"<td>{int(scores['support'].sum())}</td></tr>") if present.any() else ""
    parts = [(
        '<table class="grid"><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>'
        f"<th>support</th></tr></thead><tbody>{rows}{macro}</tbody></table>"
    )]
    if data.graded:
        parts.append(_grade_errors(test, names))
    return PageSection("per-class", "Per-class precision, recall, F1", "".join(parts))


def _grade_errors(test: Predictions, names) -> str:
    """QWK and the histogram of (predicted - true) grade steps: how far off the misses are."""
    n = len(names)
    kappa = quadratic_weighted_kappa(test.y_true, test.y_pred, labels=list(range(n)))
    errors = np.asarray(test.y_pred, dtype=np.int64) - np.asarray(test.y_true, dtype=np.int64)
    steps = np.arange(-(n - 1), n)
    counts = np.array([int(np.sum(errors == step)) for step in steps])
    width, height, bar = 36 * len(steps), 160, 36
    top = max(1, counts.max())
    bars = []
    for index, (step, count) in enumerate(zip(steps, counts)):
        h = 120 * count / top
        x = index * bar
        colour = "#1f77b4" if step == 0 else "#d62728"
        bars.append(
            f'<rect x="{x + 4}" y="{130 - h:.1f}" width="{bar - 8}" height="{h:.1f}" fill="{colour}">'
            f"<title>{step:+d} grade(s): {count}</title></rect>"
            f'<text x="{x + bar / 2}" y="{126 - h:.1f}" text-anchor="middle" font-size="10">{count}</text>'
            f'<text x="{x + bar / 2}" y="146" text-anchor="middle" font-size="11">{step:+d}</text>'
        )
    return (
        f"<h3>Grades</h3><p>Quadratic weighted kappa: <b>{kappa:.3f}</b>. Grade error (predicted &minus; true) "
        f'of each test image:</p><svg class="hist" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="grade error histogram">{"".join(bars)}</svg>'
    )


def _section_issues(data: ReportData, thumbs: _Thumbs, issues_shown: int) -> PageSection:
    issues, names = data.label_issues, data.class_names
    share = len(issues) / max(issues.n_checked, 1)
    source = f" (out-of-fold probabilities from {html.escape(issues.source)})" if issues.source else ""
    rule = issue_rule(issues.graded, issues.neighbours, issues.neighbour_weight)
    head = (f'<p class="note">{len(issues)} of {issues.n_checked} labelled images ({share:.1%}) are listed: '
            f"{html.escape(rule)}{source}. Each image shows given &rarr; suggested "
            "label; label quality (0 to 1) is low where the given label is doubtful. ")
    if len(issues) == 0:
        return PageSection("label-issues", "Likely label errors", head + "None found.</p>")
    shown = min(len(issues), issues_shown)
    listed = f"Showing the top {shown}" if shown < len(issues) else "All are listed"
    csv_note = ""
    if data.label_issues_csv:
        csv_note = f"; the CSV <code>{html.escape(data.label_issues_csv)}</code> has them all"
    head += f"{listed}{csv_note}.</p>"
    figures = []
    for rank in range(shown):
        given, suggested = names[issues.given[rank]], names[issues.suggested[rank]]
        reason = issues.reasons[rank]
        lines = [f"#{rank + 1} {given} \u2192 {suggested}", f"quality {issues.quality[rank]:.2f} ({reason})",
                 issues.paths[rank]]
        figures.append(thumbs.figure(_full_path(issues.root, issues.paths[rank]), lines,
                                     _probability_text(issues.probabilities[rank], names),
                                     f' data-rule="{html.escape(reason)}"'))
    body = f'{head}<div class="thumbs issues">{"".join(figures)}</div>'
    return PageSection("label-issues", "Likely label errors", body)


def _palette(n: int) -> list[str]:
    # Tableau 10: distinct and colour-blind tolerable; beyond it, hues spread by the golden angle.
    base = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf"]
    return base[:n] + [f"hsl({(137.508 * k) % 360:.0f},65%,45%)" for k in range(max(0, n - len(base)))]


def _section_map(data: ReportData, layout, thumbs: _Thumbs) -> PageSection:
    fmap, names = data.feature_map, data.class_names
    colours = _palette(len(names))
    size, pad = 560, 12
    points, marked, store_paths = [], [], []
    for position, row in enumerate(layout.rows):
        x, y = pad + layout.xy[position] * (size - 2 * pad)
        label = int(fmap.labels[row])
        path = str(fmap.paths[row])
        full = fmap.full_path(row)
        store_paths.append(full)
        note = str(fmap.notes[row]) if fmap.notes is not None else ""
        attributes = (f'cx="{x:.1f}" cy="{y:.1f}" fill="{colours[label % len(colours)]}" '
                      f'data-t="{thumbs.key(full)}" data-p="{html.escape(path)}" '
                      f'data-l="{html.escape(names[label])}" data-n="{html.escape(note)}"')
        if fmap.mistakes[row]:
            marked.append(f'<circle class="pt mistake" r="5" {attributes}/>')
        else:
            points.append(f'<circle class="pt" r="3" {attributes}/>')
    counts = np.bincount(np.asarray(fmap.labels)[layout.rows], minlength=len(names))
    legend = "".join(f'<li><span class="swatch" style="background:{colours[k % len(colours)]}"></span>'
                     f"{html.escape(name)} ({counts[k]})</li>" for k, name in enumerate(names))
    legend += (f'<li><span class="swatch ring"></span>marked: a mistake ({int(np.sum(fmap.mistakes[layout.rows]))})'
               "</li>")
    return PageSection("map", "Map of the feature space", (
        f'<p class="note">{html.escape(layout.method)}, laid out in {layout.seconds:.2f} s. Colour: class; ringed: '
        "mistakes (misclassified test images, likely label errors). Hover a point to see its image. Nearby points "
        "are images the backbone finds alike along the two directions in which the features vary most.</p>"
        f'<div class="mapbox"><svg id="fmap" width="{size}" height="{size}" viewBox="0 0 {size} {size}" '
        f'role="img" aria-label="feature map">'
        f'<rect width="{size}" height="{size}" fill="#fafafa" stroke="#ddd"/>{"".join(points)}{"".join(marked)}'
        f'</svg><ul class="legend">{legend}</ul></div>{thumbs.store(store_paths)}'
        '<div id="tip" hidden></div>'
    ))


# --------------------------------------------------------------------------- the page

def _wanted_thumbnails(data: ReportData, galleries: dict, layout, issues_shown: int) -> dict[str, None]:
    """Every image the page will show, so they can all be decoded at once, in parallel."""
    wanted: dict[str, None] = {}
    for _, rows in galleries.values():
        for row in rows:
            wanted[_full_path(data.test.root, str(data.test.paths[row]))] = None
    if data.label_issues is not None:
        for path in data.label_issues.paths[:issues_shown]:
            wanted[_full_path(data.label_issues.root, path)] = None
    if layout is not None:
        for row in layout.rows:
            wanted[data.feature_map.full_path(row)] = None
    return wanted


def write_report_page(path, data: ReportData, *, per_cell: int = PER_CELL, gallery_budget: int = GALLERY_BUDGET,
                      issues_shown: int = ISSUES_SHOWN, map_points: int = MAX_POINTS, seed: int = 0,
                      timings: dict[str, float] | None = None) -> Path:
    """Write the self-contained report page for `data` to `path` (an .html file) and return the path.

    per_cell, gallery_budget, issues_shown, map_points: the caps that keep a page of many rows small.
    timings: seconds by part so far (e.g. out-of-fold probabilities), shown on the page; the map, thumbnails
    and HTML parts are added to it.
    """
    timings = {} if timings is None else timings
    clock = time.perf_counter()
    layout = None
    if data.feature_map is not None and len(data.feature_map.labels) > 0:
        layout = layout_2d(data.feature_map.features, flagged=data.feature_map.mistakes, max_points=map_points,
                           seed=seed)
        timings["map"], clock = time.perf_counter() - clock, time.perf_counter()
    with_test = data.test is not None and len(data.test.y_true) > 0
    galleries = _gallery_rows(data.test, len(data.class_names), per_cell, gallery_budget) if with_test else {}
    thumbs = _Thumbs(_wanted_thumbnails(data, galleries, layout, issues_shown))
    timings["thumbnails"], clock = time.perf_counter() - clock, time.perf_counter()
    sections = [_section_leaderboard(data)] if data.leaderboard or data.recipe else []
    if with_test:
        sections += [_section_confusion(data, thumbs, galleries, per_cell, gallery_budget), _section_per_class(data)]
    if data.label_issues is not None:
        sections.append(_section_issues(data, thumbs, issues_shown))
    if layout is not None:
        sections.append(_section_map(data, layout, thumbs))
    sections += data.sections
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in data.notes)
    parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items())
    built = (f"Page written by featx ({parts}), with {thumbs.count} embedded thumbnails; the file is "
             "self-contained (no network needed).")
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(data.title)}</title>{ERROR_HOOK}<style>{CSS}</style></head><body><main>"
        f'<h1>{html.escape(data.title)}</h1><p class="note">{", ".join(html.escape(n) for n in data.class_names)}'
        f"{' (graded)' if data.graded else ''}</p>{notes}"
        f'{"".join(section.html(number) for number, section in enumerate(sections, 1))}'
        f'<p class="note">{html.escape(built)}</p></main>{SCRIPT}</body></html>'
    )
    path = Path(path)
    # Written whole to a temporary name, then renamed: a reader never sees half a page.
    with atomic_output(path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    timings["HTML"] = time.perf_counter() - clock
    return path
