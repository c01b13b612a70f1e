"""The default corpus: a real `apt-get download` of python3.11-doc, unpacked without root, loaded as text."""

from __future__ import annotations

import subprocess
import sys

from composer.data.text import TextSource, iter_documents, load_corpus
from composer.data.tokenizer import ByteTokenizer
from tests.conftest import cli_env


def test_fetch_corpus_writes_python_docs_that_load_as_a_corpus(tmp_path):
    out = subprocess.run([sys.executable, "-m", "composer.apps.text", "fetch-corpus", "--output", str(tmp_path / "docs")],
                         capture_output=True, text=True, env=cli_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    files = list((tmp_path / "docs" / "python3.11-doc").rglob("*.rst.txt"))
    assert len(files) > 400  # the reST sources of the Python 3.11 documentation
    docs = list(iter_documents(TextSource(path=str(tmp_path / "docs"))))
    assert len(docs) == sum(p.is_file() for p in (tmp_path / "docs").rglob("*")) - 1 and any("asyncio" in d for d in docs)
    policy = subprocess.run(["apt-cache", "policy", "python3.11-doc"], capture_output=True, text=True).stdout
    candidate = next(line.split()[1] for line in policy.splitlines() if line.strip().startswith("Candidate:"))
    assert (tmp_path / "docs" / "packages.tsv").read_text() == f"package\tversion\tfiles\npython3.11-doc\t{candidate}\t{len(files)}\n"
    assert f"python3.11-doc {candidate}: {len(files)} files" in out.stdout  # the version: which text this is
    corpus = load_corpus(TextSource(path=str(tmp_path / "docs")), ByteTokenizer(), val_tokens=100_000,
                         cache_dir=tmp_path / "cache")
    assert corpus.val.n_tokens >= 100_000 and corpus.train.n_tokens > 10_000_000


def test_fetch_corpus_of_a_package_that_does_not_exist_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "composer.apps.text", "fetch-corpus", "--output", str(tmp_path),
                          "--package", "no-such-package-composer"], capture_output=True, text=True, env=cli_env())
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "no-such-package-composer" in out.stderr


def test_fetch_corpus_pins_a_version_and_a_missing_one_is_one_line(tmp_path):
    policy = subprocess.run(["apt-cache", "policy", "sphinx-doc"], capture_output=True, text=True).stdout
    candidate = next(line.split()[1] for line in policy.splitlines() if line.strip().startswith("Candidate:"))
    run = [sys.executable, "-m", "composer.apps.text", "fetch-corpus", "--output", str(tmp_path)]
    out = subprocess.run([*run, "--package", f"sphinx-doc={candidate}"], capture_output=True, text=True, env=cli_env(),
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"sphinx-doc\t{candidate}\t" in (tmp_path / "packages.tsv").read_text()
    bad = subprocess.run([*run, "--package", "sphinx-doc=0.0-no-such-version"], capture_output=True, text=True,
                         env=cli_env())
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "apt-get download sphinx-doc=0.0-no-such-version failed" in bad.stderr
    assert (tmp_path / "packages.tsv").read_text().count("sphinx-doc") == 1  # the good fetch's record kept
