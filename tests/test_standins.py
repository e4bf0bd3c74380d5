"""Stand-ins of the paper's models (rsdlib.standins): real architectures, logit rows and tokenizers; scripted
steering."""

from __future__ import annotations

import json

import pytest

from rsdlib.standins import (
    R1_DISTILL_RENAMES,
    S1_THINK_END,
    STEERING_FILE,
    ScriptedSteering,
    standin_folder,
    standin_tokenizers_dir,
)

EXPECTED = {  # hub id -> (model class, logit rows, tokenizer size)
    "simplescaling/s1.1-7B": ("Qwen2ForCausalLM", 152_064, 151_665),
    "Qwen/Qwen3-0.6B": ("Qwen3ForCausalLM", 151_936, 151_669),
    "Qwen/Qwen3-1.7B": ("Qwen3ForCausalLM", 151_936, 151_669),
    "meta-llama/Llama-3.2-1B-Instruct": ("LlamaForCausalLM", 128_256, 128_256),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": ("LlamaForCausalLM", 128_256, 128_256),
    "Qwen/Qwen3-4B": ("Qwen3ForCausalLM", 151_936, 151_669),
    "google/gemma-3-1b-it": ("Gemma3ForCausalLM", 262_144, 262_145),
    "microsoft/Phi-4-mini-instruct": ("Phi3ForCausalLM", 200_064, 200_010),
    "microsoft/Phi-4-mini-reasoning": ("Phi3ForCausalLM", 200_064, 200_010),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("standins")


@pytest.mark.parametrize("hub_id", list(EXPECTED))
def test_standin_has_the_real_architecture_rows_and_tokenizer(root, hub_id):
    from rsdlib.models import load_model, logit_rows

    folder = standin_folder(hub_id, root=root)
    assert standin_folder(hub_id, root=root) == folder  # built once
    model, tok = load_model(str(folder), dtype="float32", device="cpu")
    cls, rows, size = EXPECTED[hub_id]
    assert type(model).__name__ == cls and logit_rows(model) == rows and len(tok) == size
    assert model.config.num_hidden_layers == 2 and any(folder.glob("*.safetensors"))
    assert isinstance(model.rsdlib_steer, ScriptedSteering)  # stand-ins only
    assert json.loads((folder / STEERING_FILE).read_text())["stands_in_for"] == hub_id
    if hub_id.startswith("deepseek-ai/"):
        assert {i: tok.convert_ids_to_tokens(i) for i in R1_DISTILL_RENAMES} == R1_DISTILL_RENAMES
        assert tok.eos_token == "<｜end▁of▁sentence｜>"
    if hub_id.startswith("Qwen/"):
        assert tok.convert_tokens_to_ids("</think>") == 151668


def test_the_paper_pair_bridge_has_the_student_only_thinking_ids(root):
    import rsdlib.standins as rp
    from rsdlib.models import load_pair

    old = rp.standin_folder
    rp.standin_folder = lambda hub_id: old(hub_id, root=root)
    try:
        pair = load_pair("standin:simplescaling/s1.1-7B", "standin:Qwen/Qwen3-0.6B", dtype="float32", device="cpu")
        assert sorted(pair.bridge.student_only) == [151665, 151666, 151667, 151668]
        assert pair.bridge.student_to_teacher([151668]) == [522, 26865, 29]  # </think> as the teacher spells it
        llama = load_pair("standin:deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
                          "standin:meta-llama/Llama-3.2-1B-Instruct", dtype="float32", device="cpu")
        assert not llama.bridge.is_identity  # renamed special tokens
    finally:
        rp.standin_folder = old


def test_scripted_steering_writes_a_correct_solution_in_the_models_own_format(root, monkeypatch):
    from transformers import AutoTokenizer


    tok = AutoTokenizer.from_pretrained(standin_folder("simplescaling/s1.1-7B", root=root))
    steer = ScriptedSteering(tok, {"think_end": S1_THINK_END, "bias": 11.0, "known_share": 1.0})
    steer._golds = {"What is 6 times 7?": "42"}
    prompt = tok("<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n",
                 add_special_tokens=False)["input_ids"]
    generated = []
    for _ in range(60):
        target = steer.target(prompt, generated)
        generated.append(target)
        if target == steer.turn_end:
            break
    text = tok.decode(generated, skip_special_tokens=False)
    assert text == (ScriptedSteering.THINKING + "\n" + S1_THINK_END + " The final answer is $\\boxed{42}$.<|im_end|>")
    # off script (a random token), it closes the thinking and still answers
    off = tok("Let me go", add_special_tokens=False)["input_ids"] + [1234]
    for _ in range(40):
        target = steer.target(prompt, off)
        off.append(target)
        if target == steer.turn_end:
            break
    answer = " The final answer is $\\boxed{42}$.<|im_end|>"
    assert tok.decode(off, skip_special_tokens=False).endswith(S1_THINK_END + answer)
    other = tok("<|im_start|>user\nAn unknown question?<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert steer.target(other, []) is None  # not steered: a problem the script does not know


def test_missing_tokenizer_folder_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RSDLIB_STANDIN_TOKENIZERS", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="RSDLIB_STANDIN_TOKENIZERS"):
        standin_tokenizers_dir()


def test_a_fine_tuned_standin_keeps_its_steering(tmp_path, root):
    from rsdlib.standins import carry_steering

    trained = tmp_path / "final"
    trained.mkdir()
    assert carry_steering(standin_folder("Qwen/Qwen3-0.6B", root=root), trained)
    assert (trained / STEERING_FILE).is_file()
    real = tmp_path / "real"
    real.mkdir()
    assert not carry_steering(real, tmp_path / "x") and not (tmp_path / "x").exists()
