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
    assert len(docs) == sum(p.is_file() for p in (tmp_path / "docs").rglob("*")) and any("asyncio" in d for d in docs)
    corpus = load_corpus(TextSource(path=str(tmp_path / "docs")), ByteTokenizer(), val_tokens=100_000,
                         cache_dir=tmp_path / "cache")
    assert corpus.val.n_tokens >= 100_000 and corpus.train.n_tokens > 10_000_000


def test_fetch_corpus_of_a_package_that_does_not_exist_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "composer.apps.text", "fetch-corpus", "--output", str(tmp_path),
                          "--package", "no-such-package-composer"], capture_output=True, text=True, env=cli_env())
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "no-such-package-composer" in out.stderr
