"""rsdlib.train: label masks against hand-built ones, over-long refusal, loss decrease, resume, LoRA merge.

All on a tiny random Qwen2 model and a byte-level tokenizer (tests/_tiny.py); no network.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from _tiny import StopAt, save_tiny_pair, tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM

from rsdlib.config import save_config
from rsdlib.train import (
    IGNORE_INDEX,
    PadCollator,
    TrainConfig,
    build_dataset,
    build_features,
    checkpointing_arguments,
    choose_pad_token,
    main,
    text_example_to_ids,
    train,
)

M = IGNORE_INDEX
EOT, PAD = 258, 259  # <|im_end|> and <|fim_pad|> in the tiny tokenizer


@pytest.fixture(scope="module")
def tok():
    t = tiny_tokenizer()
    assert (t.convert_tokens_to_ids("<|im_end|>"), t.convert_tokens_to_ids("<|fim_pad|>")) == (EOT, PAD)
    return t


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def make_examples(tok, n=8, prefix_every=2):
    """n small examples: even ones full (end with <|im_end|>), the others 5-token prefixes."""
    out = []
    for i in range(n):
        prompt = ids(tok, f"<|im_start|>user\nq{i}<|im_end|>\n<|im_start|>assistant\n")
        answer = ids(tok, f"the answer is {7 * i} ok")
        full = i % prefix_every == 0
        out.append({
            "id": f"e{i}", "prompt_ids": prompt, "completion_ids": answer + [EOT] if full else answer[:5],
            "kind": "full" if full else "prefix", "source": "test",
        })
    return out


def tiny_config(tmp_path, **kw):
    base = dict(model="", output_dir=str(tmp_path / "run"), epochs=3, learning_rate=3e-3, global_batch_size=4,
                micro_batch_size=2, block_size=64, save_strategy="no", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def losses_and_lrs(log):
    steps = [r for r in log if "loss" in r]
    return [r["step"] for r in steps], [r["loss"] for r in steps], [r["learning_rate"] for r in steps]


# ------------------------------------------------------------------------------ label masks
def test_label_masks_equal_hand_built(tok):
    prompt = [257, 117, 10, 104, 258, 10, 257, 97, 10]  # <|im_start|>u\nh<|im_end|>\n<|im_start|>a\n
    full = {"id": "f", "prompt_ids": prompt, "completion_ids": [50, 51, 52, EOT], "kind": "full", "source": "t"}
    prefix = {"id": "p", "prompt_ids": prompt[:6], "completion_ids": [60, 61], "kind": "prefix", "source": "t"}
    f = build_features(full, PAD, EOT, block_size=64)
    p = build_features(prefix, PAD, EOT, block_size=64)
    assert f["input_ids"] == [257, 117, 10, 104, 258, 10, 257, 97, 10, 50, 51, 52, 258]
    assert f["labels"] == [M, M, M, M, M, M, M, M, M, 50, 51, 52, 258]  # end of turn supervised
    assert p["input_ids"] == [257, 117, 10, 104, 258, 10, 60, 61]
    assert p["labels"] == [M, M, M, M, M, M, 60, 61]  # nothing after the prefix
    batch = PadCollator(PAD)([f, p])
    assert batch["input_ids"].tolist() == [
        [257, 117, 10, 104, 258, 10, 257, 97, 10, 50, 51, 52, 258],
        [257, 117, 10, 104, 258, 10, 60, 61, PAD, PAD, PAD, PAD, PAD],
    ]
    assert batch["labels"].tolist() == [
        [M, M, M, M, M, M, M, M, M, 50, 51, 52, 258],
        [M, M, M, M, M, M, 60, 61, M, M, M, M, M],  # padding never supervised
    ]
    assert batch["attention_mask"].tolist() == [[1] * 13, [1] * 8 + [0] * 5]


def test_text_examples_rendered_with_chat_template(tok):
    prompt = ids(tok, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    answer = ids(tok, "<think>\nadd</think> 2")
    ex = {"id": "t", "prompt_text": "What is 1+1?", "completion_text": "<think>\nadd</think> 2", "system": "S"}
    full = text_example_to_ids(tok, {**ex, "kind": "full"})
    # the template's trailing \n dropped
    assert full["prompt_ids"] == prompt and full["completion_ids"] == answer + [EOT]
    pre = text_example_to_ids(tok, {**ex, "kind": "prefix"})
    assert pre["prompt_ids"] == prompt and pre["completion_ids"] == answer  # no end of turn
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 1+1?"},
            {"role": "assistant", "content": "<think>\nadd</think> 2"}]
    assert text_example_to_ids(tok, {"id": "t", "messages": msgs, "kind": "full"}) == {**full, "source": "text"}
    feats = build_features(full, PAD, EOT, 256)
    assert feats["labels"] == [M] * len(prompt) + answer + [EOT]


def test_malformed_examples_and_pad_refused(tok):
    good = {"id": "x", "prompt_ids": [1, 2], "completion_ids": [3, EOT], "kind": "full", "source": "t"}
    with pytest.raises(ValueError, match="must end with the end-of-turn"):
        build_features({**good, "completion_ids": [3, 4]}, PAD, EOT, 64)
    with pytest.raises(ValueError, match="prefix example must not contain the end-of-turn"):
        build_features({**good, "kind": "prefix"}, PAD, EOT, 64)
    with pytest.raises(ValueError, match="pad id .* equals the end-of-turn"):
        build_features(good, EOT, EOT, 64)
    with pytest.raises(ValueError, match="contains the pad token"):
        build_features({**good, "prompt_ids": [PAD, 2]}, PAD, EOT, 64)
    with pytest.raises(ValueError, match="kind must be one of"):
        build_features({**good, "kind": "partial"}, PAD, EOT, 64)


def test_pad_token_choice():
    t = tiny_tokenizer()
    assert choose_pad_token(t, EOT) == ("<|fim_pad|>", PAD, False)
    assert t.pad_token == "<|fim_pad|>"
    bare = tiny_tokenizer(with_fim_pad=False)  # pad <|endoftext|> is not taken: only never-used tokens
    token, pid, added = choose_pad_token(bare, bare.convert_tokens_to_ids("<|im_end|>"))
    assert token == "<|rsd_pad|>" and added and pid == len(bare) - 1
    assert pid != bare.convert_tokens_to_ids("<|im_end|>") and bare.pad_token_id == pid
    with pytest.raises(ValueError, match="pad_token != eot_token"):
        TrainConfig(pad_token="<|im_end|>")


# ------------------------------------------------------------------------------ over-long examples
def test_overlong_refused_with_list_or_truncated(tok, tmp_path):
    exs = make_examples(tok, n=4)
    exs[1] = {**exs[1], "completion_ids": [40] * 70}  # prefix, 70 + prompt tokens
    exs[2] = {**exs[2], "completion_ids": [41] * 90 + [EOT]}  # full
    lengths = {e["id"]: len(e["prompt_ids"]) + len(e["completion_ids"]) for e in exs}
    with pytest.raises(ValueError) as err:
        build_dataset(exs, PAD, EOT, block_size=64)
    msg = str(err.value)
    assert "2 example(s) longer than block_size=64" in msg
    assert f"e2 ({lengths['e2']} tokens), e1 ({lengths['e1']} tokens)" in msg  # longest first
    assert "e0" not in msg and "truncate: true" in msg
    with pytest.raises(ValueError, match="2 example"):  # train refuses before loading any model
        train(tiny_config(tmp_path), exs, tokenizer=tok, model=object())

    dataset, info = build_dataset(exs, PAD, EOT, block_size=64, truncate=True)
    assert info["truncated"] == 2 and info["examples"] == 4
    cut = dataset[2]
    assert len(cut["input_ids"]) == 64 and EOT not in cut["labels"]  # a cut full example cannot learn to stop
    assert cut["labels"][: len(exs[2]["prompt_ids"])] == [M] * len(exs[2]["prompt_ids"])
    train(tiny_config(tmp_path, truncate=True, max_steps=1), exs, tokenizer=tok, model=tiny_model(tok))
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["truncated"] == 2


# ------------------------------------------------------------------------------ training
def test_loss_decreases_and_final_model_loads(tok, tmp_path):
    cfg = tiny_config(tmp_path, epochs=12)
    final = train(cfg, make_examples(tok), tokenizer=tok, model=tiny_model(tok))
    steps, losses, lrs = losses_and_lrs(json.loads((tmp_path / "run" / "train_log.json").read_text()))
    assert steps == list(range(1, 25))  # 8 examples / batch 4 = 2 steps per epoch
    assert losses[-1] < 0.8 * losses[0], losses  # 5.8 -> 3.9 nats here
    assert max(lrs) == pytest.approx(3e-3) and lrs[-1] < 0.05 * 3e-3  # warmup then cosine to ~0
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["epochs"] == 12
    assert (final / "model.safetensors").is_file() and (final / "train_config.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(final)
    assert reloaded.config.pad_token_id == PAD
    # rerunning the finished run does nothing (a model object that cannot train proves it)
    assert train(cfg, make_examples(tok), tokenizer=tok, model=object()) == final
    with pytest.raises(AttributeError):  # another dataset in the same folder is not "already trained"
        train(cfg, make_examples(tok)[:4], tokenizer=tok, model=object())
    # the reloaded model fits the data better than the initial one
    batch = PadCollator(PAD)([build_features(make_examples(tok)[0], PAD, EOT, 64)])
    with torch.no_grad():
        assert reloaded(**batch).loss < tiny_model(tok)(**batch).loss


def test_deterministic_under_seed(tok, tmp_path):
    runs = []
    for name in ("a", "b"):
        train(tiny_config(tmp_path, output_dir=str(tmp_path / name), max_steps=3), make_examples(tok),
              tokenizer=tok, model=tiny_model(tok))
        runs.append(losses_and_lrs(json.loads((tmp_path / name / "train_log.json").read_text())))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_continues_schedule(tok, tmp_path, lora):
    kw = dict(epochs=3, save_strategy="steps", save_steps=1, save_total_limit=2, lora=lora, lora_r=4, lora_dropout=0.0)
    train(tiny_config(tmp_path, output_dir=str(tmp_path / "ref"), **kw), make_examples(tok), tokenizer=tok,
          model=tiny_model(tok))
    ref_steps, ref_losses, ref_lrs = losses_and_lrs(json.loads((tmp_path / "ref" / "train_log.json").read_text()))

    cfg = tiny_config(tmp_path, output_dir=str(tmp_path / "cut"), **kw)
    train(cfg, make_examples(tok), tokenizer=tok, model=tiny_model(tok), callbacks=[StopAt(3)])
    assert not (tmp_path / "cut" / "final").exists()
    assert sorted(p.name for p in (tmp_path / "cut").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    with pytest.raises(ValueError, match="another config .*learning_rate"):
        train(tiny_config(tmp_path, output_dir=str(tmp_path / "cut"), learning_rate=1e-3, **kw), make_examples(tok),
              tokenizer=tok, model=tiny_model(tok))

    train(cfg, make_examples(tok), tokenizer=tok, model=tiny_model(tok))  # same command again: resumes
    steps, losses, lrs = losses_and_lrs(json.loads((tmp_path / "cut" / "train_log.json").read_text()))
    summary = json.loads((tmp_path / "cut" / "train_summary.json").read_text())
    assert steps == ref_steps == list(range(1, 7)) and summary["global_step"] == 6
    assert lrs == pytest.approx(ref_lrs, rel=1e-12)  # the schedule continues at step 4, not from 0
    assert losses == pytest.approx(ref_losses, rel=1e-4)  # same data order and weights after resuming


def test_lora_merged_model_loads_back(tok, tmp_path):
    from peft import PeftModel

    base = save_tiny_pair(tmp_path / "base")
    cfg = tiny_config(tmp_path, model=str(base), lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                      learning_rate=1e-2, max_steps=4, gradient_checkpointing=True)
    final = train(cfg, make_examples(tok))  # tokenizer and model loaded from the folder
    assert not (final / "adapter_config.json").exists() and (final / "model.safetensors").is_file()
    assert (tmp_path / "run" / "final_adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(final)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
                                             tmp_path / "run" / "final_adapter")
    plain = AutoModelForCausalLM.from_pretrained(base)
    x = torch.tensor([ids(tok, "<|im_start|>user\nq1<|im_end|>\n")])
    with torch.no_grad():
        merged_logits, adapter_logits, base_logits = merged(x).logits, with_adapter(x).logits, plain(x).logits
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-5)  # merged == base + adapter
    assert not torch.allclose(merged_logits, base_logits, atol=1e-4)  # and training changed it


def test_cli_with_yaml_config(tok, tmp_path):
    base = save_tiny_pair(tmp_path / "base")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in make_examples(tok, n=4)))
    cfg_path = save_config(tiny_config(tmp_path, model=str(base)), tmp_path / "train.yaml")
    assert main(["--config", str(cfg_path), "--data", str(data), "max_steps=2", "learning_rate=1e-3",
                 "gradient_checkpointing=true"]) == 0
    stored = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert stored["max_steps"] == 2 and stored["learning_rate"] == 1e-3
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final").config.pad_token_id == PAD
    with pytest.raises(ValueError, match="unknown TrainConfig key"):
        main(["--config", str(cfg_path), "--data", str(data), "epoch=2"])


# ------------------------------------------------------------------------------ robustness (issue 17)
class Killed(BaseException):
    """Stands in for kill -9 in the middle of a checkpoint save."""


def test_kill_during_a_checkpoint_save_never_blocks_resumption(tok, tmp_path, monkeypatch, capsys):
    from transformers import Trainer

    kw = dict(epochs=3, save_strategy="steps", save_steps=2, save_total_limit=None)
    train(tiny_config(tmp_path, output_dir=str(tmp_path / "ref"), **kw), make_examples(tok), tokenizer=tok,
          model=tiny_model(tok))
    ref = losses_and_lrs(json.loads((tmp_path / "ref" / "train_log.json").read_text()))

    real_save_rng = Trainer._save_rng_state

    def killed_at_step_4(self, output_dir):  # model and optimizer of checkpoint-4 written, the rest not
        if self.state.global_step == 4:
            raise Killed()
        return real_save_rng(self, output_dir)

    cfg = tiny_config(tmp_path, output_dir=str(tmp_path / "cut"), **kw)
    monkeypatch.setattr(Trainer, "_save_rng_state", killed_at_step_4)
    with pytest.raises(Killed):
        train(cfg, make_examples(tok), tokenizer=tok, model=tiny_model(tok))
    monkeypatch.undo()
    run = tmp_path / "cut"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"], "the cut save is not in place"
    damaged = run / "checkpoint-5"  # what a kill under the old code left: a folder with 2 files
    damaged.mkdir()
    (damaged / "config.json").write_text("{}")
    (damaged / "model.safetensors").write_bytes(b"\0" * 10)
    capsys.readouterr()

    train(cfg, make_examples(tok), tokenizer=tok, model=tiny_model(tok))  # the same command: resumes
    err = capsys.readouterr().err
    assert f"ignoring the checkpoint {damaged}" in err and "rsdlib-checkpoint.json" in err
    assert f"resuming training from {run / 'checkpoint-2'}" in err
    assert (run / "incomplete" / "checkpoint-5" / "config.json").is_file()
    steps, losses, lrs = losses_and_lrs(json.loads((run / "train_log.json").read_text()))
    assert steps == ref[0] == list(range(1, 7))
    assert lrs == pytest.approx(ref[2], rel=1e-12) and losses == pytest.approx(ref[1], rel=1e-4)
    assert not any((run / ".checkpoint-staging").iterdir())


def test_a_second_training_of_one_folder_is_refused(tok, tmp_path):
    from rsdlib.store import RunConflictError, run_lock

    cfg = tiny_config(tmp_path, max_steps=1)
    with run_lock(tmp_path / "run"):  # another process training in this folder
        with pytest.raises(RunConflictError, match=rf"{tmp_path / 'run'} is being written by another process"):
            train(cfg, make_examples(tok), tokenizer=tok, model=tiny_model(tok))
    train(cfg, make_examples(tok), tokenizer=tok, model=tiny_model(tok))  # free again


def test_a_pad_token_inside_a_trace_does_not_refuse_the_dataset(tok, tmp_path):
    """The tiny tokenizer's <|fim_pad|> is a real vocabulary row: a sampled trace can contain it."""
    examples = make_examples(tok)
    examples[0]["completion_ids"] = [PAD] + examples[0]["completion_ids"]
    final = train(tiny_config(tmp_path, max_steps=2), examples, tokenizer=tiny_tokenizer(), model=tiny_model(tok))
    info = json.loads((tmp_path / "run" / "dataset_info.json").read_text())
    used = {t for e in examples for t in e["completion_ids"] + e["prompt_ids"]}
    assert info["pad_id"] != PAD and info["pad_id"] not in used
    assert info["pad_token"] == "<|rsd_pad|>"
    assert AutoModelForCausalLM.from_pretrained(final).config.pad_token_id == info["pad_id"]


