"""`seqlm study`: the experiment plan, its dvc commands, the MLflow tagging, and docs/study.md from
fake results (no training here; `make study` is the real run)."""

from __future__ import annotations

import math

import pytest
import yaml
from seqlm_testing import REPO

from seqlm import cli
from seqlm.core.errors import SeqlmError
from seqlm.study import claims, collect, queue, report, results
from seqlm.study import plan as planning

OPTIONS = planning.Options(stamp="t0")


@pytest.fixture(scope="module")
def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture(scope="module")
def plan(params) -> list[planning.Experiment]:
    return planning.plan(OPTIONS, params)


def test_plan_runs_every_family_on_text_and_the_probe_grid(plan):
    names = [e.name for e in plan]
    text = [f"text-{f}-t0" for f in ("ffn_window", "bow", "rnn", "rnn-noclip", "irnn", "lstm", "gru")]
    probes = [f"copy{d}-{f}-t0" for d in (10, 50, 200) for f in ("rnn", "irnn", "lstm", "gru")]
    assert names == text + probes
    assert len(set(names)) == len(names)
    for e in plan:
        o = e.overrides
        assert o["base.experiment"] == OPTIONS.name
        assert o["train.max_steps"] == 0 and o["train.early_stopping_patience"] == 0  # time decides
        # not the default 20 epochs: the fast LSTM ran out of them at delay 200 with two of its minutes left
        # (1M probe symbols at 300k tokens/s are 3 s an epoch); 100,000 are 3.5 days at that speed
        assert o["train.max_epochs"] >= 100_000
        budget = OPTIONS.text_minutes if e.group == "text" else OPTIONS.probe_minutes
        assert o["train.max_minutes"] == budget
    by_name = {e.name: e.overrides for e in plan}
    assert by_name["text-rnn-noclip-t0"]["train.grad_clip"] == 0
    assert "train.grad_clip" not in by_name["text-rnn-t0"]  # the default clipping
    irnn = by_name["copy200-irnn-t0"]
    assert (irnn["model.family"], irnn["model.nonlinearity"], irnn["model.recurrent_init"]) == (
        "rnn",
        "relu",
        "identity",
    )


def test_probe_experiments_use_one_token_per_symbol_and_windows_that_hold_the_gap(plan):
    for e in (e for e in plan if e.group == "probe"):
        o = e.overrides
        assert o["data.source"] == "synthetic:copy" and o["tokenizer.type"] == "char"
        assert o["tokenizer.byte_fallback"] is False
        assert o["train.precision"] == "32-true"  # bf16 autocast slows the small GRU and RNN (study/plan.py)
        assert o["train.bptt"] >= 2 * (e.delay + 2)  # most episodes fit in one truncated-BPTT window
        assert o["evaluate.gradient_flow_steps"] >= e.delay + 2  # the curve reaches back to the key


def test_parameter_counts_are_comparable_and_real(plan, params):
    from seqlm import config
    from seqlm.models import build_model

    for group in ("text", "copy10", "copy200"):
        members = [e for e in plan if e.name.startswith(group + "-")]
        reference = next(e.parameters for e in members if e.family == "lstm")
        for e in members:
            assert abs(e.parameters - reference) <= 0.15 * reference, (e.name, e.parameters, reference)
    text_lstm = next(e for e in plan if e.name == "text-lstm-t0")
    assert (
        text_lstm.overrides["model.hidden_size"] == params["model"]["hidden_size"]
    )  # the reference keeps its size
    gru = next(e for e in plan if e.name == "text-gru-t0")
    cfg = config.parse(planning.apply(params, gru.overrides))
    assert build_model(cfg.model, params["tokenizer"]["vocab_size"]).num_parameters() == gru.parameters


def test_incomparable_sizes_are_refused(plan):
    lstm = next(e for e in plan if e.name == "text-lstm-t0")
    odd = planning.Experiment("text-bow-x", "text", "bow", {}, parameters=lstm.parameters * 2)
    with pytest.raises(SeqlmError, match=r"text-bow-x has [\d,]+ parameters, more than 15% away from lstm's"):
        planning.check_comparable([lstm, odd])


