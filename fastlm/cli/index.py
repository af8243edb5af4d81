"""`fastlm index build|add` and `fastlm search`: a retrieval index on the command line.

    fastlm index build docs.idx --model transformer --input corpus.jsonl
    fastlm index add docs.idx --input more.tsv --upsert
    fastlm search docs.idx "how do I reset it" --top-k 5 --mode hybrid

Documents come from a .jsonl, .tsv or .txt file (fastlm/corpus_io.py), checked in full before
the model loads, so a bad line is one error naming the file and line and nothing is written.
The index is written by `Index.save`, which replaces DIR's contents atomically: a killed build
or add leaves the index as it was. `build` refuses a DIR that exists and is not empty unless it
is an index and --force is given (then the new index replaces it); it never replaces anything
else. torch and numpy load when a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fastlm.cli.common import (
    UsageError,
    add_backend_flags,
    add_verbose_flag,
    load_model,
    positive_int,
    progress_bar,
)
from fastlm.corpus_io import read_corpus

MODES = ("dense", "lexical", "hybrid")  # fastlm.index.MODES, spelled out: --help imports nothing
ANN_CHOICES = {"auto": None, "on": True, "off": False}
STORAGE_CHOICES = ("float32", "float16")
INDEX_MARKER = "manifest.json"  # what every saved index directory holds
TEXT_PREVIEW = 80  # characters of a hit's text in the plain listing


def add_parser(sub) -> None:
    p = sub.add_parser(
        "index",
        help="build or extend a retrieval index (dense + BM25) from a corpus file",
        description="Documents come from --input: .jsonl (one object a line; id _id or id, "
        "text, optional title; other fields are metadata), .tsv (header row) or .txt (one "
        "document a line, ids = line numbers).",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_build(actions)
    _add_add(actions)
    _add_search(sub)


def _add_corpus_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="index directory")
    p.add_argument("--input", metavar="FILE", required=True, help=".jsonl, .tsv or .txt corpus")
    p.add_argument("--format", choices=("jsonl", "tsv", "txt"), help="default: from the suffix")
    p.add_argument("--id-field", help="id field/column (default: _id, else id)")
    p.add_argument("--text-field", default="text", help="text field/column (default: text)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="texts per model call")
    add_verbose_flag(p)  # fastlm.cli adds it to `index`; these parsers are one level deeper
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def _add_build(actions) -> None:
    p = actions.add_parser("build", help="embed a corpus file into a new index DIR")
    _add_corpus_flags(p)
    p.add_argument("--model", required=True, help="shipped name or checkpoint directory")
    p.add_argument("--no-lexical", dest="lexical", action="store_false", help="no BM25 side")
    p.add_argument(
        "--ann", choices=tuple(ANN_CHOICES), default="auto", help="approximate neighbours"
    )
    p.add_argument("--storage", choices=STORAGE_CHOICES, default="float32", help="vector dtype")
    p.add_argument("--force", action="store_true", help="replace DIR if it is already an index")
    add_backend_flags(p)
    p.set_defaults(func=run_build)


def _add_add(actions) -> None:
    p = actions.add_parser("add", help="add a corpus file's documents to index DIR")
    _add_corpus_flags(p)
    p.add_argument("--model", help="default: the model the index was built with")
    p.add_argument("--upsert", action="store_true", help="replace documents whose id exists")
    add_backend_flags(p)
    p.set_defaults(func=run_add)


def _add_search(sub) -> None:
    p = sub.add_parser("search", help="search an index built by `fastlm index build`")
    p.add_argument("dir", metavar="DIR", help="index directory")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="one or more queries")
    p.add_argument("--model", help="default: the model the index was built with")
    p.add_argument("--mode", choices=MODES, help="default: hybrid if the index has BM25")
    p.add_argument("--top-k", type=positive_int, default=10)
    p.add_argument("--json", action="store_true", help="one JSON object per hit")
    add_backend_flags(p)
    p.set_defaults(func=run_search)


# ----------------------------------------------------------------------------- commands
def run_build(args) -> int:
    _check_target(Path(args.dir), args.force)
    total = len(_check_corpus(args))
    from fastlm.index import Index  # numpy: only for this command, after the corpus checks

    index = Index(
        load_model(args),
        lexical=args.lexical,
        ann=ANN_CHOICES[args.ann],
        storage=args.storage,
    )
    _add_corpus(index, args, total, upsert=False)
    index.save(args.dir)
    print(f"indexed {total} documents into {args.dir}")
    return 0


def run_add(args) -> int:
    ids = _check_corpus(args)
    from fastlm.index import Index  # numpy: only for this command

    model = load_model(args, args.model or recorded_model(args.dir))
    index = Index.load(args.dir, model)
    if not args.upsert:  # before anything is embedded, in the command line's words
        known = set(index.ids)
        present = [i for i in ids if i in known]
        if present:
            shown = ", ".join(repr(i) for i in present[:5]) + (", ..." if len(present) > 5 else "")
            raise ValueError(
                f"{args.input}: {len(present)} ids are already in {args.dir} ({shown}); "
                "--upsert replaces those documents"
            )
    before = len(index)
    _add_corpus(index, args, len(ids), upsert=args.upsert)
    index.save(args.dir)
    print(f"added {len(index) - before} documents to {args.dir} ({len(index)} in all)")
    return 0


def run_search(args) -> int:
    if not all(query.strip() for query in args.queries):
        raise UsageError("a QUERY is empty: give a text to search for")
    from fastlm.index import Index  # numpy: only for this command

    model = load_model(args, args.model or recorded_model(args.dir))
    index = Index.load(args.dir, model)
    results = index.search(list(args.queries), top_k=args.top_k, mode=args.mode)
    for query, hits in zip(args.queries, results, strict=True):
        if len(args.queries) > 1 and not args.json:
            print(f"query: {query}")
        for rank, hit in enumerate(hits, start=1):
            print(_hit_line(query, rank, hit, args.json))
    return 0


def _hit_line(query: str, rank: int, hit: dict, as_json: bool) -> str:
    score = float(hit["score"])
    if as_json:
        row = {"query": query, "rank": rank, "id": hit["id"], "score": score}
        row |= {"text": hit["text"], "metadata": hit.get("metadata")}
        return json.dumps(row, ensure_ascii=False)
    text = " ".join(hit["text"].split())  # one line whatever the document's line breaks
    if len(text) > TEXT_PREVIEW:
        text = text[: TEXT_PREVIEW - 3] + "..."
    return f"{rank:>3}  {score:8.4f}  {hit['id']}  {text}"


# ----------------------------------------------------------------------------- helpers
def _check_target(path: Path, force: bool) -> None:
    """Refuse a DIR that exists and is not empty, unless it is an index and --force is given:
    checked before the corpus is read or the model loads."""
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if not any(path.iterdir()):
        return
    if not (path / INDEX_MARKER).is_file():
        raise FileExistsError(f"{path} exists, is not empty and is not an index; not replacing it")
    if not force:
        raise FileExistsError(
            f"{path} is already an index: `fastlm index add` adds documents to it, --force "
            "replaces it"
        )


def _check_corpus(args) -> list[str]:
    """The ids of --input's documents, every line checked (exit 1 naming a bad one)."""
    ids = [i for batch, _, _ in read_corpus(args.input, **_corpus_options(args)) for i in batch]
    if not ids:
        raise ValueError(f"{args.input}: no documents (the file is empty or blank)")
    return ids


