"""Downstream evaluation with lm-evaluation-harness (`lm-eval`, the `eval` extra).

`ComposerLM` is an lm-eval model registered as "composer": it loads a folder written by
`composer-export` (composer/evals/export.py) and implements the three request types:

- loglikelihood: the continuation's summed log-probability and whether greedy decoding would
  produce it; context and continuation are scored in one forward pass, the context cut on the
  left to fit `max_length`;
- loglikelihood_rolling: a document's log-probability after EOS, in windows of `max_length`
  predictions, each token predicted once, the last window with a full context (lm-eval's rule);
- generate_until: greedy decoding with the model's per-layer state (KV cache, SSM state), stopped
  at EOS, at `max_gen_toks` or at the first stop string, which is cut off.

Scored windows are batched longest first and padded on the right (every primitive is causal, so
padding never reaches a scored position); logits are computed at scored positions only.

`composer-eval MODEL_DIR` runs the Composer paper's suite (ARC-Easy, ARC-Challenge, HellaSwag,
WinoGrande, SciQ, PIQA) or `--tasks`, local task YAMLs with `--include-path`; a task whose dataset
cannot be reached is reported in one line and the rest go on. From Python, importing this module
registers the model: `lm_eval.simple_evaluate(model="composer", model_args="pretrained=DIR")`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from composer.errors import ComposerError

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError:  # the `eval` extra is absent: ComposerLM says so when built, composer-eval in one line
    TemplateLM = object  # type: ignore[assignment,misc]
    register_model = None

PAPER_SUITE = ("arc_easy", "arc_challenge", "hellaswag", "winogrande", "sciq", "piqa")
DEFAULT_MAX_LENGTH = 2048  # when the export does not record the context length it was trained at
_INSTALL_HINT = "pip install 'composer-hybrid[eval]' (or: pip install 'lm-eval>=0.4')"


class ComposerLM(TemplateLM):  # type: ignore[misc,valid-type]
    """An exported composer model behind lm-eval's LM interface."""

    backend = "causal"

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        batch_size: int | str | None = 16,
        max_batch_size: int | None = None,  # lm-eval passes it; batches here have a fixed size
        max_length: int | None = None,
        max_gen_toks: int = 256,
    ) -> None:
        if register_model is None:
            raise ComposerError(f"ComposerLM needs lm-eval: {_INSTALL_HINT}")
        super().__init__()
        from composer.evals.export import load_pretrained, read_config

        config = read_config(pretrained)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, tokenizer = load_pretrained(pretrained, device=device)
        if tokenizer is None:
            raise ComposerError(f"{pretrained} reads token ids, not text (a proxy trained on a synthetic task); "
                                f"downstream evaluation needs a model trained on text with a tokenizer")
        self.tokenizer = tokenizer
        self._device = torch.device(device)
        self.pretrained = str(pretrained)
        self.pattern = config["pattern"]
        self._max_length = int(max_length or config.get("max_length") or DEFAULT_MAX_LENGTH)
        self.batch_size = _batch_size(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        if self._max_length < 2 or self.max_gen_toks < 1:
            raise ComposerError(f"max_length must be >= 2 and max_gen_toks >= 1, got {self._max_length} and {self.max_gen_toks}")

    # ---- what TemplateLM needs -------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.identity

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: Iterable[int]) -> str:
        return self.tokenizer.decode(tokens)

    def get_model_info(self) -> dict[str, Any]:
        """Recorded in lm-eval's results["config"]."""
        return {"pattern": self.pattern, "model_dir": self.pretrained, "max_length": self.max_length,
                "n_params": sum(p.numel() for p in self.model.parameters())}

    # ---- scoring ---------------------------------------------------------------------------

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not sys.stderr.isatty())

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        windows, owners = [], []
        for i, (_, context, continuation) in enumerate(requests):
            for window in score_windows(context + continuation, len(continuation), max_length=self.max_length):
                windows.append(window)
                owners.append(i)
        logprob = [0.0] * len(requests)
        greedy = [True] * len(requests)
        for owner, (lp, is_greedy) in zip(owners, self._score(windows, disable_tqdm=disable_tqdm)):
            logprob[owner] += lp
            greedy[owner] = greedy[owner] and is_greedy
        results = list(zip(logprob, greedy))
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for i, request in enumerate(requests):
            (text,) = request.args
            tokens = [self.eot_token_id, *self.tok_encode(text)]  # every token predicted once, after EOS
            for window in score_windows(tokens, len(tokens) - 1, max_length=self.max_length):
                windows.append(window)
                owners.append(i)
        totals = [0.0] * len(requests)
        for owner, (lp, _) in zip(owners, self._score(windows, disable_tqdm=disable_tqdm)):
            totals[owner] += lp
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    @torch.no_grad()
    def _score(self, windows: list[tuple[list[int], list[int]]], *, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(summed log-probability, all greedy) of each window's targets, which the last len(targets)
        positions of its inputs predict."""
        from tqdm.auto import tqdm

        out: list[tuple[float, bool] | None] = [None] * len(windows)
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))  # longest first: little padding
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="scoring", disable=disable_tqdm or not sys.stderr.isatty()):
            width = len(windows[batch[0]][0])
            tokens = torch.zeros(len(batch), width, dtype=torch.long)
            for row, i in enumerate(batch):
                inputs = windows[i][0]
                tokens[row, : len(inputs)] = torch.tensor(inputs)
            hidden = self.model.hidden(tokens.to(self.device))  # (B, T, D)
            for row, i in enumerate(batch):
                inputs, targets = windows[i]
                h = hidden[row, len(inputs) - len(targets) : len(inputs)]  # (n, D): the scored positions
                logprobs = torch.log_softmax(self.model.logits(h).float(), dim=-1)  # (n, V)
                target = torch.tensor(targets, device=logprobs.device)
                picked = logprobs.gather(-1, target[:, None]).squeeze(-1)  # (n,)
                out[i] = (picked.sum().item(), bool((logprobs.argmax(-1) == target).all()))
        return out  # type: ignore[return-value]

    # ---- generation ------------------------------------------------------------------------

    @torch.no_grad()
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from tqdm.auto import tqdm

        results = []
        for request in tqdm(requests, desc="generating", disable=disable_tqdm or not sys.stderr.isatty()):
            context, gen_kwargs = request.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0:
                raise ComposerError(f"generation asks for sampling ({kwargs}); composer's harness decodes greedily only")
            text = self.generate_greedy(context, until=until, max_new_tokens=max_new)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            results.append(text)
        return results

    def generate_greedy(self, context: str, *, until: list[str], max_new_tokens: int) -> str:
        """Greedy continuation of `context`, stopped at EOS, after max_new_tokens, or before the first
        stop string. The prompt is cut on the left so that prompt and continuation fit max_length,
        but keeps at least half of it (lm-eval's 256-token default would leave short windows empty)."""
        stops = [s for s in until if s]  # "" would stop at once (the byte tokenizer decodes EOS as "")
        prompt = self.tok_encode(context) or [self.eot_token_id]
        prompt = prompt[-max(self.max_length - max_new_tokens, self.max_length // 2) :]
        model = self.model
        states = model.allocate_states(batch_size=1, max_len=len(prompt) + max_new_tokens)
        logits = model(torch.tensor([prompt], device=self.device), states)[:, -1]  # (1, V)
        generated: list[int] = []
        text = ""
        for _ in range(max_new_tokens):
            nxt = int(logits.argmax(-1))
            if nxt == self.eot_token_id:
                break
            generated.append(nxt)
            text = self.tok_decode(generated)
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                return text[:cut]
            if len(generated) < max_new_tokens:
                logits = model(torch.tensor([[nxt]], device=self.device), states)[:, -1]
        return text


if register_model is not None and __name__ != "__main__":  # `python -m` registers the importable copy below
    register_model("composer")(ComposerLM)


def score_windows(tokens: list[int], n_scored: int, *, max_length: int) -> list[tuple[list[int], list[int]]]:
    """Windows (inputs, targets) that score the last `n_scored` tokens, each exactly once: targets
    are predicted by the last len(targets) positions of inputs, at most max_length inputs each,
    and every window has as much context as fits (the first of a long stretch starts at its first
    target, the last one is full). `tokens[0]` is never scored: it is the first context."""
    n = len(tokens)
    if not 0 <= n_scored < n:
        raise ValueError(f"can score 0 to {n - 1} of {n} tokens, asked for {n_scored}")
    windows = []
    start = n - n_scored
    while start < n:
        stop = min(start + max_length, n)
        first = max(0, stop - 1 - max_length)
        windows.append((tokens[first : stop - 1], tokens[start:stop]))
        start = stop
    return windows


def _batch_size(value: int | str | None) -> int:
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return 16
    try:
        size = int(value)
    except ValueError:
        raise ComposerError(f"batch_size must be a positive integer, got {value!r}") from None
    if size < 1:
        raise ComposerError(f"batch_size must be a positive integer, got {value!r}")
    return size


# ---- composer-eval ---------------------------------------------------------------------------

def evaluate_tasks(
    model_dir: str | Path,
    *,
    tasks: list[str],
    include_paths: list[str] | None = None,
    limit: int | float | None = None,
    batch_size: int = 16,
    device: str | None = None,
    max_length: int | None = None,
    num_fewshot: int | None = None,
    report: Any = print,
) -> dict[str, Any]:
    """Run lm-eval's `simple_evaluate` on `tasks`; a task whose dataset cannot be reached is reported
    (`report(line)`) and left out. Returns lm-eval's results plus "skipped" {task: reason}."""
    if register_model is None:
        raise ComposerError(f"composer-eval needs lm-eval: {_INSTALL_HINT}")
    from lm_eval import simple_evaluate

    from composer.evals.export import read_config

    if read_config(model_dir).get("tokenizer") is None:  # a bad folder fails here, before task indexing
        raise ComposerError(f"{model_dir} reads token ids, not text (a proxy trained on a synthetic task); "
                            f"downstream evaluation needs a model trained on text with a tokenizer")
    for path in include_paths or []:
        if not Path(path).is_dir():
            raise ComposerError(f"--include-path {path}: not a folder")
    manager = _task_manager(tasks, include_paths or [])
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise ComposerError(f"unknown task {unknown[0]!r} (lm-eval knows none by that name"
                            + ("" if include_paths else "; local task YAMLs need --include-path") + ")")
    lm = ComposerLM(pretrained=str(model_dir), device=device, batch_size=batch_size, max_length=max_length)
    loaded, skipped = [], {}
    for name in tasks:
        try:
            loaded.extend(_load_task(manager, name))
        except OSError as exc:  # ConnectionError, a missing data file, the hub's offline errors
            reason = " ".join(str(exc).split()) or type(exc).__name__
            skipped[name] = reason
            report(f"{name}: skipped, its dataset cannot be reached ({reason})")
    if not loaded:
        return {"results": {}, "skipped": skipped}
    results = simple_evaluate(model=lm, tasks=loaded, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                              log_samples=False, batch_size=batch_size, device=str(lm.device))
    return {**(results or {}), "skipped": skipped}


def _task_manager(tasks: list[str], include_paths: list[str]) -> Any:
    """lm-eval's task index: local YAMLs only when they hold every task asked for (indexing lm-eval's
    thousands of built-in tasks takes seconds), else built-in tasks plus local ones."""
    from lm_eval.tasks import TaskManager

    if include_paths:
        local = TaskManager(include_path=include_paths, include_defaults=False)
        if all(local.match_tasks([t]) for t in tasks):
            return local
    return TaskManager(include_path=include_paths or None)


def _load_task(manager: Any, name: str) -> list[Any]:
    """The Task, Group or tagged Tasks `name` stands for, built (which fetches the dataset)."""
    loaded = manager.load([name])
    if name in loaded["groups"]:
        return [loaded["groups"][name]]
    return list(loaded["tasks"].values())


def format_table(results: dict[str, Any]) -> str:
    """task, metric, value, stderr: one line per metric of every task and group."""
    rows = []
    for section in ("results", "groups"):
        for task, metrics in sorted((results.get(section) or {}).items()):
            if section == "groups" and task in (results.get("results") or {}):
                continue
            for key, value in metrics.items():
                if "," not in key or "_stderr," in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                metric, _, flt = key.partition(",")
                stderr_value = metrics.get(f"{metric}_stderr,{flt}")
                name = metric if flt in ("", "none") else f"{metric} ({flt})"
                stderr = f"{stderr_value:.4f}" if isinstance(stderr_value, (int, float)) else "-"
                rows.append((task, name, f"{value:.4f}", stderr))
    header = ("task", "metric", "value", "stderr")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))).rstrip()
                     for r in [header, *rows])