def test_malformed_dataset_line_names_file_and_line(tok, tmp_path):
    data = tmp_path / "data.jsonl"
    good = [json.dumps(e) + "\n" for e in make_examples(tok, n=4)]
    data.write_text(good[0] + good[1] + '{"id": "x", "prompt_ids": [1,\n' + good[2])
    with pytest.raises(ValueError, match=rf"{data}, line 3: not valid JSON"):
        train(tiny_config(tmp_path, max_steps=1), data, tokenizer=tok, model=tiny_model(tok))


@dataclasses.dataclass
class _ArgsBefore523:  # TrainingArguments' checkpointing fields before transformers 5.23
    gradient_checkpointing: bool = False
    gradient_checkpointing_kwargs: dict | None = None


@dataclasses.dataclass
class _ArgsFrom523(_ArgsBefore523):  # 5.23 adds the new names (the old ones stay as aliases until v6)
    activation_checkpointing: bool | None = None
    activation_checkpointing_kwargs: dict | None = None


def test_checkpointing_keywords_follow_the_installed_transformers(tmp_path):
    """transformers < 5.23 has no `activation_checkpointing` keyword (TypeError): the old names are used there."""
    on = {"use_reentrant": False}
    assert checkpointing_arguments(_ArgsBefore523, True) == {"gradient_checkpointing": True,
                                                             "gradient_checkpointing_kwargs": on}
    assert checkpointing_arguments(_ArgsFrom523, True) == {"activation_checkpointing": True,
                                                           "activation_checkpointing_kwargs": on}
    assert checkpointing_arguments(_ArgsBefore523, False) == {"gradient_checkpointing": False,
                                                              "gradient_checkpointing_kwargs": None}
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none",
                             **checkpointing_arguments(TrainingArguments, True))  # the installed release
    assert args.gradient_checkpointing is True  # the old name is the new one's alias from 5.23 on
