"""rsdlib.config: unknown keys refused, coercion of loose YAML, stable and value-sensitive hashes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _config_example import Example, Inner

from rsdlib.config import (
    config_hash,
    config_to_dict,
    load_yaml_config,
    save_config,
    stored_config_matches,
)


def test_unknown_keys_refused_with_both_lists(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nstepz: 3\nlr: 0.1\n")
    with pytest.raises(ValueError) as err:
        load_yaml_config(Example, path)
    msg = str(err.value)
    assert "lr, stepz" in msg  # every unknown key, sorted
    assert "known keys: ids, inner, name, rate, steps" in msg
    with pytest.raises(ValueError, match="unknown Example key"):
        load_yaml_config(Example, {}, bogus=1)  # overrides are checked too
    with pytest.raises(ValueError, match="unknown Inner key"):
        load_yaml_config(Example, {"inner": {"dept": 3}})


def test_load_coerces_loose_yaml_and_applies_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rate: 1e-4\nids: [3, 4, 5]\ninner: {depth: 7}\nsteps: 3\n")
    cfg = load_yaml_config(Example, path, steps=4)
    assert cfg.rate == 1e-4 and isinstance(cfg.rate, float)  # PyYAML reads 1e-4 as a str
    assert cfg.ids == (3, 4, 5)
    assert cfg.inner == Inner(depth=7)
    assert cfg.steps == 4  # the override wins
    with pytest.raises(ValueError, match="steps must be >= 0"):
        load_yaml_config(Example, {"steps": -1})
    with pytest.raises(ValueError, match="expected a number"):
        load_yaml_config(Example, {"rate": "fast"})
    assert load_yaml_config(Example) == Example()


def test_hash_stable_and_sensitive():
    a = Example()
    assert config_hash(a) == config_hash(Example())
    assert len(config_hash(a)) == 12
    assert config_hash(a) != config_hash(Example(steps=11))
    assert config_hash(a) != config_hash(Example(rate=2e-5))
    assert config_hash(a) != config_hash(Example(inner=Inner(depth=3)))
    assert config_hash(a) != config_hash(Example(ids=(2, 1)))
    # independent of key order and of tuple-vs-list, equal to the hash of its dict
    assert config_hash(config_to_dict(a)) == config_hash(a)
    assert config_hash(dict(reversed(list(config_to_dict(a).items())))) == config_hash(a)
    assert config_hash(Example(name="x"), exclude=["name"]) == config_hash(a, exclude=["name"])


def test_hash_stable_across_processes():
    code = (
        "from tests._config_example import Example; from rsdlib.config import config_hash; "
        "print(config_hash(Example()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == config_hash(Example())


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_save_roundtrip_and_match(tmp_path, suffix):
    cfg = Example(name="run", rate=3e-5, ids=(9,), inner=Inner(5))
    path = save_config(cfg, tmp_path / "sub" / f"config{suffix}")
    if suffix == ".json":
        assert json.loads(path.read_text())["ids"] == [9]
    assert load_yaml_config(Example, path) == cfg
    assert stored_config_matches(cfg, path)
    assert not stored_config_matches(Example(), path)
    assert not stored_config_matches(cfg, tmp_path / "missing.json")


# ------------------------------------------------------------------------------ sampling settings (issue 17)
@pytest.mark.parametrize("key, value", [
    ("threshold", float("nan")), ("threshold", "abc"), ("threshold", -0.1), ("threshold", float("inf")),
    ("temperature", float("nan")), ("temperature", -1.0), ("temperature", "0.7"), ("top_p", 0.0),
    ("top_p", float("nan")), ("max_new_tokens", 2.5), ("trials", True),
])
def test_bad_sampling_settings_are_refused_naming_the_key(key, value):
    from rsdlib.decoding import DecodingConfig

    with pytest.raises(ValueError, match=rf"DecodingConfig\.{key} must be"):
        DecodingConfig(**{key: value})


def test_temperature_zero_is_greedy_for_one_model_only():
    from rsdlib.decoding import DecodingConfig

    for mode in ("rsd", "skd"):
        with pytest.raises(ValueError, match="temperature 0 .greedy. is refused"):
            DecodingConfig(mode=mode, temperature=0.0, threshold_on="tempered")
    DecodingConfig(mode="student", temperature=0.0)  # greedy single-model sampling stays available
    DecodingConfig(mode="rsd", temperature=0.0)  # the raw threshold (the default, issue 30) stays meaningful
    assert DecodingConfig(mode="rsd", threshold=1.5).threshold == 1.5  # tau > 1: student sampling (field notes s.5)


def test_bad_setting_in_a_file_names_the_file_and_key(tmp_path):
    from rsdlib.evaluate import EvalConfig
    from rsdlib.traces import TraceJobConfig

    path = tmp_path / "job.yaml"
    cases = [  # (file text, config class, the error after "<path>: ")
        ("method: rsd\ndecoding: {mode: rsd, threshold: .nan}\n", TraceJobConfig,
         r"DecodingConfig\.threshold must be a finite number >= 0, got nan"),
        ("method: rsd\ndecoding: {mode: rsd, threshold: abc}\n", TraceJobConfig, r"DecodingConfig\.threshold.*'abc'"),
        ("samples_per_problem: 0\n", TraceJobConfig, r"TraceJobConfig\.samples_per_problem must be an integer >= 1"),
        ("temperature: .nan\n", EvalConfig, r"EvalConfig\.temperature must be a finite number"),
    ]
    for text, config_class, error in cases:
        path.write_text(text)
        with pytest.raises(ValueError, match=rf"{path}: {error}"):
            config_class.from_yaml(path)
