"""`composer-bench` on the CPU at the tiny preset: the real command in a subprocess (its bench.json, its
table, its leaderboard record and the columns composer-leaderboard shows), the report's measured Pareto axis,
an exported model, the decode check failing in one line, and the one-line input errors. Timings are not
tested, only that every figure is there and positive."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from composer.apps import leaderboard as leaderboard_app
from composer.apps.bench import bench_from_config
from composer.apps.common import one_line
from composer.errors import ComposerError, ConfigError
from composer.evals.bench import TINY, BenchConfig, BenchError, check_decode, largest_batch
from composer.evals.export import save_pretrained
from composer.model import build_model
from scaling.presets import preset_model_config
from search.leaderboard import formats, html, records, store
from tests.conftest import cli_env

HYBRID = "*M-W-G-E"  # every primitive: attention, Mamba-2, MLP, sliding window, Gated DeltaNet, MoE
LLAMA = "*-*-"  # the tiny preset's reference: '*-' x 2
CONTEXTS = ("64", "128")
BENCH = {"contexts": [64, 128], "max_batch": 4, "train_batch": 2, "train_seq_len": 64, "train_steps": 2,
         "prefill_repeats": 1, "decode_steps": 4, "warmup": 1, "device": "cpu"}
ARGS = ["preset=tiny", *(f"bench.{k}={json.dumps(v).replace(' ', '')}" for k, v in BENCH.items() if k != "device"),
        "bench.device=cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


def bench(tmp_path: Path, *args: str, name: str = "run") -> subprocess.CompletedProcess:
    """composer-bench as a user runs it, writing into tmp_path/name and tmp_path/board.jsonl."""
    argv = [sys.executable, "-m", "composer.apps.bench", f"hydra.run.dir={tmp_path / name}",
            f"leaderboard={tmp_path / 'board.jsonl'}", *ARGS, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=cli_env())


def searched(pattern: str, role: str) -> dict:
    """The pattern as a search's leaderboard row (what composer-bench's figures join)."""
    return records.architecture_record(
        pattern, search="s1", strategy="random", role=role, aggregator="N0" if role == "aggregate" else None,
        task_scores={"recall": [0.9 if role == "aggregate" else 0.5]}, seeds=[0], proxy_d_model=32,
        proxy_vocab_size=32, seq_len=64, evaluator="mad")


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, dict]:
    tmp = tmp_path_factory.mktemp("bench")
    for pattern, role in ((HYBRID, "aggregate"), (LLAMA, "baseline"), ("M-M-", "candidate")):
        store.append(searched(pattern, role), tmp / "board.jsonl")
    proc = bench(tmp, f"pattern={HYBRID}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc, json.loads((tmp / "run" / "bench.json").read_text())


def test_every_figure_is_measured_for_the_pattern_and_its_llama_layout(measured):
    _, proc, out = measured
    assert (out["pattern"], out["reference_pattern"], out["size"], out["device"]) == (HYBRID, LLAMA, "tiny", "cpu")
    assert out["decode_graph"] is False and "CUDA" in out["decode_graph_reason"]  # no graphs off CUDA
    for role, pattern in (("model", HYBRID), ("llama", LLAMA)):
        r, figs = out["results"][role], out["figures"][role]
        assert r["pattern"] == pattern and r["check"]["passed"]
        assert r["check"]["relative"] <= r["check"]["tolerance"] == 1e-4  # fp32 on the CPU
        assert figs["train_tokens_per_s"] > 0 and figs["train_memory_bytes"] > 0 and figs["mfu"] is None  # no CPU peak
        for c in CONTEXTS:
            assert figs["prefill_tokens_per_s"][c] > 0 and figs["decode_b1_tokens_per_s"][c] > 0
            assert figs["decode_tokens_per_s"][c] > 0 and figs["decode_b1_memory_bytes"][c] > 0
            assert figs["decode_batch"][c] == 4 and r["decode"][c]["max"]["capped"]  # max_batch=4 fits
            assert r["decode"][c]["batch_1"]["batch"] == 1 and r["decode"][c]["max"]["state_bytes"] > 0
            assert figs["decode_memory_bytes"][c] > figs["decode_b1_memory_bytes"][c]  # four sequences' state
    assert set(out["results"]["model"]["impl"]) == set(HYBRID)  # each primitive ran (torch paths on the CPU)
    ratios = out["ratios"]
    assert ratios["n_params"] == pytest.approx(out["figures"]["model"]["n_params"] / out["figures"]["llama"]["n_params"])
    assert all(ratios[k][c] > 0 for k in records.BENCH_PER_CONTEXT for c in CONTEXTS)
    assert ratios["train_tokens_per_s"] > 0 and ratios["mfu"] is None
    # the window ring holds 16 tokens: the decode check crossed it and the 128-token context overflows it
    assert out["results"]["model"]["decode"]["128"]["batch_1"]["state_bytes"] == \
        out["results"]["model"]["decode"]["64"]["batch_1"]["state_bytes"] + 2 * 64 * 2 * 16 * 4  # only '*' grows
    table = proc.stdout
    assert f"'{HYBRID}' (tiny) against the Llama layout '{LLAMA}' on cpu, float32" in table
    assert "decode tokens/s @128 max" in table and "decode check: stateful logits within model" in table
    assert proc.stdout.rstrip().endswith("bench.json")


def test_the_leaderboard_gets_the_measured_columns(measured, capsys):
    tmp, _, out = measured
    board = tmp / "board.jsonl"
    (bench_rec,) = [r for r in store.load(board) if r["kind"] == "bench"]
    assert records.record_key(bench_rec) == ("bench", HYBRID, "tiny", "cpu")
    assert bench_rec["model"]["decode_tokens_per_s"] == out["figures"]["model"]["decode_tokens_per_s"]
    table = {r["pattern"]: r for r in formats.rows(store.load(board))}
    row, llama, plain = table[HYBRID], table[LLAMA], table["M-M-"]
    assert (row["bench_device"], row["bench_size"], row["bench_context"]) == ("cpu", "tiny", 128)
    assert row["decode_tps"] == out["figures"]["model"]["decode_tokens_per_s"]["128"] and row["decode_batch"] == 4
    assert row["decode_vs_llama"] == pytest.approx(out["ratios"]["decode_tokens_per_s"]["128"])
    assert row["train_tps"] > 0 and row["prefill_tps"] > 0 and row["decode_memory"] > 0
    assert llama["decode_tps"] == out["figures"]["llama"]["decode_tokens_per_s"]["128"]  # the reference's side
    assert llama["decode_vs_llama"] == 1.0 and plain["bench_device"] is None  # never measured: empty cells

    assert leaderboard_app.main(["--file", str(board)]) == 0
    text = capsys.readouterr().out
    header = text.splitlines()[0]
    for column in ("measured on", "decode/s", "vs Llama", "memory b1", "prefill/s", "train/s"):
        assert column in header
    hybrid_line = next(line for line in text.splitlines() if f" {HYBRID} " in line and "aggregate" in line)
    assert "cpu tiny @128" in hybrid_line
    assert "Measured speed (composer-bench)" in text and f"{LLAMA} (Llama)" in text
    assert leaderboard_app.main(["--file", str(board), "--search", "s1"]) == 0  # a search's rows keep their figures
    assert "cpu tiny @128" in capsys.readouterr().out


def test_the_report_plots_quality_against_measured_decode_throughput(measured, tmp_path, capsys):
    board = measured[0] / "board.jsonl"
    page = html.render(store.load(board), pareto_x="decode")
    assert '<svg id="pareto" data-x="decode"' in page and "Quality against measured decode throughput" in page
    assert f'class="point pareto" data-pattern="{HYBRID}"' in page  # the only measured candidate: the front
    assert 'data-pattern="M-M-"' not in page.split('id="pareto"')[1].split("</svg>")[0]  # not measured: not plotted
    assert "1 architecture(s) without composer-bench figures are not plotted" in page
    assert 'data-key="decode_tps"' in page and 'data-key="decode_vs_llama"' in page
    assert '<svg id="pareto" data-x="state"' in html.render(store.load(board))  # the default axis
    assert 'data-key="decode_tps"' not in html.render([r for r in store.load(board) if r["kind"] != "bench"])
    assert html.pareto_front([(1.0, 0.5), (3.0, 0.4), (2.0, 0.6)], lower_x_is_better=False) == [2, 1]
    with pytest.raises(ConfigError, match="pareto_x must be one of state, decode"):
        html.render([], pareto_x="cost")
    out = tmp_path / "report.html"
    assert leaderboard_app.main(["--file", str(board), "--html", str(out), "--pareto-x", "decode"]) == 0
    assert 'data-x="decode"' in out.read_text() and capsys.readouterr().out.strip() == str(out)


def test_an_exported_model_is_measured_against_a_llama_layout_of_its_size(tmp_path, capsys):
    cfg = preset_model_config(TINY, "M*-M*-")
    folder = save_pretrained(build_model(cfg, seed=1), tmp_path / "export", tokenizer_spec=None)
    out = bench_from_config({"pattern": None, "preset": "1b", "grow": None, "export": str(folder), "leaderboard": None,
                             "bench": {**BENCH, "contexts": [32]}}, tmp_path)
    assert out["size"] == f"export:{folder.resolve()}" and out["pattern"] == "M*-M*-"
    assert set(out["reference_pattern"]) == {"*", "-"} and out["results"]["model"]["export"] == str(folder.resolve())
    assert out["results"]["model"]["check"]["passed"] and out["figures"]["model"]["decode_tokens_per_s"]["32"] > 0
    assert (tmp_path / "bench.json").is_file() and "against the Llama layout" in capsys.readouterr().out


def test_a_searched_pattern_can_be_grown_to_the_preset_first(tmp_path, capsys):
    out = bench_from_config({"pattern": "M-", "preset": "tiny", "grow": "stack", "export": None, "leaderboard": None,
                             "bench": {**BENCH, "contexts": [16], "max_batch": 1}}, tmp_path)
    assert out["source_pattern"] == "M-" and out["pattern"] == "M-M-" and out["grow"] == "stack"  # as '*-*-' is
    assert out["figures"]["model"]["decode_batch"]["16"] == 1


@pytest.mark.parametrize("letter, corrupt", [
    ("*", lambda s: s.k.zero_()),  # the KV cache forgets the prompt
    ("W", lambda s: s.v.normal_()),  # the window ring holds noise
    ("M", lambda s: s.ssm.mul_(3)),  # the SSM state is off
    ("G", lambda s: s.recurrent.zero_()),  # the delta-rule state forgets
])
def test_a_decode_path_that_does_not_match_the_forward_fails_in_one_line(letter, corrupt):
    model = build_model(preset_model_config(TINY, f"{letter}-{letter}-")).eval()
    assert check_decode(model, tokens=24, tolerance=1e-4, graph=False)["passed"]
    with pytest.raises(BenchError) as failed:
        check_decode(model, tokens=24, tolerance=1e-4, graph=False,
                     tamper=lambda states: [corrupt(s) for s in states if s is not None])
    message = one_line(failed.value)
    assert message == str(failed.value) and "\n" not in message
    assert message.startswith(f"decode check failed for '{letter}-{letter}-': the stateful path's logits differ")
    assert "(decoded; 12 of 24 tokens prefilled), above the tolerance 0.0001" in message


def test_a_failed_check_ends_the_command_with_one_line_and_exit_2(tmp_path):
    proc = bench(tmp_path, "pattern=*M-", "bench.tolerance=0", "bench.contexts=[16]", "bench.max_batch=1")
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-2000:]
    (line,) = [line for line in proc.stderr.splitlines() if "error" in line]
    assert line.startswith("composer-bench: error: decode check failed for '*M-'") and line.endswith("above the tolerance 0")
    assert proc.stderr.rstrip().endswith(line)  # the last line; before it only the progress log
    assert "Traceback" not in proc.stderr and not (tmp_path / "board.jsonl").exists()


@pytest.mark.parametrize("change, message", [
    ({"preset": "huge"}, "unknown preset 'huge' (valid presets: 350m, 1b, 3b, 8b, tiny)"),
    ({"pattern": "*-A-"}, "unknown primitive 'A' at position 2 of pattern '*-A-'"),
    ({"pattern": None}, "give one of pattern=<pattern> (at preset=<size>) or export=<folder"),
    ({"export": "/no/such/model"}, "give one of pattern=<pattern> (at preset=<size>) or export=<folder written by "
                                   "composer-export>, got both"),
    ({"pattern": None, "export": "/no/such/model"}, "no exported model at /no/such/model: not a folder"),
    ({"grow": "sideways"}, "unknown extrapolation method 'sideways'"),
    ({"bench": {"contexts": [0, 64]}}, "bench: contexts must be a non-empty list of positive integers, got [0, 64]"),
    ({"bench": {"contexts": []}}, "bench: contexts must be a non-empty list of positive integers, got []"),
    ({"bench": {"max_batch": 0}}, "bench: max_batch must be a positive integer, got 0"),
    ({"bench": {"dtype": "fp8"}}, "bench: dtype must be auto, bf16 or fp32, got 'fp8'"),
    ({"bench": {"device": "tpu"}}, "bench: device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ({"bench": {"tolerance": -1.0}}, "bench: tolerance must be >= 0"),
    pytest.param({"bench": {"device": "cuda"}}, "bench: device=cuda but CUDA is not available on this machine",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")),
    ({"bench": {"batch": 4}}, "unknown key bench.batch (valid keys in bench: contexts,"),
])
def test_bad_input_is_one_line_before_anything_runs(tmp_path, change, message):
    cfg = {"pattern": HYBRID, "preset": "tiny", "grow": None, "export": None, "leaderboard": None, "bench": {}, **change}
    with pytest.raises(ComposerError) as failed:
        bench_from_config(cfg, tmp_path)
    assert message in one_line(failed.value) and "\n" not in one_line(failed.value)
    assert not (tmp_path / "bench.json").exists()


def test_an_export_folder_without_weights_is_refused(tmp_path):
    folder = save_pretrained(build_model(preset_model_config(TINY, "*-")), tmp_path / "export", tokenizer_spec=None)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"no exported model at .*: model.safetensors is missing"):
        bench_from_config({"pattern": None, "preset": "1b", "grow": None, "export": str(folder), "leaderboard": None,
                           "bench": {}}, tmp_path)


def test_the_batch_search_doubles_then_bisects_up_to_the_cap():
    def fits_up_to(limit: int):
        tried = []

        def measure(batch: int) -> dict:
            tried.append(batch)
            return {"batch": batch} if batch <= limit else {"oom": True}

        return measure, tried

    measure, tried = fits_up_to(37)
    first, best = largest_batch(measure, cap=256)
    assert first == {"batch": 1} and best == {"batch": 37, "capped": False}
    assert tried == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    measure, tried = fits_up_to(1000)
    assert largest_batch(measure, cap=24)[1] == {"batch": 24, "capped": True} and tried == [1, 2, 4, 8, 16, 24]
    measure, _ = fits_up_to(0)
    assert largest_batch(measure, cap=8) == ({"oom": True}, {"oom": True})  # batch 1 does not fit: recorded as such


def test_bench_records_are_checked(measured):
    out = measured[2]
    good = records.bench_record(out, run_dir="r")
    assert good["kind"] == "bench" and good["reference"]["decode_batch"] == {"64": 4, "128": 4}
    bad = json.loads(json.dumps(out))
    bad["figures"]["model"]["decode_tokens_per_s"]["128"] = -1.0
    with pytest.raises(ConfigError, match=r"bench figures.model.decode_tokens_per_s\['128'\] must be positive"):
        records.bench_record(bad, run_dir="r")
    bad = json.loads(json.dumps(out))
    del bad["figures"]["llama"]["decode_tokens_per_s"]["64"]
    with pytest.raises(ConfigError, match="figures.llama.decode_tokens_per_s must map each context"):
        records.bench_record(bad, run_dir="r")
    oom = json.loads(json.dumps(out))
    oom["figures"]["llama"]["decode_tokens_per_s"]["128"] = None  # out of memory is a value
    assert records.bench_record(oom, run_dir="r")["reference"]["decode_tokens_per_s"]["128"] is None
    with pytest.raises(ConfigError, match="bench pattern: unknown primitive 'Q'"):
        records.bench_record({**out, "pattern": "*Q"}, run_dir="r")


def test_positions_on_the_device_decode_as_the_python_int_path_does():
    # the graph-ready path (KVCache.use_device_position) against generate()'s own eager path
    model = build_model(preset_model_config(TINY, "*W-*W-")).eval()
    prompt = torch.randint(0, TINY.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager, pinned = (model.allocate_states(batch_size=2, max_len=48) for _ in range(2))
        a, b = model(prompt[:, :20], eager), model(prompt[:, :20], pinned)
        for s in pinned:
            if s is not None:
                s.use_device_position()
        for t in range(20, 40):
            a, b = model(prompt[:, t : t + 1], eager), model(prompt[:, t : t + 1], pinned)
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="device position decodes one token per call"):
            model(prompt[:, :2], pinned)


def test_the_yaml_holds_the_dataclass_defaults():
    data = yaml.safe_load((Path(__file__).parents[1] / "configs" / "bench.yaml").read_text())
    defaults = {f.name: f.default for f in dataclasses.fields(BenchConfig)}
    assert data["bench"] == {**defaults, "contexts": list(defaults["contexts"])}
    assert data["preset"] == "1b" and data["pattern"] is None and data["leaderboard"] == "outputs/leaderboard.jsonl"


def test_a_gpu_sized_preset_on_the_cpu_is_said_before_it_runs():
    """`composer-bench pattern=... ` takes preset=1b by default: on a CPU that is hours, said in one warning first."""
    from composer.apps.bench import _large_on_cpu, subjects_from_config

    cpu = BenchConfig(device="cpu")
    big, _ = subjects_from_config({"pattern": "*-M-", "export": None, "grow": None, "preset": "1b"})
    note = _large_on_cpu(big, cpu)
    assert note.startswith("measuring 1.24B-parameter models on the CPU: training steps of 8 x 2048 tokens and "
                           "prefills of up to 32,768 tokens take hours here") and "preset=tiny" in note
    tiny, _ = subjects_from_config({"pattern": "*-M-", "export": None, "grow": None, "preset": "tiny"})
    assert _large_on_cpu(tiny, cpu) is None
