"""benchmarks/recall_by_first_mixer.py on composer-search's own log lines: recall per first token mixer."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks/recall_by_first_mixer.py"
_spec = importlib.util.spec_from_file_location("recall_by_first_mixer", SCRIPT)
rb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rb)


def _line(n: int, pattern: str, noisy: float, copy: float = 0.1) -> str:
    # as search.runner logs a finished evaluation
    return (f"[2026-12-06 23:36:16,578][composer.search][INFO] - w0.4 [{n}/100] {pattern}  0.400 "
            f"(noisy {noisy:.2f} copy {copy:.2f} compress 0.27)  157s | best {pattern} 0.400 | 2m39s elapsed, ~1m left\n")


def test_recall_is_counted_per_first_mixer_over_patterns_with_attention(tmp_path):
    log = tmp_path / "search.log"
    lines = [_line(i, p, v) for i, (p, v) in enumerate(
        [("M*-*", 1.0), ("-M*-", 0.95), ("M-*M", 0.2), ("*M-M", 0.19), ("-*M-", 0.9), ("*--M", 0.2),
         ("M-M-", 1.0),  # no attention: left out
         ("M*-*", 0.3)])]  # seen again: the last line counts
    log.write_text("".join(lines) + "a line that is not an evaluation\n")
    scores = rb.read_scores([log])
    assert scores["M*-*"] == {"noisy": 0.3, "copy": 0.1, "compress": 0.27} and len(scores) == 7
    noisy = rb.tally(scores)["noisy"]
    assert noisy["M"] == {"reach": 1, "patterns": 3} and noisy["*"] == {"reach": 1, "patterns": 3}
    assert noisy["fisher"]["p"] == 1.0 and set(rb.tally(scores)) == {"noisy"}  # copy and compress are no recall


def test_a_clear_split_is_significant_and_written(tmp_path):
    log = tmp_path / "search.log"
    patterns = [("M*" + "-" * i, 1.0) for i in range(12)] + [("*M" + "-" * i, 0.2) for i in range(12)]
    log.write_text("".join(_line(i, p, v) for i, (p, v) in enumerate(patterns)))
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(log), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["patterns"] == 24 and record["tasks"]["noisy"]["fisher"]["p"] < 1e-5
    assert "| noisy | `M` | 12 | 12 | 100% |" in proc.stdout and "| noisy | `*` | 0 | 12 | 0% |" in proc.stdout


def test_a_missing_log_is_refused_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope.log")], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == f"recall_by_first_mixer.py: no such log: {tmp_path / 'nope.log'}"
