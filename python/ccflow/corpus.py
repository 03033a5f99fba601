"""Corpora as arrays of token ids, tokenized once and cached.

Three tokenizations, as in the AWD-LSTM toolkit (BRIEF section 3):

* **standard layout** -- a directory with ``train.txt``, ``valid.txt``,
  ``test.txt``; tokens are split on whitespace and ``<eos>`` ends every line.
  PTB-char reads this way, and so does enwik8 once ``prepare-enwik8`` has
  written each byte as its decimal value (205 distinct tokens).
* **plain text** -- one file, one token per character, split 90/5/5.
* **built-in** -- a fixed list of the running interpreter's standard-library
  sources, per character; needs no download and no file outside the repo.

``ptbc-small`` is the stand-in for PTB-char on machines without its training
split (../shared/data/README.md): train on ``pennchar/valid.txt`` minus its last
10% of lines, validate on those lines, test on ``pennchar/test.txt``.

Vocabularies follow the toolkit: ids in order of first appearance over train,
valid, then test. A corpus loaded for a trained model passes that model's
vocabulary instead, and a symbol outside it is an error, not a silent <unk>.
"""

from __future__ import annotations

import hashlib
import io
import os
import sysconfig
import zipfile
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EOS = "<eos>"
REPO_ROOT = Path(__file__).resolve().parents[2]

# Built-in corpus: ASCII-only standard-library modules, fixed so every run of a
# given Python version sees the same text. Train ~1.2 MB, valid ~63 kB, test ~75 kB.
BUILTIN_FILES = {
    "train": [
        "argparse.py", "ast.py", "configparser.py", "dataclasses.py", "datetime.py",
        "difflib.py", "enum.py", "inspect.py", "logging/__init__.py", "os.py",
        "pathlib.py", "pickle.py", "shutil.py", "subprocess.py", "tarfile.py",
        "threading.py", "typing.py",
    ],
    "valid": ["textwrap.py", "random.py", "string.py"],
    "test": ["queue.py", "sched.py", "csv.py", "gettext.py"],
}
SPLITS = ("train", "valid", "test")


class CorpusError(ValueError):
    """Missing, empty or malformed data; the message names the file and the fix."""


@dataclass(frozen=True)
class Corpus:
    name: str
    vocab: tuple[str, ...]  # vocab[id] is the symbol of token id
    train: np.ndarray  # int32 token ids
    valid: np.ndarray
    test: np.ndarray

    @property
    def ntokens(self) -> int:
        return len(self.vocab)

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise CorpusError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def decode(self, ids) -> str:
        """Readable text for token ids (space-free for per-character corpora)."""
        syms = [self.vocab[int(i)] for i in ids]
        if all(len(s) == 1 for s in self.vocab):
            return "".join(syms)
        return " ".join("\n" if s == EOS else s for s in syms)


def data_root() -> Path:
    """Where the shared corpora live: $CCFLOW_DATA, else ../shared/data beside the repo."""
    return Path(os.environ.get("CCFLOW_DATA", REPO_ROOT.parent / "shared" / "data"))


def cache_dir() -> Path:
    return Path(os.environ.get("CCFLOW_CACHE", REPO_ROOT / "build" / "cache"))


def load_corpus(spec: str = "builtin", vocab: tuple[str, ...] | None = None) -> Corpus:
    """Load a corpus by name (``builtin``, ``ptbc-small``) or path (directory or text file).

    With ``vocab`` (a trained model's), tokens are mapped through it and an
    unseen symbol raises :class:`CorpusError`.
    """
    if spec == "builtin":
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        files = {s: [stdlib / f for f in BUILTIN_FILES[s]] for s in SPLITS}
        return _load_cached("builtin", files, "char", vocab)
    if spec == "ptbc-small":
        root = data_root() / "pennchar"
        for f in ("valid.txt", "test.txt"):
            if not (root / f).is_file():
                raise CorpusError(f"ptbc-small needs {root / f}; set CCFLOW_DATA to the folder holding pennchar/")
        files = {"train": [root / "valid.txt"], "valid": [root / "valid.txt"], "test": [root / "test.txt"]}
        return _load_cached("ptbc-small", files, "ptbc-small", vocab)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = {s: [path / f"{s}.txt"] for s in SPLITS}
        missing = [str(f[0]) for f in files.values() if not f[0].is_file()]
        if missing:
            raise CorpusError(f"{path} is not a corpus directory: missing {', '.join(missing)} "
                              "(expected train.txt, valid.txt, test.txt)")
        return _load_cached(path.name, files, "words", vocab)
    if path.is_file():
        return _load_cached(path.stem, {s: [path] for s in SPLITS}, "text", vocab)
    raise CorpusError(f"corpus {spec!r} not found: give 'builtin', 'ptbc-small', a directory with "
                      "train.txt/valid.txt/test.txt, or a text file")


# --- tokenization ----------------------------------------------------------


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise CorpusError(f"missing corpus file {path}; give an existing file or folder with --data (data.corpus)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); a corpus is a UTF-8 text file "
                          "(enwik8: run `ccflow prepare-enwik8` first)") from None
    if not text.strip():
        raise CorpusError(f"{path} is empty; give a text file with the corpus in it")
    return text


def _word_lines(text: str):
    """Whitespace tokens with <eos> ending every line, blank lines included, as the toolkit reads."""
    for line in text.splitlines():
        yield from line.split()
        yield EOS