def test_set_param_arguments_mean_the_same_to_dvc(plan, params, tmp_path):
    from dvc.utils.hydra import apply_overrides

    for e in (plan[0], plan[-1]):
        path = tmp_path / f"{e.name}.yaml"
        path.write_text(yaml.safe_dump(params))
        args = queue.set_param_args(e.overrides)
        apply_overrides(path, args[1::2])  # what `dvc exp run -S …` does with them
        assert yaml.safe_load(path.read_text()) == planning.apply(params, e.overrides)


def test_dry_run_prints_the_dvc_commands_and_runs_nothing(project, capsys):
    code = cli.main(["study", "--dry-run", "--delays", "10", "--probe-families", "lstm", "rnn"])
    out = capsys.readouterr().out
    assert code == 0
    commands = [line for line in out.splitlines() if line.startswith("dvc ")]
    assert len(commands) == 7 + 2 + 1
    assert commands[0].startswith("dvc exp run --queue -n text-ffn_window-")
    assert commands[0].endswith(" evaluate")  # up to evaluate: study models are never registered
    assert "-S data.source=synthetic:copy" in commands[7]
    assert commands[-1] == "dvc queue start -j 2"
    assert not (project.root / ".dvc").exists() and not (project.root / "docs").exists()


def test_unknown_family_is_named(project, capsys):
    with pytest.raises(SystemExit):
        cli.main(["study", "--dry-run", "--probe-families", "transformer"])
    assert "invalid choice: 'transformer'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- MLflow


def test_runs_are_found_by_their_params_and_tagged(project, params):
    import time

    from mlflow.entities import Param

    from seqlm import config
    from seqlm.tracking.store import connect, experiment_id, tracking_uri

    experiments = planning.plan(
        planning.Options(
            stamp="t1", delays=(10,), text_families=("rnn", "rnn-noclip", "gru"), probe_families=("lstm",)
        ),
        params,
    )
    client = connect(tracking_uri(project.paths()))
    exp_id = experiment_id(client, OPTIONS.name, project.paths())
    # In plan order, so the newest run (searched first) of the rnn pair is rnn-noclip's, whose params
    # include every override of the clipped rnn's (which keeps the default train.grad_clip).
    for e in experiments:  # as the train stage logs them: every key, as str
        time.sleep(0.01)  # distinct start times
        run = client.create_run(exp_id, run_name=e.family)
        flat = config.parse(planning.apply(params, e.overrides)).flat()
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in flat.items()])
    _, runs = collect.study_runs(project.paths(), OPTIONS.name, started=0)
    for e in experiments:
        run = collect.match_run(runs, params, e)
        assert run is not None and run.data.params["model.family"] == e.overrides["model.family"]
        assert run.data.params["data.source"] == e.overrides.get("data.source", "builtin:kjv")
        assert float(run.data.params["train.grad_clip"]) == e.overrides.get(
            "train.grad_clip", params["train"]["grad_clip"]
        )
        collect.tag_run(client, run.info.run_id, planning.Options(stamp="t1"), e)
        tagged = client.get_run(run.info.run_id)
        assert tagged.data.tags["seqlm.study"] == OPTIONS.name
        assert tagged.data.tags["dvc.experiment"] == tagged.info.run_name == e.name
        runs.remove(run)
    assert runs == []


# ------------------------------------------------------------------------------------------------ report


