"""The MLflow UI as users browse it: headless Chromium against the team stack after a small pipeline run.

One `mlflow server` on PostgreSQL with artifacts in (moto's) S3 (tests/team_stack.py); the download,
tokenize, train, evaluate and register stages run against it with only ``MLFLOW_TRACKING_URI`` set. Then
Playwright drives Debian's ``chromium`` (``make test`` installs it; Playwright's own browser download is
never used) through the UI's hash routes: the experiments list, the run's params and its validation chart
(``val_bits_per_byte``, what the train stage logs), the evaluate stage's plots among the artifacts, and
the registered model with its ``champion`` alias and descriptions. Screenshots of each step are kept in
the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from seqlm_testing import QUICK_EVALUATE, TINY_TRAIN, Project, make_tokens
from team_stack import as_client, team_stack

from seqlm.registry import register as registration

pytestmark = [pytest.mark.slow, pytest.mark.services]  # PostgreSQL, S3 (moto) and Chromium

NAME = "seqlm"
PIPELINE = TINY_TRAIN | {"train.max_steps": 60, "train.val_every_steps": 30} | QUICK_EVALUATE
CHART = "val_bits_per_byte"  # the train stage's validation metric (training/callbacks.py), per val step
PLOTS = ("context_ablation.png", "gradient_flow.png")  # evaluate logs reports/eval/ under eval/
WAIT_MS = 60_000  # a React SPA on 2 shared cores: the first render can take a while


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail("chromium is not installed: run `make test` (it installs Debian's chromium package)")
    return path


@pytest.fixture(scope="module")
def pipeline_on_stack(tmp_path_factory):
    """The stack, and a tiny pipeline run registered through it as a user would (tracking URI only)."""
    from seqlm.stages.evaluate import run_evaluate
    from seqlm.stages.register import run_register
    from seqlm.stages.train import run_train

    with team_stack(tmp_path_factory.mktemp("ui-stack")) as stack:
        root = tmp_path_factory.mktemp("ui-project")
        with pytest.MonkeyPatch.context() as mp:
            as_client(mp, stack, root)
            project = Project(root)
            make_tokens(project, lines=1500)
            project.set(**PIPELINE)
            run_train(project.config(), project.paths())
            run_evaluate(project.config(), project.paths())
            report = run_register(project.config(), project.paths())
        yield stack, project, report


@pytest.fixture
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses to run as root
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=args)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            yield context.new_page()
        finally:
            browser.close()


def test_the_ui_shows_experiment_run_chart_plots_and_champion(pipeline_on_stack, page, tmp_path):
    from mlflow import MlflowClient
    from playwright.sync_api import expect

    stack, project, report = pipeline_on_stack
    assert report["version"] == 1 and report["decision"] == "promoted"
    url = stack.tracking_uri
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(NAME).experiment_id
    run_id = json.loads((project.root / "models" / "run.json").read_text())["run_id"]
    assert CHART in client.get_run(run_id).data.metrics
    version = client.get_model_version(NAME, "1")

    def shot(name: str) -> None:
        page.screenshot(path=tmp_path / f"{name}.png", full_page=True)

    # the experiments list
    page.goto(f"{url}/#/experiments")
    expect(page.get_by_role("link", name=NAME, exact=True)).to_be_visible(timeout=WAIT_MS)
    shot("1-experiments")

    # the run: its params...
    run_page = f"{url}/#/experiments/{experiment}/runs/{run_id}"
    page.goto(run_page)
    expect(page.get_by_text("model.family", exact=True).first).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text(project.config().model.family, exact=True).first).to_be_visible()
    shot("2-run-params")

    # ...and the validation chart, drawn (its legend names the metric)
    page.goto(f"{run_page}/model-metrics")
    page.get_by_placeholder("Search metric charts").fill(CHART)
    expect(page.get_by_text(CHART, exact=True).first).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text(re.compile(rf"\({CHART[:12]}")).first).to_be_visible(timeout=WAIT_MS)
    shot("3-run-chart")

    # the evaluate stage's plots among the artifacts, one previewed
    page.goto(f"{run_page}/artifacts")
    page.get_by_text("eval", exact=True).first.click(timeout=WAIT_MS)
    for plot in PLOTS:
        expect(page.get_by_text(plot, exact=True).first).to_be_visible(timeout=WAIT_MS)
    page.get_by_text(PLOTS[0], exact=True).first.click()
    preview = f"eval/{PLOTS[0]}"  # the preview's alt text; the PNG comes from S3 through the server
    expect(page.get_by_role("img", name=preview)).to_be_visible(timeout=WAIT_MS)
    page.wait_for_function(
        "alt => [...document.images].some(i => i.alt === alt && i.complete && i.naturalWidth > 0)",
        arg=preview,
        timeout=WAIT_MS,
    )
    shot("4-artifacts")

    # the registry: the model with its description and champion...
    page.goto(f"{url}/#/models")
    expect(page.get_by_role("link", name=NAME, exact=True)).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text("champion").first).to_be_visible(timeout=WAIT_MS)
    shot("5-models")
    page.goto(f"{url}/#/models/{NAME}")
    expect(page.get_by_text("the seqlm pipeline").first).to_be_visible(timeout=WAIT_MS)
    shot("6-model")

    # ...and version 1: alias champion, and a description that says what was trained on what
    assert version.description.startswith(f"{project.config().model.family} (")
    assert client.get_registered_model(NAME).description == registration.MODEL_DESCRIPTION
    page.goto(f"{url}/#/models/{NAME}/versions/1")
    expect(page.get_by_role("heading", name="Version 1")).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_role("status", name="champion")).to_be_visible(timeout=WAIT_MS)  # "@ champion"
    expect(page.get_by_text(version.description).first).to_be_visible(timeout=WAIT_MS)
    shot("7-version")

    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "1-experiments.png",
        "2-run-params.png",
        "3-run-chart.png",
        "4-artifacts.png",
        "5-models.png",
        "6-model.png",
        "7-version.png",
    ]