def _symbol_streams(kind: str, files: dict[str, list[Path]]) -> dict:
    """For each split, a zero-argument callable yielding its symbols (streamed: enwik8 is 100M tokens)."""
    if kind in ("char", "text"):
        texts = {s: "".join(_read_text(f) for f in fs) for s, fs in files.items()}
        if kind == "text":  # one file: 90/5/5 by characters
            text = texts["train"]
            a, b = int(len(text) * 0.9), int(len(text) * 0.95)
            texts = {"train": text[:a], "valid": text[a:b], "test": text[b:]}
        return {s: (lambda t=t: iter(t)) for s, t in texts.items()}
    if kind == "words":
        return {s: (lambda f=fs[0]: _word_lines(_read_text(f))) for s, fs in files.items()}
    if kind == "ptbc-small":
        lines = _read_text(files["train"][0]).splitlines()
        cut = len(lines) - max(1, len(lines) // 10)
        head, tail = "\n".join(lines[:cut]), "\n".join(lines[cut:])
        return {"train": lambda: _word_lines(head), "valid": lambda: _word_lines(tail),
                "test": lambda: _word_lines(_read_text(files["test"][0]))}
    raise AssertionError(kind)


def _build(name: str, kind: str, files: dict[str, list[Path]], vocab) -> Corpus:
    streams = _symbol_streams(kind, files)
    frozen = vocab is not None
    index = {sym: i for i, sym in enumerate(vocab or ())}
    arrays = {}
    for s in SPLITS:
        ids = array("i")
        try:
            if frozen:
                ids.extend(index[sym] for sym in streams[s]())
            else:
                ids.extend(index.setdefault(sym, len(index)) for sym in streams[s]())
        except KeyError as e:
            raise CorpusError(f"corpus {name}, {s} split ({files[s][0]}): symbol {e.args[0]!r} is not in the "
                              f"model's vocabulary of {len(index)} symbols; evaluate on text from the "
                              "corpus the model was trained on") from None
        if not ids:
            raise CorpusError(f"corpus {name}: the {s} split is empty ({', '.join(map(str, files[s]))}); fill it or "
                              "give another corpus")
        arrays[s] = np.frombuffer(ids, dtype=np.int32).copy()
    return Corpus(name=name, vocab=tuple(index), **arrays)


def _load_cached(name: str, files: dict[str, list[Path]], kind: str, vocab) -> Corpus:
    """Tokenize once per (files, sizes, mtimes, vocab); later loads read a .npz."""
    h = hashlib.sha256(kind.encode())
    for s in SPLITS:
        for f in files[s]:
            if not f.is_file():
                raise CorpusError(f"missing corpus file {f}; give an existing corpus with --data (data.corpus)")
            st = f.stat()
            h.update(f"{s}:{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    if vocab is not None:
        h.update("\x00".join(vocab).encode())
    path = cache_dir() / f"{name}-{h.hexdigest()[:16]}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return Corpus(name=name, vocab=tuple(str(v) for v in z["vocab"]),
                          train=z["train"], valid=z["valid"], test=z["test"])
    corpus = _build(name, kind, files, vocab)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # per process: concurrent fills do not collide
    np.savez(tmp, vocab=np.array(corpus.vocab), train=corpus.train, valid=corpus.valid, test=corpus.test)
    os.replace(tmp, path)
    return corpus


# --- enwik8 ------------------------------------------------------------------


def prepare_enwik8(zip_path: str | Path, out_dir: str | Path) -> Path:
    """The toolkit's enwik8 split: first 90M bytes train, next 5M valid, last 5M test.

    Each byte is written as its decimal value, newline bytes end lines, so the
    standard loader (whitespace tokens + <eos>) reads it unchanged.
    """
    from .outdir import check_replaceable, staged_dir

    zip_path, out_dir = Path(zip_path), check_replaceable(out_dir, "train.txt", "out")
    if not zip_path.is_file():
        raise CorpusError(f"{zip_path} not found; download enwik8.zip from http://mattmahoney.net/dc/enwik8.zip")
    try:
        with zipfile.ZipFile(zip_path) as z:
            data = z.read("enwik8")
    except (zipfile.BadZipFile, KeyError) as e:
        raise CorpusError(f"{zip_path}: not the enwik8 archive ({e})") from None
    n_test = 5_000_000
    if len(data) < 3 * n_test:
        raise CorpusError(f"{zip_path}: enwik8 holds {len(data)} bytes, expected 100,000,000")
    parts = {"train": data[:-2 * n_test], "valid": data[-2 * n_test:-n_test], "test": data[-n_test:]}
    with staged_dir(out_dir, "train.txt", option="out") as tmp:  # a failure leaves an earlier split as it was
        for split, part in parts.items():
            buf = io.StringIO()
            for line in part.split(b"\n"):
                buf.write(" ".join(map(str, line)))
                buf.write("\n")
            (tmp / f"{split}.txt").write_text(buf.getvalue())
    return out_dir


def batchify(data, streams: int) -> np.ndarray:
    """Token ids -> [T, streams]: one contiguous stream per column, the tail dropped (as the toolkit does)."""
    data = np.asarray(data)
    n = len(data) // streams
    if n < 2:
        raise CorpusError(f"{len(data)} tokens cannot fill {streams} streams of 2 or more; "
                          "use a smaller batch size or a larger split")
    return data[: n * streams].reshape(streams, n).T
