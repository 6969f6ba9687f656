"""`seqlm study`: the plan (seeds, controls, presets, the time estimate), its dvc commands, the MLflow
matching and tagging, aggregation over seeds with the verdict rule, and docs/study.md from synthetic
results (no training here; `make study` is the real run)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml
from seqlm_testing import REPO

from seqlm import cli, config
from seqlm.core.errors import SeqlmError
from seqlm.study import aggregate, budget, collect, queue, report, results
from seqlm.study import plan as planning
from seqlm.study.commands import add_arguments, options_from

OPTIONS = planning.preset("full", stamp="t0")
QUICK = planning.preset("quick", stamp="q0")


@pytest.fixture(scope="module")
def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture(scope="module")
def plan(params) -> list[planning.Experiment]:
    return planning.plan(OPTIONS, params)


@pytest.fixture(scope="module")
def quick_plan(params) -> list[planning.Experiment]:
    return planning.plan(QUICK, params)


def by_name(plan) -> dict[str, planning.Experiment]:
    return {e.name: e for e in plan}


def test_every_cell_runs_over_five_seeds_with_its_own_name_and_seed(plan):
    names = [e.name for e in plan]
    assert len(set(names)) == len(names)
    cells = aggregate.cells([results.Result(e) for e in plan])
    assert OPTIONS.seeds == 5 and all(c.seeds == 5 for c in cells.values())
    for cell in cells.values():
        seeds = [r.experiment.overrides["base.seed"] for r in cell.results]
        assert seeds == [planning.SEED + i for i in range(5)]
        assert [r.experiment.name for r in cell.results] == [f"{cell.key}-s{i}-t0" for i in range(5)]
        # the seeds of a cell differ in base.seed alone
        first = {k: v for k, v in cell.results[0].experiment.overrides.items() if k != "base.seed"}
        assert all(
            {k: v for k, v in r.experiment.overrides.items() if k != "base.seed"} == first
            for r in cell.results
        )
    groups = {c.experiment.group for c in cells.values()}
    assert groups == {"text", "probe", "explode", "cloze"}
    text = [k for k in cells if k.startswith("text-")]
    assert text == [f"text-{f}" for f in ("ffn_window", "ffn_window-wide", "bow", "rnn", "lstm", "gru")]
    for e in plan:
        o = e.overrides
        assert o["base.experiment"] == OPTIONS.name
        if e.group in ("explode", "cloze"):  # minutes decide: no step limit, no early stopping
            assert o["train.max_steps"] == 0 and o["train.max_minutes"] > 0
        if e.group == "text":  # tokens decide: a step limit, no minute limit, no early stopping
            assert o["train.max_steps"] > 0 and o["train.max_minutes"] == 0
        if e.group != "probe":
            assert o["train.early_stopping_patience"] == 0 and o["train.max_epochs"] >= 100_000


def test_every_text_family_trains_on_the_same_tokens_and_the_wide_window_is_the_slowest(
    plan, quick_plan, params
):
    text = [e for e in plan if e.group == "text"]
    steps = budget.text_steps(32 * 64, OPTIONS.text_tokens)
    per_step = params["train"]["batch_size"] * params["train"]["bptt"]
    assert {
        (e.overrides["train.max_steps"], e.overrides["train.batch_size"] * e.overrides["train.bptt"])
        for e in text
    } == {(steps, per_step)}
    assert steps * per_step >= OPTIONS.text_tokens > (steps - 1) * per_step  # rounded up to whole updates
    # params.yaml's warm-up (100 updates) for every family: a twentieth of the updates (12 of the full
    # study's 245) left the tanh RNN at lr 1e-2 saturated (2.47 bits/byte, its gradient flow exactly 0)
    assert all("train.warmup_steps" not in e.overrides for e in text)
    assert steps > params["train"]["warmup_steps"]
    # the same tokens cost the families different minutes; the wide window's 2.6M parameters the most
    minutes = {e.family: budget.training_minutes(e) for e in text if e.seed == planning.SEED}
    assert max(minutes, key=minutes.get) == "ffn_window-wide" and min(minutes.values()) > 0
    assert minutes["ffn_window-wide"] == pytest.approx(
        steps * per_step / budget.TEXT_TOKENS_PER_S["ffn_window-wide"] / 60
    )
    quick_steps = {e.overrides["train.max_steps"] for e in quick_plan if e.group == "text"}
    assert (
        quick_steps == {budget.text_steps(32 * 64, QUICK.text_tokens)}
        and QUICK.text_tokens < OPTIONS.text_tokens
    )
    with pytest.raises(SeqlmError, match="--text-tokens must be at least 1, got 0"):
        planning.plan(planning.preset("quick", text_tokens=0), params)


def test_probe_is_episodic_with_a_step_budget_a_ladder_and_its_control_at_the_shortest_delay(plan):
    probes = [e for e in plan if e.group == "probe"]
    assert sorted({e.delay for e in probes}) == list(OPTIONS.delays) and min(OPTIONS.delays) <= 10
    for e in probes:
        o = e.overrides
        assert o["train.episodic"] is True and o["data.source"] == "synthetic:copy"
        assert o["train.max_steps"] == OPTIONS.probe_steps and o["train.max_minutes"] == 0  # equal updates
        assert o["train.bptt"] >= e.delay + 3  # the whole episode is the window
        assert o["evaluate.gradient_flow_steps"] >= e.delay + 2  # the curve reaches back to the key
        assert o["train.batch_size"] == planning.PROBE_BATCH_SIZE
    shortest = min(OPTIONS.delays)
    for family in planning.PROBE_FAMILIES:  # every family at every delay: the ladder and its control
        assert {e.delay for e in probes if e.label == family} == set(OPTIONS.delays)
    # one optimiser for every family (the same rate, the pipeline's clipping), each run stopping once solved
    for e in probes:
        o = e.overrides
        assert o["train.lr"] == planning.PROBE_LR  # untuned: no docs/study/probe_lr.json given
        assert "train.grad_clip" not in o and "train.optimizer" not in o
        assert o["train.stop_at_recall"] == planning.SOLVED_RECALL and o["train.val_every_steps"] > 0
    assert {e.delay for e in probes if e.family == "rnn"} >= {shortest, 100, 200}  # a ladder past 100
    # the IRNN as a 2 × 2, the LSTM's forget-gate bias at 1 with 0 as its ablation, the window controls
    inits = {
        (o["model.nonlinearity"], o["model.recurrent_init"])
        for e in probes
        if (o := e.overrides)["model.family"] == "rnn"
    }
    assert inits == {("tanh", "default"), ("tanh", "identity"), ("relu", "default"), ("relu", "identity")}
    biases = {
        e.family: e.overrides["model.forget_bias"] for e in probes if e.overrides["model.family"] == "lstm"
    }
    assert biases == {"lstm": 1.0, "lstm-bias0": 0.0, "lstm-chrono": 0.0}
    # chrono initialisation up to the episode's length, each delay its own; no other family has it
    chrono = {e.delay: e.overrides["model.chrono_max"] for e in probes if "model.chrono_max" in e.overrides}
    assert {e.family for e in probes if "model.chrono_max" in e.overrides} == {"lstm-chrono"}
    assert chrono == {e.delay: e.overrides["train.bptt"] for e in probes}  # the whole episode
    windows = [e for e in probes if e.family in ("ffn_window", "bow")]
    assert windows and all(e.overrides["model.window"] == 8 for e in windows)


def test_explosion_is_a_grid_of_gains_and_clip_thresholds_with_an_unprovoked_baseline(plan, quick_plan):
    explode = [e for e in plan if e.group == "explode"]
    grid = {(e.overrides["model.recurrent_gain"], e.overrides["train.grad_clip"]) for e in explode}
    assert grid == {(g, c) for g in planning.EXPLODE_GAINS for c in planning.EXPLODE_CLIPS}
    assert 1.0 in planning.EXPLODE_GAINS and 0.0 in planning.EXPLODE_CLIPS  # the baseline and no clipping
    assert len(explode) == len(grid) * OPTIONS.seeds
    for e in explode:
        o = e.overrides
        assert o["model.family"] == "rnn" and o["model.nonlinearity"] == "tanh"
        assert o["model.recurrent_init"] == "orthogonal"  # spectral radius = the gain
        assert o["train.optimizer"] == "sgd"  # a gradient's size is its step's size
        gain, clip = o["model.recurrent_gain"], o["train.grad_clip"]
        assert e.cell == f"explode-g{gain:g}-c{clip:g}" and e.name.startswith(e.cell + "-s")
        assert e.label == f"gain {gain:g}, " + (f"clip {clip:g}" if clip else "unclipped")
    assert "explode-g3-c0.5" in {e.cell for e in explode} and "explode-g1-c0" in {e.cell for e in explode}
    text_rnn = next(e for e in plan if e.cell == "text-rnn")
    assert {e.parameters for e in explode} == {text_rnn.parameters}  # the text rnn's model but its W_hh
    # --quick keeps the provocation with and without the pipeline's clipping, no more
    assert sorted(e.cell for e in quick_plan if e.group == "explode") == ["explode-g3-c0", "explode-g3-c0.5"]


def test_wide_window_keeps_its_extra_parameters_and_cloze_differs_only_in_direction(plan, params):
    names = by_name(plan)
    narrow, wide = names["text-ffn_window-s0-t0"], names["text-ffn_window-wide-s0-t0"]
    assert wide.overrides["model.window"] > narrow.overrides.get("model.window", 8)
    assert wide.overrides["model.hidden_size"] == narrow.overrides["model.hidden_size"]
    assert wide.parameters > 2 * narrow.parameters  # not matched: the extra parameters are the question
    planning.check_comparable(planning.comparable(plan))  # every other group within 15% of the LSTM
    with pytest.raises(SeqlmError, match="more than 15% away"):
        planning.check_comparable(plan)
    lstm, bi = names["cloze-lstm-s0-t0"], names["cloze-bilstm-s0-t0"]
    assert lstm.overrides["train.objective"] == bi.overrides["train.objective"] == "cloze"
    differ = {k for k in lstm.overrides if lstm.overrides[k] != bi.overrides.get(k)}
    assert differ == {"model.bidirectional"} and bi.overrides["model.bidirectional"] is True
    assert bi.parameters > lstm.parameters
    matched = names["cloze-lstm-matched-s0-t0"]  # left to right, as big as the BiLSTM
    assert matched.overrides["model.bidirectional"] is False
    assert abs(matched.parameters - bi.parameters) <= 0.15 * bi.parameters


def test_quick_is_one_seed_a_short_ladder_and_both_presets_fit_their_budgets(plan, quick_plan, params):
    assert QUICK.seeds == 1 and len(QUICK.delays) < len(OPTIONS.delays)
    assert min(QUICK.delays) == min(OPTIONS.delays)  # the positive control stays
    assert {
        aggregate.Cell(k, c.results).seeds
        for k, c in aggregate.cells([results.Result(e) for e in quick_plan]).items()
    } == {1}
    full_minutes = budget.estimate_minutes(plan, OPTIONS.jobs)
    quick_minutes = budget.estimate_minutes(quick_plan, QUICK.jobs)
    assert quick_minutes <= budget.LIMIT_MINUTES["quick"]
    # five seeds cost five thirds of three: the estimate scales with the seeds, nothing else changed
    three = budget.estimate_minutes(planning.plan(planning.preset("full", seeds=3), params), OPTIONS.jobs)
    assert full_minutes == pytest.approx(three * 5 / 3, rel=0.01)
    # the full evidence is far past an afternoon on 2 cores: the summary says so and names the ways out
    assert full_minutes > budget.AFTERNOON_MINUTES
    line = budget.summary(plan, OPTIONS)
    assert "at most about" in line and "seqlm study --gpu" in line and "across machines" in line
    # the estimate counts what it should: a step budget costs more minutes at a longer delay
    probe = [e for e in plan if e.cell in ("copy5-lstm", "copy50-lstm")]
    assert budget.training_minutes(probe[-1]) > budget.training_minutes(probe[0]) > 0


def test_gpu_is_one_flag_and_explicit_options_win_over_the_preset():
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert options_from(p.parse_args([])) == planning.Options()
    quick = options_from(p.parse_args(["--quick", "--seeds", "2"]))
    assert (quick.seeds, quick.delays, quick.preset) == (2, QUICK.delays, "quick")
    assert options_from(p.parse_args(["--text-tokens", "100000"])).text_tokens == 100_000
    gpu = options_from(p.parse_args(["--gpu"]))
    assert gpu.gpu and max(gpu.delays) > max(OPTIONS.delays) and gpu.probe_steps > OPTIONS.probe_steps


def test_the_explosion_grid_and_the_matched_cloze_control_are_options(params):
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = ["--quick", "--explode-gains", "2", "3", "--explode-clips", "0", "1", "--cloze-matched"]
    e = planning.plan(options_from(p.parse_args(args)), params)
    explode = {x.cell for x in e if x.group == "explode"}
    assert explode == {"explode-g2-c0", "explode-g2-c1", "explode-g3-c0", "explode-g3-c1"}
    assert "cloze-lstm-matched" in {x.cell for x in e}
    full = options_from(p.parse_args(["--no-cloze-matched"]))
    assert not full.cloze_matched and full.explode_gains == planning.EXPLODE_GAINS


def test_a_preset_with_sizing_options_changed_is_not_held_to_its_limit_and_says_so(params):
    quick = planning.preset("quick", seeds=5, probe_steps=10_000, delays=(5, 100), cloze_matched=True)
    assert budget.changed(quick, QUICK) == "--seeds 5 --probe-steps 10000 --delays 5 100 --cloze-matched"
    assert "limit" not in budget.summary(planning.plan(quick, params), quick, QUICK)
    assert budget.changed(planning.preset("quick", stamp="x", probe_lrs=(("gru", 0.1),)), QUICK) == ""
    assert budget.changed(planning.preset("full", cloze_matched=False), OPTIONS) == "--no-cloze-matched"
    assert "limit 20 min" in budget.summary(planning.plan(QUICK, params), QUICK, QUICK)


def test_seeds_below_one_are_refused(params):
    with pytest.raises(SeqlmError, match="--seeds must be at least 1, got 0"):
        planning.plan(planning.preset("quick", seeds=0), params)
    with pytest.raises(SeqlmError, match="--explode-gains must be above 0, --explode-clips at least 0"):
        planning.plan(planning.preset("quick", explode_clips=(0.0, -1.0)), params)


def test_set_param_arguments_mean_the_same_to_dvc(plan, params, tmp_path):
    from dvc.utils.hydra import apply_overrides

    for e in (plan[0], next(e for e in plan if e.group == "probe"), plan[-1]):
        path = tmp_path / f"{e.name}.yaml"
        path.write_text(yaml.safe_dump(params))
        args = queue.set_param_args(e.overrides)
        apply_overrides(path, args[1::2])  # what `dvc exp run -S …` does with them
        # compared as parsed: DVC writes `plan: off` bare, which YAML 1.1 reads as false (config takes both)
        written = config.parse(yaml.safe_load(path.read_text())).flat()
        assert written == config.parse(planning.apply(params, e.overrides)).flat()


def test_dry_run_prints_the_estimate_and_the_dvc_commands_and_runs_nothing(project, capsys):
    code = cli.main(["study", "--dry-run", "--quick", "--delays", "5", "--probe-families", "lstm", "rnn"])
    out = capsys.readouterr().out
    assert code == 0
    assert "study: 12 experiments, 1 seed(s) each, at most about" in out
    assert "limit" not in out  # --delays and --probe-families changed: no longer the preset's 20 minutes
    commands = [line for line in out.splitlines() if line.startswith("dvc ")]
    assert len(commands) == 6 + 2 + 2 + 2 + 1
    assert commands[0].startswith("dvc exp run --queue -n text-ffn_window-s0-")
    assert commands[0].endswith(" evaluate")  # up to evaluate: study models are never registered
    assert "-S train.max_steps=123" in commands[0] and "-S train.max_minutes=0" in commands[0]
    assert "-S train.episodic=true" in commands[6]
    assert commands[-1] == "dvc queue start -j 2"
    assert not (project.root / ".dvc").exists() and not (project.root / "docs").exists()


def test_unknown_family_is_named(project, capsys):
    with pytest.raises(SystemExit):
        cli.main(["study", "--dry-run", "--probe-families", "transformer"])
    assert "invalid choice: 'transformer'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- MLflow


@pytest.mark.slow
def test_runs_are_found_by_their_params_and_tagged(project, params):
    import time

    from mlflow.entities import Param

    from seqlm import config
    from seqlm.tracking.store import connect, experiment_id, tracking_uri

    options = planning.preset(
        "quick", stamp="t1", seeds=2, delays=(5,), text_families=("rnn", "gru"), probe_families=("lstm",)
    )
    experiments = planning.plan(options, params)
    client = connect(tracking_uri(project.paths()))
    exp_id = experiment_id(client, OPTIONS.name, project.paths())
    # In plan order, so the newest run (searched first) of the explosion pair is the clipped one's, whose
    # params equal the unclipped one's but train.grad_clip; seeds differ in base.seed alone.
    for e in experiments:  # as the train stage logs them: every key, as str
        time.sleep(0.01)  # distinct start times
        run = client.create_run(exp_id, run_name=e.family)
        flat = config.parse(planning.apply(params, e.overrides)).flat()
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in flat.items()])
    _, runs = collect.study_runs(project.paths(), OPTIONS.name, started=0)
    for e in experiments:
        run = collect.match_run(runs, params, e)
        assert run is not None and run.data.params["model.family"] == e.overrides["model.family"]
        assert run.data.params["base.seed"] == str(e.seed)
        assert run.data.params["data.source"] == e.overrides.get("data.source", "builtin:kjv")
        assert float(run.data.params["train.grad_clip"]) == e.overrides.get(
            "train.grad_clip", params["train"]["grad_clip"]
        )
        collect.tag_run(client, run.info.run_id, options, e)
        tagged = client.get_run(run.info.run_id)
        assert tagged.data.tags["seqlm.study"] == OPTIONS.name
        assert tagged.data.tags["seqlm.study.cell"] == e.cell and tagged.data.tags["seqlm.study.seed"] == str(
            e.seed
        )
        assert tagged.data.tags["dvc.experiment"] == tagged.info.run_name == e.name
        runs.remove(run)
    assert runs == []


@pytest.mark.slow
def test_a_diverged_runs_traces_are_read_up_to_its_divergence(project, params):
    from mlflow.entities import Metric

    from seqlm.tracking.store import connect, experiment_id, tracking_uri

    e = next(
        e
        for e in planning.plan(planning.preset("quick", stamp="t2", delays=(5,)), params)
        if e.label == "gain 3, unclipped"
    )
    client = connect(tracking_uri(project.paths()))
    run = client.create_run(experiment_id(client, OPTIONS.name, project.paths()))
    norms, losses = [4.0, 3e6, 8e7], [5.0, 4.1, 6.3]
    metrics = [Metric("grad_norm", v, 0, 2 * i) for i, v in enumerate(norms)]
    metrics += [Metric("train_loss", v, 0, 2 * i) for i, v in enumerate(losses)]
    client.log_batch(run.info.run_id, metrics=metrics)
    client.set_terminated(run.info.run_id, "FAILED")  # as the train stage marks a diverged run
    r = results.Result(e, status="failed", diverged=True)
    collect._read_run(r, client, run.info.run_id, planning.preset("quick", stamp="t2"))
    assert r.traces["grad_norm"] == [(0, 4.0), (2, 3e6), (4, 8e7)] and r.max_grad_norm == 8e7
    assert results.loss_spikes(r) == 1  # 6.3 > 4.1 + 0.5


# ------------------------------------------------------------------------------------------------ report
TEXT_BPB = {"ffn_window": 1.60, "ffn_window-wide": 1.58, "bow": 1.75, "rnn": 1.50, "lstm": 1.35, "gru": 1.38}
DECAY = {"rnn": 0.9, "irnn": 0.97, "lstm": 0.98, "gru": 0.98}
RECALL = {  # label -> recall at delays 5, 10, 25, 50, 100, 200; at least 0.97 solves (stop_at_recall 0.95)
    "rnn": (0.98, 0.30, 0.13, 0.12, 0.12, 0.12),
    "rnn-identity": (0.98, 0.40, 0.13, 0.12, 0.12, 0.12),
    "rnn-relu": (0.98, 0.35, 0.13, 0.12, 0.12, 0.12),
    "irnn": (0.99, 0.98, 0.40, 0.13, 0.12, 0.12),
    "lstm": (1.0, 0.99, 0.99, 0.98, 0.98, 0.30),
    "lstm-bias0": (1.0, 0.99, 0.98, 0.50, 0.13, 0.12),
    "lstm-chrono": (1.0, 0.99, 0.99, 0.99, 0.98, 0.98),
    "gru": (1.0, 0.99, 0.98, 0.98, 0.60, 0.12),
    "ffn_window": (0.99, 0.13, 0.12, 0.13, 0.12, 0.12),  # window 8: delay 5's key is inside it
    "bow": (0.98, 0.12, 0.13, 0.12, 0.12, 0.12),
}
SOLVED_AT = (300, 600, 1500, 3000, 6000, 9000)  # updates a solving run took, by delay


OFFSETS = (0, -1, 1, 1, -1)  # seed i's jitter in units of the spread: over 3 or 5 seeds, mean 0 and sd 1


def fake(e: planning.Experiment, seed: int, spread: float = 0.01, **changes) -> results.Result:
    """A result as the collector builds it: metrics by the experiment's row, ± ``spread`` by seed."""
    jitter = OFFSETS[seed % len(OFFSETS)] * spread
    train = {
        "num_parameters": e.parameters,
        "tokens_per_s": 20000.0,
        "steps": 1200,
        "wall_seconds": 90.0,
        "fraction_clipped": 0.02,
        "stopped_by": "max_steps" if e.group in ("probe", "text") else "max_minutes",
    }
    if e.group == "text":  # the same tokens, each family at its own speed
        steps = e.overrides["train.max_steps"]
        tokens = steps * e.overrides["train.batch_size"] * e.overrides["train.bptt"]
        train.update(steps=steps, tokens=tokens, wall_seconds=tokens / budget.TEXT_TOKENS_PER_S[e.family])
    r = results.Result(e, "success", "abc123", train, {}, run_id="r")
    gain, clip = e.overrides.get("model.recurrent_gain", 1.0), e.overrides.get("train.grad_clip", 0.5)
    provoked = e.group == "explode" and gain > 1
    if e.group in ("text", "explode"):
        value = TEXT_BPB.get(e.family, 1.5) if e.group == "text" else (1.55 if clip or not provoked else 1.90)
        r.eval = {
            "bits_per_byte": value + jitter,
            "unigram_bits_per_byte": 2.44,
            "bigram_bits_per_byte": 1.99,
        }
        window = e.family.startswith("ffn_window") or e.family == "bow"
        wide = e.family == "ffn_window-wide"
        gains = {
            "1": 1.0,
            "4": 0.5,
            "16": 0.2 if (wide or not window) else 0.01,
            "64": 0.02 if window else 0.1,
            "256": 0.0 if window else 0.05,
        }
        rows = [{"reset_every": k, "bits_per_byte": value + g} for k, g in gains.items()]
        r.ablation = {"rows": rows + [{"reset_every": "none", "bits_per_byte": value}]}
        decay = DECAY.get(e.family, 0.5)
        r.gradient = {
            "rows": [{"k": k, "gradient_norm": 0.0 if window and k else decay**k} for k in range(129)]
        }
        peak = (3e6 if not clip else 2e6) if provoked else 5.0
        losses = [5.0, 4.0, 4.9, 4.2] if provoked and not clip else [5.0, 3.0, 2.5, 2.4]
        r.traces = {
            "grad_norm": [(2 * i, peak / (i + 1)) for i in range(4)],
            "train_loss": list(enumerate(losses)),
        }
        r.max_grad_norm = peak
    elif e.group == "probe":
        d = OPTIONS.delays.index(e.delay)
        p = min(1.0, max(0.0, RECALL[e.label][d] + jitter))
        done = p >= planning.SOLVED_RECALL
        train.update(stopped_by="solved" if done else "max_steps", steps=SOLVED_AT[d] if done else 10_000)
        r.eval = {
            "bits_per_byte": 0.1,
            "recall_accuracy": p,
            "recall_chance": 0.125,
            "recall_positions": 1024,
        }
    else:
        blank = {"bilstm": 5.7, "lstm (left to right)": 6.9, "lstm (size-matched)": 6.8}[e.label] + jitter
        r.eval = {
            "bits_per_blank": blank,
            "top1_accuracy": 0.2,
            "top5_accuracy": 0.4,
            "unigram_bits_per_blank": 8.5,
        }
    for key, value in changes.items():
        setattr(r, key, value)
    return r