def _corpus_options(args) -> dict:
    return {"fmt": args.format, "id_field": args.id_field, "text_field": args.text_field}


def _add_corpus(index, args, total: int, upsert: bool) -> None:
    """Add --input to `index` a batch at a time, under one progress bar for the whole file."""
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    bar = _progress_bar(total, show)
    try:
        for ids, texts, metadata in read_corpus(args.input, **_corpus_options(args)):
            index.add(
                texts, ids, metadata, upsert=upsert, batch_size=args.batch_size, progress=False
            )
            bar.update(len(ids))
    finally:
        bar.close()


def _progress_bar(total: int, show: bool):
    return progress_bar(total=total, unit="doc", file=sys.stderr, disable=not show, desc="indexing")


def recorded_model(path: str | os.PathLike) -> str:
    """The name of the model an index was built with, from its manifest (for a default --model;
    an index that does not record one needs --model)."""
    from fastlm.index import store  # numpy: only for this command

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"index directory not found: {path}")
    version = store.current(path)  # IndexFileError naming DIR when it is not an index
    facts = None
    if version != store.LEGACY:  # fastlm-index/1 kept no manifest per version
        file = path / version / store.INDEX_MANIFEST
        facts = store.read_json(file, store.MAX_MANIFEST_BYTES)
    model = facts.get("model") if isinstance(facts, dict) else None
    name = model.get("name") if isinstance(model, dict) else None
    if not isinstance(name, str) or not name:
        raise UsageError(f"{path} does not record the model it was built with; give --model")
    return name
