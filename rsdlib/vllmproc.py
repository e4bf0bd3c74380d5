"""A vLLM engine in its own spawned process, safe under torchrun ranks (issue 28; evaluation, Section 4).

Under ``torchrun -m rsdlib.evaluate`` each rank has joined a gloo process group (``rsdlib.distributed``),
its environment names the launch (MASTER_ADDR, RANK, WORLD_SIZE, LOCAL_RANK, ...) and shows every GPU of
the stage. vLLM forks its engine core by default, and a forked child inherits the initialised group (and
would build its own world group over all ranks); a CUDA context made before ``CUDA_VISIBLE_DEVICES`` is
narrowed covers every GPU. So a rank never imports vLLM itself: ``EngineProcess`` starts a process from
the multiprocessing **spawn** context (a fresh interpreter: no inherited process group, no CUDA state),
whose environment (``engine_environment``) is fixed before it starts:

- ``CUDA_VISIBLE_DEVICES``: this rank's GPU only (entry ``LOCAL_RANK`` of the rank's list); a single
  process (no launch) keeps what it was given (tensor parallelism over several GPUs stays possible);
- ``VLLM_WORKER_MULTIPROC_METHOD=spawn`` (vLLM's own workers are spawned too) and
  ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (availability checks through NVML, no CUDA context);
- none of the launch's variables (``rsdlib.distributed.LAUNCH_ENV``): it never joins the torchrun group.

The child builds ``vllm.LLM(**llm_kwargs)`` and serves ``generate`` requests over a pipe (prompt token
ids and SamplingParams keywords in; token ids and finish reasons out, one message per call). The engine
lives as long as the ``EngineProcess`` (``close()``, also at exit), so one model's GPU memory is freed with
its process. ``tests/test_vllmproc.py`` checks all of this on CPU with a fake ``vllm`` package that
records what the engine's process sees.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import traceback
from typing import Iterator, Sequence

from rsdlib.distributed import LAUNCH_ENV, World


def engine_environment(world: World, env: dict | None = None) -> dict[str, str]:
    """The environment of a rank's engine process (see the module docstring): ``env`` (default: this
    process's) with the launch's variables removed and the GPU and vLLM settings fixed."""
    env = dict(os.environ if env is None else env)
    if world.world_size > 1:
        visible = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        env["CUDA_VISIBLE_DEVICES"] = visible[world.local_rank % len(visible)] if visible else str(world.local_rank)
    for key in LAUNCH_ENV:
        env.pop(key, None)
    env["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
    env["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    return env


@contextlib.contextmanager
def _process_environment(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` is ``env`` inside the block (a spawned child starts with the environment of that moment)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _serve(conn, llm_kwargs: dict, env: dict[str, str]) -> None:
    """The engine process: build the engine, then answer ("generate", requests, params) until ("close",)."""
    os.environ.clear()  # already so from the start; kept exact even if an import above changed something
    os.environ.update(env)
    try:
        import vllm

        llm = vllm.LLM(**llm_kwargs)
        conn.send(("ready",))
    except BaseException:  # noqa: BLE001 - reported to the rank, which raises it
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the rank died: nothing left to serve
            return
        if message[0] == "close":
            return
        try:
            _, requests, params, progress = message
            outputs = llm.generate(requests, [vllm.SamplingParams(**p) for p in params], use_tqdm=progress)
            conn.send(("result", [(list(o.outputs[0].token_ids), o.outputs[0].finish_reason) for o in outputs]))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class EngineProcessError(RuntimeError):
    """The engine process failed (its traceback is in the message) or died."""


class EngineProcess:
    """``vllm.LLM(**llm_kwargs)`` in a spawned process with ``engine_environment(world)``."""

    def __init__(self, llm_kwargs: dict, world: World | None = None):
        world = world or World.from_env()
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        env = engine_environment(world)
        # not daemonic: vLLM starts processes of its own, which a daemonic process may not
        self.process = ctx.Process(target=_serve, args=(child, dict(llm_kwargs), env), name="rsdlib-vllm-engine")
        with _process_environment(env):
            self.process.start()
        child.close()
        atexit.register(self.close)  # before multiprocessing joins its children at exit
        self._receive()  # ("ready",) once the engine is built

    def _receive(self):
        try:
            message = self._conn.recv()
        except EOFError:
            self.process.join(timeout=5)
            raise EngineProcessError(f"the vLLM engine process died (exit code {self.process.exitcode})") from None
        if message[0] == "error":
            self.close()
            raise EngineProcessError(f"the vLLM engine process failed:\n{message[1]}")
        return message

    def generate(self, requests: Sequence[dict], params: Sequence[dict], progress: bool = False) -> list[tuple]:
        """``llm.generate(requests, [SamplingParams(**p) ...])`` in the engine process: [(token ids, finish)]."""
        self._conn.send(("generate", list(requests), list(params), progress))
        return self._receive()[1]

    def close(self) -> None:
        """Stop the engine process (its GPU memory goes with it)."""
        if self.process.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("close",))
            self.process.join(timeout=60)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        with contextlib.suppress(OSError):
            self._conn.close()
        atexit.unregister(self.close)