def fake_results(plan, spread: float = 0.01) -> list[results.Result]:
    return [fake(e, e.seed - planning.SEED, spread) for e in plan]


def diverge(r: results.Result) -> results.Result:
    """The unclipped run as a diverged experiment leaves it: no reports, a failure line, its traces."""
    r.status, r.diverged, r.eval, r.train = "failed", True, None, None
    r.note = "training diverged: the loss became nan at step 40"
    r.traces["train_loss"].append((8, float("nan")))
    return r


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
    "finished": "2026-01-01T01:20:00+00:00",
    "wall_minutes": 80.0,
    "load_mean": 3.1,
    "load_max": 4.0,
}


def verdicts(text: str) -> dict[str, str]:
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and " | **" in line]
    return {cells[0].strip("| "): cells[1].strip("* ") for cells in rows}


CLAIMS = {
    "window": "Fixed-window feed-forward models cannot hold long history",
    "big": "A bigger window needs parameters that are not shared, and does not buy what an RNN's shared "
    "weights buy",
    "bow": "A bag of words loses order",
    "vanish": "Plain (tanh) RNN gradients vanish over long spans",
    "clip": "Gradients can explode, and clipping tames the explosion",
    "irnn": "ReLU with identity initialisation (IRNN) keeps long-term dependencies",
    "gated": "Gated cells (LSTM, GRU) keep long-term dependencies",
    "window-probe": "A fixed window (or a bag of words over it) cannot carry the key past its window",
    "bi": "A bidirectional RNN uses the future context too (where the task allows it: filling a blank)",
}


