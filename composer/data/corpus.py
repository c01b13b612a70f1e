"""The embedded default text corpus: English documentation from Debian packages, no model hub needed.

    composer-text fetch-corpus --output data/debian-docs        # python3.11-doc: ~500 files, 12 MB of reST

`apt-get download` fetches the .deb into a temporary folder (no root needed, nothing is installed)
and `dpkg -x` unpacks it; every .txt, .rst and .md file under its `usr/share/doc/` is copied to
`<output>/<package>/…`, one document per file (composer.data.text's rule for text files). Other packages
work the same way, e.g. `--package linux-doc-6.1` (the kernel's documentation, ~24 MB).

A package's text changes with its version, and which version `apt-get download` takes depends on how
fresh the machine's package lists are (`apt-get update`): the versions fetched are written to
`<output>/packages.tsv` (package, version, files; not a corpus file), and `name=version` pins one.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from composer.errors import ComposerError, ConfigError

log = logging.getLogger(__name__)

DEFAULT_PACKAGES = ("python3.11-doc",)
TEXT_SUFFIXES = (".txt", ".rst", ".md")


VERSIONS = "packages.tsv"  # in the output folder: package, version, files copied (a suffix no corpus reads)


def fetch_debian_docs(output: str | Path, packages: tuple[str, ...] = DEFAULT_PACKAGES) -> dict[str, tuple[str, int]]:
    """Download and unpack `packages` (`name` or `name=version`), copy their text files under `output`;
    package -> (version, files copied), also merged into `output`/packages.tsv."""
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise ConfigError(f"fetch-corpus needs {tool} (a Debian or Ubuntu machine); point --input at any text folder instead")
    output = Path(output)
    copied: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="composer-corpus-") as tmp:
        for spec in packages:
            package = spec.split("=", 1)[0]
            download = subprocess.run(["apt-get", "download", spec], cwd=tmp, capture_output=True, text=True)
            debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
            if download.returncode != 0 or not debs:
                reason = (download.stderr.strip().splitlines() or ["no .deb downloaded"])[-1]
                raise ConfigError(f"apt-get download {spec} failed: {reason}")
            unpacked = Path(tmp) / package
            subprocess.run(["dpkg", "-x", str(debs[-1]), str(unpacked)], check=True, capture_output=True)
            version = subprocess.run(["dpkg-deb", "-f", str(debs[-1]), "Version"], check=True, capture_output=True,
                                     text=True).stdout.strip()
            docs = unpacked / "usr" / "share" / "doc"
            n = 0
            for path in sorted(docs.rglob("*")):
                if path.is_file() and not path.is_symlink() and path.name.endswith(TEXT_SUFFIXES):
                    target = output / package / path.relative_to(docs)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)
                    n += 1
            if n == 0:
                raise ConfigError(f"package {package} has no .txt, .rst or .md files under usr/share/doc")
            copied[package] = (version, n)
    _record_versions(output / VERSIONS, copied)
    return copied


def _record_versions(path: Path, copied: dict[str, tuple[str, int]]) -> None:
    """Merge what was fetched into `path` (one `package<TAB>version<TAB>files` line each, sorted)."""
    rows = {}
    if path.is_file():
        rows = {line.split("\t")[0]: line for line in path.read_text().splitlines()[1:] if line.strip()}
    rows |= {package: f"{package}\t{version}\t{n}" for package, (version, n) in copied.items()}
    path.write_text("package\tversion\tfiles\n" + "".join(rows[k] + "\n" for k in sorted(rows)))


def default_corpus(*, setting: str = "data.path") -> Path:
    """The default corpus's folder, $COMPOSER_CACHE/corpus/debian-docs, fetched on first use.

    Fetched into a temporary folder and renamed into place, so processes racing for it all end up
    with one complete copy. `setting` names the config key that left the corpus unset, for the error."""
    folder = Path(os.environ.get("COMPOSER_CACHE", "~/.cache/composer")).expanduser() / "corpus" / "debian-docs"
    if folder.is_dir():
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("fetching the default corpus (%s) into %s", ", ".join(DEFAULT_PACKAGES), folder)
    try:
        fetch_debian_docs(tmp, DEFAULT_PACKAGES)
    except (ComposerError, OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"{setting} is null (the default corpus, {', '.join(DEFAULT_PACKAGES)}) and fetching it "
                          f"into {folder} failed: {' '.join(str(exc).split())}; set {setting} to a folder of text "
                          f"files") from None
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first; its copy is the same
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