def fake(
    e: planning.Experiment,
    bpb: float,
    recall: float | None = None,
    decay: float = 0.9,
    status: str = "success",
    diverged: bool = False,
) -> results.Result:
    """A result as the collector builds it, with curves of a given shape."""
    if status != "success":
        return results.Result(
            e, status=status, diverged=diverged, note="training diverged: the loss became nan at step 40"
        )
    train = {
        "num_parameters": e.parameters,
        "tokens_per_s": 20000.0,
        "steps": 1500,
        "fraction_clipped": 0.02,
        "stopped_by": "max_minutes",
    }
    evaluation = {"bits_per_byte": bpb, "word_perplexity": 2 ** (bpb * 5)}
    if recall is not None:
        evaluation |= {
            "recall_accuracy": recall,
            "recall_chance": 0.125,
            "recall_positions": 400,
            "recall_bits": 1.0,
            "recall_span": e.delay + 2,
        }
    window = e.family in ("ffn_window", "bow")
    ablation = {
        "rows": [
            {"reset_every": k, "bits_per_byte": bpb + (0.0 if window and k in ("64", "256") else gain)}
            for k, gain in (("1", 1.0), ("4", 0.5), ("16", 0.2), ("64", 0.1), ("256", 0.05))
        ]
        + [{"reset_every": "none", "bits_per_byte": bpb}]
    }
    steps = 256 if e.group == "probe" else 128
    gradient = {
        "rows": [{"k": k, "gradient_norm": 0.0 if window and k else decay**k} for k in range(steps + 1)]
    }
    return results.Result(e, "success", "abc123", train, evaluation, ablation, gradient, run_id="r")


def fake_results(plan, lstm_recall_200: float) -> list[results.Result]:
    text_bpb = {
        "ffn_window": 1.60,
        "bow": 1.75,
        "rnn": 1.50,
        "rnn-noclip": 1.58,
        "irnn": 1.48,
        "lstm": 1.35,
        "gru": 1.38,
    }
    decay = {"rnn": 0.9, "rnn-noclip": 0.9, "irnn": 0.97, "lstm": 0.98, "gru": 0.98}
    recall = {
        ("lstm", 10): 1.0,
        ("lstm", 50): 0.8,
        ("lstm", 200): lstm_recall_200,
        ("gru", 10): 1.0,
        ("gru", 50): 0.7,
        ("gru", 200): 0.5,
        ("irnn", 10): 0.9,
        ("irnn", 50): 0.6,
        ("irnn", 200): 0.13,
        ("rnn", 10): 0.9,
        ("rnn", 50): 0.14,
        ("rnn", 200): 0.12,
    }
    out = []
    for e in plan:
        if e.group == "text":
            out.append(fake(e, text_bpb[e.family], decay=decay.get(e.family, 0.5)))
        else:
            out.append(fake(e, 0.05, recall[(e.family, e.delay)], decay=decay[e.family]))
    return out


MACHINE = {
    "cpu": "Test CPU",
    "cores": 2,
    "memory": "24 GiB",
    "gpu": None,
    "platform": "Linux",
    "python": "3.11",
    "torch": "2.x",
    "commit": "0123456789abcdef",
    "dirty": False,
    "started": "2026-01-01T00:00:00+00:00",
    "finished": "2026-01-01T00:50:00+00:00",
    "wall_minutes": 50.0,
    "load_mean": 3.1,
    "load_max": 4.0,
}


def verdicts(text: str) -> dict[str, str]:
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "**" in line]
    return {cells[0].strip("| "): cells[1].strip("* ") for cells in rows}