def test_stat_keeps_mean_sd_and_range_and_adds_the_interval_of_the_mean():
    a = aggregate.stat([1.0, 1.1, 1.2])
    assert (
        a.mean == pytest.approx(1.1) and a.sd == pytest.approx(0.1) and (a.low, a.high, a.n) == (1.0, 1.2, 3)
    )
    half = 4.302652729911275 * 0.1 / 3**0.5  # t(0.975, 2) · sd / √n
    assert (a.ci_low, a.ci_high) == (pytest.approx(1.1 - half), pytest.approx(1.1 + half))
    assert aggregate.stat([None, float("nan")]) is None
    one = aggregate.stat([2.0])
    assert one.sd == 0 and one.text() == "2.000" and one.ci_low is None  # one seed, no spread, no interval
    assert a.text() == "1.100 ± 0.100"


def test_report_has_every_claim_with_a_control_mean_and_spread_and_figures(plan, tmp_path):
    path = report.write(tmp_path, fake_results(plan), MACHINE, OPTIONS)
    text = path.read_text()
    got = verdicts(text)
    assert set(got) == set(CLAIMS.values())
    assert {name: got[claim] for name, claim in CLAIMS.items()} == {
        "window": "supported",
        "big": "supported",
        "bow": "supported",
        "vanish": "supported",
        "clip": "supported",
        "irnn": "supported",
        "gated": "supported",
        "window-probe": "supported",
        "bi": "supported",
    }
    assert text.count(aggregate.RULE) == 1  # the rule, stated once, with the size of the corrected family
    assert "Welch's two-sided t-test" in aggregate.RULE and "Holm–Bonferroni" in aggregate.RULE
    assert "This table makes 46 tests in 8 claims." in text  # the window controls compare nothing
    # each row shows its effect with the interval and the adjusted p
    assert "| bow − ffn_window, bits/byte: +0.150 [+0.135, +0.165], p_Holm < 0.001 |" in text
    assert "lstm − tanh rnn, recall at delay 100: +0.86 [+0.85, +0.87], p_Holm < 0.001" in text
    assert "Test CPU, 2 cores" in text and "`0123456789ab`" in text
    assert "estimated before queueing at 445 experiments, 5 seed(s) each, at most about" in text
    assert "spent 80.0 minutes for 445 experiments (0 failed or diverged)" in text
    assert "every cell over 5 seeds, the ladder to delay 200" in text
    # seeds solved and their median updates to solve, per delay; the reach is the longest delay solved
    assert (
        "| lstm | 5/5 · 300 | 5/5 · 600 | 5/5 · 1,500 | 5/5 · 3,000 | 5/5 · 6,000 | 0/5 | passed | 100 |"
        in text
    )
    assert "| lstm-bias0 | 5/5 · 300 | 5/5 · 600 | 5/5 · 1,500 | 0/5 | 0/5 | 0/5 | passed | 25 |" in text
    assert (
        "the 2 × 2 (nonlinearity, W_hh init) reaches: tanh, default 5, tanh, identity 5, ReLU, default 5"
        in text
    )
    assert "lstm with forget bias 0 (PyTorch's) solves up to delay 25" in text
    assert "ffn_window (window 8): solves [5] inside it" in text
    lstm = next(e for e in plan if e.cell == "text-lstm")
    assert f"| lstm | {lstm.parameters:,} | 1.350 ± 0.010 | 0.100 ± 0.000 |" in text
    # equal tokens, the wall clock its own column, the n-gram floors as rows
    assert "| 245 ± 0 | 501760 ± 0 | 78 ± 0 | 0/5 |" in text  # lstm: 501,760 tokens at 6,400 tokens/s
    assert "| 245 ± 0 | 501760 ± 0 | 239 ± 0 | 0/5 |" in text  # the wide window: the same tokens, 3× the time
    assert "| unigram (add-one, train counts) | — | 2.440 ± 0.000 |" in text
    assert "| bigram (add-one, train counts) | — | 1.990 ± 0.000 |" in text
    assert "ffn_window (32): 2,611,408 parameters, 1.580 ± 0.010 bits/byte, 239 ± 0 s of training" in text
    assert "| bilstm |" in text and "| 5.700 ± 0.010 |" in text
    assert "Every run stops once solved or at 10,000 updates" in text and "rnn 9.0 min" in text
    for figure in ("gradient_flow", "context_ablation", "copy_recall", "explosion"):
        assert f"](study/{figure}.png)" in text
        assert (tmp_path / "study" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
    assert "One seed: no spread" not in text
    limits = text.split("## Limitations and the literature", 1)[1].split("\n## ", 1)[0]
    assert "Agree with the literature: the fixed window (Bengio et al. 2003)" in limits
    assert "Hochreiter & Schmidhuber 1997" in limits and "5 seeds per cell" in limits
    assert "Not tuned: every probe family trained at `PROBE_LR` (0.003)" in limits
    # the size-matched left-to-right control answers the BiLSTM's size, so no caveat is left to state
    assert "more parameters than its left-to-right control" not in limits
    assert "bilstm − size-matched lstm, bits per blank: -1.100" in text


def test_a_gap_the_test_cannot_see_is_a_tie_and_the_limitations_say_why(plan, tmp_path):
    wide = fake_results(plan, spread=0.2)  # sd 0.2 per cell over 5 seeds
    text = report.render(wide, MACHINE, OPTIONS, {})
    got = verdicts(text)
    # bow 1.75 vs ffn_window 1.60: Welch p ≈ 0.27 before any correction
    assert got[CLAIMS["bow"]] == "tie" and got[CLAIMS["window"]] == "tie"
    assert "bow − ffn_window, bits/byte: +0.150 [-0.142, +0.442], p_Holm 0.270" in text
    # a clipped cell 1.55 against the unigram's 2.44: p 0.0006 alone, 12 times that after Holm over the
    # claim's own 15 tests (three provoked peaks, whose p is smaller, then twelve floors), not the table's 46
    assert "gain 3 clip 0.5 − unigram floor, bits/byte: -0.890 [-1.138, -0.642], p_Holm 0.007" in text
    assert got[CLAIMS["clip"]] == "supported"
    assert got[CLAIMS["bi"]] == "supported"  # 5.7 vs 6.9: t ≈ 9.5 survives the correction
    limits = text.split("## Limitations and the literature", 1)[1].split("\n## ", 1)[0]
    assert "**A bag of words loses order**: *tie* here" in limits
    assert "[-0.142, +0.442] includes 0" in limits
    assert "every finished text run stopped at its step cap (245 updates)" in limits
    assert "**A bidirectional RNN" not in limits  # it agrees: listed, not explained


def test_the_limitations_say_when_no_text_family_beats_the_bigram(plan):
    def limits(runs) -> str:
        text = report.render(runs, MACHINE, OPTIONS, {})
        return text.split("## Limitations and the literature", 1)[1].split("\n## ", 1)[0]

    assert "**Text budget.**" not in limits(fake_results(plan))  # the LSTM's 1.35 beats the bigram's 1.99
    undertrained = fake_results(plan)
    for r in undertrained:
        if r.experiment.group == "text":
            r.eval = {**r.eval, "bigram_bits_per_byte": 1.30}
    line = next(x for x in limits(undertrained).splitlines() if "**Text budget.**" in x)
    assert "No text family beats the add-one bigram at 500,000 training tokens" in line
    assert "(the best, lstm, 1.350 bits/byte against the bigram's 1.300)" in line


def explode_at(r: results.Result) -> tuple[float, float] | None:
    """(gain, clip) of an explosion result; None for every other group."""
    o = r.experiment.overrides
    return (o["model.recurrent_gain"], o["train.grad_clip"]) if r.experiment.group == "explode" else None


def test_a_diverged_experiment_is_an_outcome_and_the_explosions_control(plan, tmp_path):
    rows = fake_results(plan)
    for r in rows:
        at = explode_at(r)
        if at in ((2.0, 0.0), (4.0, 0.0)):
            r.max_grad_norm = 6.0  # as calm as gain 1: these gains did not explode
        if at == (3.0, 0.0) and r.experiment.seed != planning.SEED + 2:
            diverge(r)
    text = report.write(tmp_path, rows, MACHINE, OPTIONS).read_text()
    # the control: gain 3 exploded (4 of 5 seeds diverged), the others did not, and only gain 3 is judged
    assert "gain 3 10^6.5 ± 0.0 vs gain 1 10^0.7 ± 0.0 (p_Holm < 0.001), 4/5 diverged (exploded)" in text
    assert "gain 2 10^0.8 ± 0.0 vs gain 1 10^0.7 ± 0.0" in text and "0/5 diverged (did not explode)" in text
    assert "gain 2: unclipped 0/5 diverged, 1.900 ± 0.010 bits/byte (no explosion to fix)" in text
    assert verdicts(text)[CLAIMS["clip"]] == "supported"
    assert "fixed (finite, below the unigram floor 2.440 ± 0.000) by clip 0.25, 0.5, 1, 5" in text
    # the grid: gain rows × clip columns, seeds finite, mean test bits/byte, mean log10 peak norm
    assert "| gain | unclipped | clip 0.25 | clip 0.5 | clip 1 | clip 5 |" in text
    assert (
        "| 3 | 1/5 finite · 1.910 (n=1 of 5) · 10^6.5 ± 0.0 · 1.8 ± 0.4 spikes | 5/5 finite · 1.550 ± 0.010 "
        "· 10^6.3 ± 0.0 · 0.0 ± 0.0 spikes |" in text
    )
    assert "| 1 | 5/5 finite · 1.550 ± 0.010 · 10^0.7 ± 0.0 · 0.0 ± 0.0 spikes |" in text
    assert "(4 failed or diverged)" in text
    assert "| diverged | — | — | — | training diverged: the loss became nan at step 40 |" in text
    assert (tmp_path / "study" / "explosion.png").exists()


def test_clipping_reads_which_clip_values_fix_each_gain(plan):
    rows = fake_results(plan)
    for r in rows:
        at = explode_at(r)
        if at and at[0] > 1 and at[1] >= 1:
            r.eval["bits_per_byte"] += 1.59  # 3.14: finite, every seed, but above the unigram's 2.44
        if at == (4.0, 0.25) and r.experiment.seed == planning.SEED:
            diverge(r)  # one seed of five lost: not a fix
        if at == (4.0, 0.5):
            r.eval["bits_per_byte"] += 1.59
    text = report.render(rows, MACHINE, OPTIONS, {})
    # gains 2 and 3 are fixed by the small thresholds only; gain 4 by none: the claim holds in part
    assert verdicts(text)[CLAIMS["clip"]] == "partly supported"
    assert (
        "gain 3: unclipped 0/5 diverged, 1.900 ± 0.010 bits/byte; fixed (finite, below the unigram floor "
        "2.440 ± 0.000) by clip 0.25, 0.5;" in text
    )
    assert (
        "gain 4: unclipped 0/5 diverged, 1.900 ± 0.010 bits/byte; no clip value keeps every run finite and "
        "below the unigram floor 2.440 ± 0.000" in text
    )
    assert "gain 3 clip 5 − unigram floor, bits/byte: +0.700 [" in text  # seen above it: hidden, not fixed
    assert (
        "| 4 | 5/5 finite · 1.900 ± 0.010 · 10^6.5 ± 0.0 · 1.0 ± 0.0 spikes | 4/5 finite · 1.550 ± 0.012 "
        "(n=4 of 5) ·" in text
    )


def test_clipping_that_keeps_runs_finite_but_above_the_unigram_floor_fixed_nothing(plan):
    rows = fake_results(plan)
    for r in rows:
        at = explode_at(r)
        if at and at[0] > 1 and at[1] == 0:
            diverge(r)
        elif at and at[0] > 1:
            r.eval["bits_per_byte"] += 1.59  # 3.14: finite, every seed, but above the unigram's 2.44
    text = report.render(rows, MACHINE, OPTIONS, {})
    assert verdicts(text)[CLAIMS["clip"]] == "not supported"
    assert "gain 3: unclipped 5/5 diverged, — bits/byte; no clip value keeps every run finite" in text
    limits = text.split("## Limitations and the literature", 1)[1].split("\n## ", 1)[0]
    assert f"**{CLAIMS['clip']}**: *not supported* here; Pascanu, Mikolov & Bengio (2013)" in limits


def test_a_bilstm_that_only_beats_the_smaller_lstm_is_not_shown_to_use_the_future(plan):
    rows = fake_results(plan)
    for r in rows:
        if r.experiment.label == "lstm (size-matched)":
            r.eval["bits_per_blank"] -= 1.2  # 5.6: as big as the BiLSTM and better: the gain was size
    assert verdicts(report.render(rows, MACHINE, OPTIONS, {}))[CLAIMS["bi"]] == "not supported"


def test_claims_whose_control_fails_are_not_judged(plan):
    rows = fake_results(plan)
    for r in rows:
        e = r.experiment
        if e.group == "explode":
            r.max_grad_norm = 5.0  # no explosion: the test of the remedy has no disease
        if e.label == "irnn" and e.delay == min(OPTIONS.delays):
            r.eval["recall_accuracy"] = 0.13  # the IRNN did not learn even the shortest delay
            r.train.update(stopped_by="max_steps", steps=10_000)
        if e.label in ("bilstm", "lstm (left to right)"):
            r.eval["unigram_bits_per_blank"] = 5.0  # no better than the unigram: the test sees no context
    text = report.render(rows, MACHINE, OPTIONS, {})
    got = verdicts(text)
    assert got[CLAIMS["clip"]] == got[CLAIMS["irnn"]] == got[CLAIMS["bi"]] == "control failed"
    assert got[CLAIMS["gated"]] == "supported"
    limits = text.split("## Limitations and the literature", 1)[1].split("\n## ", 1)[0]
    assert f"**{CLAIMS['irnn']}**: *control failed* here; Le, Jaitly & Hinton (2015)" in limits
    assert "its positive control failed (irnn: 0/5 seeds solved delay 5" in limits
    assert "180 of 300 finished probe runs stopped at their budget" in limits  # the rest solved theirs


def test_the_limitations_say_whether_tuning_seeds_are_kept_apart(plan, monkeypatch):
    from seqlm.study import limitations

    text = report.render(fake_results(plan), MACHINE, OPTIONS, {})
    assert "Not tuned: every probe family trained at `PROBE_LR` (0.003)" in text
    assert "also a reported seed: the rate was chosen on runs the probe verdicts count" in text
    tuned = replace(OPTIONS, probe_lrs=(("gru", 0.01), ("rnn", 0.003)))
    text = report.render(fake_results(plan), MACHINE, tuned, {})
    assert "at the rate `seqlm study --tune` chose (gru 0.01, rnn 0.003) from 0.001, 0.003, 0.01" in text
    assert "with `base.seed` 2337, 2338; no reported seed is among them: tuning is kept apart" in text
    monkeypatch.setattr(limitations.tuning, "TUNING_SEEDS", (1338,))
    text = report.render(fake_results(plan), MACHINE, tuned, {})
    assert "1338 is also a reported seed, so tuning is not kept apart" in text


def test_long_range_verdicts_follow_the_recall(plan):
    rows = fake_results(plan)
    for r in rows:
        if r.experiment.label == "gru":
            r.eval["recall_accuracy"] = {5: 0.99}.get(r.experiment.delay, 0.12)  # no further than the rnn
    got = verdicts(report.render(rows, MACHINE, OPTIONS, {}))
    assert got[CLAIMS["gated"]] == "partly supported"


def test_the_figures_draw_every_seed_beside_the_cells_mean(plan, tmp_path, monkeypatch):
    from matplotlib.collections import PathCollection

    from seqlm.study import figures

    drawn = {}
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.setdefault(path.stem, fig.axes[0]))
    figures.draw(fake_results(plan, spread=0.05), tmp_path)

    def dots(ax) -> list:
        return [xy for c in ax.collections if isinstance(c, PathCollection) for xy in c.get_offsets()]

    probe_cells = {e.cell for e in plan if e.group == "probe"}
    recall = dots(drawn["copy_recall"])
    assert len(recall) == len(probe_cells) * OPTIONS.seeds
    assert len({tuple(xy) for xy in recall}) == len(recall)  # jittered: no seed hides another
    text_families = len(planning.TEXT_FAMILIES)
    resets = len(fake(plan[0], 0).ablation["rows"])
    assert len(dots(drawn["context_ablation"])) == text_families * resets * OPTIONS.seeds
    assert len(drawn["gradient_flow"].get_lines()) == 3 * OPTIONS.seeds  # rnn, lstm, gru: a line per seed


def test_one_seed_is_marked_provisional(quick_plan, tmp_path):
    rows = [fake(e, 0) for e in quick_plan]
    text = report.render(rows, MACHINE | {"wall_minutes": 12.0}, QUICK, {})
    # --quick has no gain-1 cell: the provocation is measured against the text tanh rnn
    assert "gain 3 unclipped − the text tanh rnn, log10 peak gradient norm: +5.8 (no test: one seed)" in text
    assert "One seed: no spread and no test (a difference counts by its sign alone), so every verdict" in text
    assert "bow − ffn_window, bits/byte: +0.150 (no test: one seed)" in text and "p_Holm" not in text
    assert "| lstm | 1/1 · 300 | 1/1 · 1,500 | 1/1 · 6,000 | passed | 100 |" in text
    assert "preset `quick`, estimated" in text and "(limit 20 min on 2 cores)" in text
    more = replace(QUICK, probe_steps=10_000)
    text = report.render(rows, MACHINE | {"wall_minutes": 12.0}, more, {})
    assert "preset `quick` with `--probe-steps 10000` (so not held to the preset's limit)" in text
    assert "limit 20 min" not in text


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


def test_a_lost_worker_is_replaced_by_asking_dvc_for_every_worker(monkeypatch):
    """DVC's `queue start -j N` starts the missing ones of workers 1 … N: asking for the number missing
    (1) beside a live worker 1 started none."""
    ran = []
    monkeypatch.setattr(queue, "run_locked", lambda command, paths, env=None: ran.append(command))
    status, workers = queue.parse_queue_status(QUEUE_STATUS)  # 1 of 2 workers, experiments queued
    since = queue._replace_lost_workers(None, status, workers, 2, None, grace_s=0.0)
    assert ran == [] and since is not None  # first seen short: wait out the grace
    assert queue._replace_lost_workers(None, status, workers, 2, since, grace_s=0.0) is None
    assert ran == [["dvc", "queue", "start", "-j", "2"]]


def test_an_experiment_missing_from_one_listing_is_not_failed_until_the_grace_passes(monkeypatch):
    clock = iter([0.0, 30.0, 45.0, 100.0, 200.0])
    monkeypatch.setattr(queue.time, "monotonic", lambda: next(clock))
    since: dict[str, float] = {}
    names = ["a", "b"]
    assert queue._with_absent(names, {"a": "Running"}, since, 60) == {"a": "Running", "b": "Running"}
    # seen in a study: a running experiment left out of one listing; it comes back, the clock restarts
    assert queue._with_absent(names, {"a": "Running", "b": "Running"}, since, 60)["b"] == "Running"
    assert queue._with_absent(names, {"a": "Success"}, since, 60)["b"] == "Running"  # missing since 45
    assert queue._with_absent(names, {"a": "Success"}, since, 60)["b"] == "Running"  # 55 s
    assert queue._with_absent(names, {"a": "Success"}, since, 60) == {"a": "Success", "b": "Failed"}