def test_report_has_provenance_tables_figures_and_computed_verdicts(plan, tmp_path):
    path = report.write(tmp_path, fake_results(plan, lstm_recall_200=0.9), MACHINE, OPTIONS)
    text = path.read_text()
    assert "Test CPU, 2 cores" in text and "`0123456789ab`" in text and "2026-01-01T00:00:00" in text
    assert "50.0 minutes for 19 experiments" in text
    assert (
        "| family | DVC experiment | parameters | test bits/byte | word perplexity | tokens/s | steps | "
        "stopped by | fraction of steps clipped | diverged? |" in text
    )
    lstm = next(e for e in plan if e.name == "text-lstm-t0")
    assert f"| lstm | `text-lstm-t0` | {lstm.parameters:,} | 1.350 |" in text
    assert "| 20000 | 1500 | max_minutes | 0.020 | no |" in text  # what ended each run is on its row
    for figure in ("gradient_flow", "context_ablation", "copy_recall", "probe_gradient_flow"):
        assert f"](study/{figure}.png)" in text
        assert (tmp_path / "study" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
    got = verdicts(text)
    assert got["Fixed-window feed-forward models cannot hold long history"] == "supported"
    assert got["A bag of words loses order"] == "supported"
    assert got["Plain (tanh) RNN gradients vanish over long spans"] == "supported"  # 0.9**128 ≈ 1e-6
    assert got["Gradients can explode, and clipping tames the explosion"] == "supported"  # 1.58 vs 1.50
    # the same gap with smaller gradients without clipping than with it is no explosion (seen in a study)
    results = fake_results(plan, lstm_recall_200=0.9)
    for r in results:
        r.max_grad_norm = {"rnn": 4.05, "rnn-noclip": 2.07}.get(r.experiment.family)
    text = report.write(tmp_path, results, MACHINE, OPTIONS).read_text()
    assert verdicts(text)["Gradients can explode, and clipping tames the explosion"] == "not supported"
    assert "largest logged gradient norm 4.05 with clipping (measured before clipping), 2.07 without" in text
    for r in results:
        r.max_grad_norm = {"rnn": 4.05, "rnn-noclip": 40.0}.get(r.experiment.family)
    text = report.write(tmp_path, results, MACHINE, OPTIONS).read_text()
    assert verdicts(text)["Gradients can explode, and clipping tames the explosion"] == "supported"
    assert got["Gated cells (LSTM, GRU) keep long-term dependencies"] == "supported"
    assert got["ReLU with identity initialisation (IRNN) keeps long-term dependencies"] == "partly supported"
    assert "the LSTM recalls 0.90 and the tanh RNN 0.12" in text and "well above the tanh RNN (+0.78)" in text
    assert "| lstm | 1.00 (n=400) | 0.80 (n=400) | 0.90 (n=400) | 200 |" in text
    assert "Load average while the experiments ran: mean 3.1, peak 4.0, against 2" in text
    assert "other work competed for the cores" in text
    assert "delay 200: rnn 1,500, irnn 1,500, lstm 1,500, gru 1,500 (1.0× apart)" in text


def test_report_says_plainly_when_the_lstm_is_not_well_above_and_why(plan, tmp_path):
    text = report.write(tmp_path, fake_results(plan, lstm_recall_200=0.15), MACHINE, OPTIONS).read_text()
    assert "the LSTM recalls 0.15 and the tanh RNN 0.12" in text
    assert "The LSTM is **not** well above the tanh RNN here. Why, from the same runs:" in text
    assert (
        f"‖∂ℓ_t/∂h_(t−202)‖, the lag the recall's gradient must bridge to reach the key, is {0.98**202:.1e} "
        "of ‖∂ℓ_t/∂h_t‖" in text
    )
    assert "with truncated BPTT windows of 512 tokens, 61% of the training episodes" in text
    assert (
        verdicts(text)["Gated cells (LSTM, GRU) keep long-term dependencies"] == "partly supported"
    )  # gru 0.5


def test_report_marks_diverged_and_failed_runs(plan, tmp_path):
    results = fake_results(plan, lstm_recall_200=0.9)
    noclip = next(i for i, r in enumerate(results) if r.experiment.family == "rnn-noclip")
    results[noclip] = fake(results[noclip].experiment, 0, status="failed", diverged=True)
    irnn = next(i for i, r in enumerate(results) if r.experiment.name == "copy200-irnn-t0")
    results[irnn] = fake(results[irnn].experiment, 0, status="failed", diverged=True)
    text = report.write(tmp_path, results, MACHINE, OPTIONS).read_text()
    assert "| irnn | 0.90 (n=400) | 0.60 (n=400) | diverged | 50 |" in text
    assert "irnn: diverged at delay 200; remembers up to delay 50 (tanh rnn: 10)" in text
    assert (
        verdicts(text)["ReLU with identity initialisation (IRNN) keeps long-term dependencies"]
        == "not supported"
    )
    assert "| rnn-noclip | `text-rnn-noclip-t0` |" in text and "| — | — | — | — | — | — | yes |" in text
    assert verdicts(text)["Gradients can explode, and clipping tames the explosion"] == "supported"
    assert (
        "without clipping the tanh rnn diverged (training diverged: the loss became nan at step 40)" in text
    )
    assert "(2 failed)" in text


def test_well_above_needs_ten_points_and_two_standard_errors(plan):
    lstm, rnn = (next(e for e in plan if e.name == f"copy200-{f}-t0") for f in ("lstm", "rnn"))
    a, b = fake(lstm, 0.1, recall=0.30), fake(rnn, 0.1, recall=0.15)
    assert claims.well_above(a, b) == (True, pytest.approx(0.15))
    a.eval["recall_positions"] = b.eval["recall_positions"] = 20  # too few positions to tell
    assert claims.well_above(a, b)[0] is False
    assert math.isnan(claims.well_above(fake(lstm, 0, status="failed"), b)[1])


def test_captured_output_does_not_wait_for_daemons_the_command_leaves_behind(tmp_path):
    # `dvc queue start` leaves its workers running with its stdout; capturing must not wait for them.
    # The daemon holds that stdout until the test releases it (or gives up, marking `ended`): a capture
    # that waited for it would return only once `ended` exists, never while the daemon still runs.
    from seqlm.core.paths import Paths

    daemon = "i=0; while [ ! -e released ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; touch ended"
    try:
        done = queue.run_dvc(["sh", "-c", f"({daemon}) & echo started"], Paths(tmp_path), capture=True)
        assert done.stdout.strip() == "started" and done.returncode == 0
        assert not (tmp_path / "ended").exists()  # it returned while the daemon still held its stdout
    finally:
        (tmp_path / "released").touch()


# `dvc queue status` as DVC 3.67 printed it during a study whose second worker had stopped early
QUEUE_STATUS = """\
Task     Name                      Created    Status
6285954  text-irnn-11301119        11:20 AM   Running
bd114b5  text-lstm-11301119        11:20 AM   Queued
13d78b1  text-gru-11301119         11:20 AM   Queued
b58405f  text-ffn_window-11301119  11:20 AM   Success
8e47a62  copy10-irnn-11301119      11:20 AM   Failed

Worker status: 1 active, 0 idle
"""


def test_queue_status_is_parsed_with_its_worker_count():
    status, workers = queue.parse_queue_status(QUEUE_STATUS)
    assert status == {
        "text-irnn-11301119": "Running",
        "text-lstm-11301119": "Queued",
        "text-gru-11301119": "Queued",
        "text-ffn_window-11301119": "Success",
        "copy10-irnn-11301119": "Failed",
    }
    assert workers == 1
    assert queue.parse_queue_status(QUEUE_STATUS.replace("1 active, 0 idle", "1 active, 1 idle"))[1] == 2
    assert queue.parse_queue_status("Task     Name   Created    Status\n")[1] is None  # no line, no guess


def test_a_lost_worker_is_replaced_only_while_experiments_wait():
    status, workers = queue.parse_queue_status(QUEUE_STATUS)
    assert queue.workers_to_start(status, workers, jobs=2) == 1  # the case seen: one of two gone
    waiting = status | {"text-irnn-11301119": "Success"}
    assert queue.workers_to_start(waiting, 0, jobs=2) == 2  # all gone: the study would wait forever
    assert queue.workers_to_start(waiting, 0, jobs=4) == 2  # never more workers than queued experiments
    assert queue.workers_to_start(status, 2, jobs=2) == 0
    assert queue.workers_to_start(status, None, jobs=2) == 0  # DVC did not say: start nothing
    done = {name: "Success" for name in status}
    assert queue.workers_to_start(done | {"text-irnn-11301119": "Running"}, 1, jobs=2) == 0  # nothing waits
    # tasks Running count as busy workers even where DVC's worker count lags behind (treeverse/dvc#10427)
    two_running = status | {"text-lstm-11301119": "Running"}
    assert queue.workers_to_start(two_running, 0, jobs=2) == 0
