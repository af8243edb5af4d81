"""The front-ends of the retrieval Index: corpus files, `fastlm index build|add`, `fastlm
search`, POST /v1/search and `fastlm evaluate --retrieval DIR --mode ...`.

Every command runs in-process through fastlm.cli.main on the shipped Transformer (eager, one
thread). The corpus is tiny and its documents share no content word, so a lexical search for
a document's words ranks it first: the expected ids are known without running the code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastlm.cli import main
from fastlm.corpus_io import CorpusFileError, read_corpus

MODEL = ["--model", "transformer", "--backend", "eager", "--threads", "1"]
DOCS = {  # id -> (title, text, extra field)
    "cat": ("Pets", "the cat sat quietly on the woollen mat", "en"),
    "bread": ("Baking", "a recipe for banana bread with walnuts", "en"),
    "quantum": ("Physics", "lecture notes on quantum entanglement", "de"),
    "tides": ("Ocean", "why lunar gravity drives the ocean tides", "fr"),
}


def _write_corpus(tmp_path: Path, fmt: str) -> Path:
    path = tmp_path / f"corpus.{fmt}"
    if fmt == "jsonl":
        rows = [{"_id": i, "title": t, "text": x, "lang": lang} for i, (t, x, lang) in DOCS.items()]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "tsv":
        lines = ["id\ttext\tlang"] + [f"{i}\t{x}\t{lang}" for i, (_, x, lang) in DOCS.items()]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        path.write_text("".join(x + "\n" for _, x, _ in DOCS.values()), encoding="utf-8")
    return path


def _bread_id(fmt: str) -> str:
    return "2" if fmt == "txt" else "bread"  # .txt ids are line numbers


def _build(tmp_path: Path, fmt: str, *extra: str) -> tuple[Path, int]:
    out = tmp_path / f"idx-{fmt}"
    with pytest.raises(SystemExit) as usage:  # --model is required: a usage error
        main(["index", "build", str(out), "--input", str(_write_corpus(tmp_path, fmt))])
    assert usage.value.code == 2
    args = ["index", "build", str(out), "--input", str(tmp_path / f"corpus.{fmt}"), *MODEL]
    return out, main([*args, "--no-progress", *extra])


def _search_json(capsys, index: Path, *args: str) -> list[dict]:
    capsys.readouterr()
    assert main(["search", str(index), *args, *MODEL, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


# ----------------------------------------------------------------------------- corpus files
def test_jsonl_reader_puts_title_first_and_extra_fields_in_metadata(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(
        '{"_id": "a", "title": "T", "text": "body", "lang": "en", "n": 3}\n\n'
        '{"id": "b", "text": "second"}\n',
        encoding="utf-8",
    )
    assert list(read_corpus(path)) == [
        (["a", "b"], ["T body", "second"], [{"lang": "en", "n": 3}, None])
    ]


def test_readers_stream_batches_and_txt_ids_are_line_numbers(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("one\n\ntwo\r\nthree\n", encoding="utf-8")
    batches = list(read_corpus(path, chunk_size=2))
    assert [b[0] for b in batches] == [["1", "3"], ["4"]]
    assert [b[1] for b in batches] == [["one", "two"], ["three"]]


def test_tsv_reader_is_unquoted_and_names_columns(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text('doc\tbody\tsrc\n7\tsays "hi\tweb\n', encoding="utf-8")
    batches = list(read_corpus(path, id_field="doc", text_field="body"))
    assert batches == [(["7"], ['says "hi'], [{"src": "web"}])]


BAD_LINES = {
    "invalid-json": ("jsonl", b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": \n', 2),
    "not-an-object": ("jsonl", b'{"_id": "a", "text": "ok"}\n["b", "x"]\n', 2),
    "missing-text": ("jsonl", b'{"_id": "a", "text": "ok"}\n\n{"_id": "b"}\n', 3),
    "empty-text": ("jsonl", b'{"_id": "a", "text": "  "}\n', 1),
    "int-id": ("jsonl", b'{"_id": "a", "text": "ok"}\n{"_id": 7, "text": "x"}\n', 2),
    "no-id": ("jsonl", b'{"text": "ok"}\n', 1),
    "duplicate-id": ("jsonl", b'{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', 2),
    "bad-utf8-jsonl": ("jsonl", b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "\xff"}\n', 2),
    "columns": ("tsv", b"id\ttext\n1\tok\n2\tone\ttoo many\n", 3),
    "tsv-empty-text": ("tsv", b"id\ttext\n1\t\n", 2),
    "tsv-no-text-column": ("tsv", b"id\tbody\n1\tok\n", 1),
    "bad-utf8-txt": ("txt", b"fine\nalso fine\n\xc3\x28 broken\n", 3),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_a_bad_line_is_one_error_naming_file_and_line(tmp_path, capsys, case):
    fmt, data, line = BAD_LINES[case]
    path = tmp_path / f"bad.{fmt}"
    path.write_bytes(data)
    with pytest.raises(CorpusFileError, match=f"^{path}:{line}: "):
        list(read_corpus(path))
    out = tmp_path / "idx"
    assert main(["index", "build", str(out), "--input", str(path), *MODEL]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}:{line}: " in err
    assert not out.exists()  # checked before anything is written


def test_an_unknown_suffix_is_refused_naming_the_file(tmp_path, capsys):
    path = tmp_path / "docs.csv"
    path.write_text("a,b\n", encoding="utf-8")
    assert main(["index", "build", str(tmp_path / "i"), "--input", str(path), *MODEL]) == 1
    assert "docs.csv" in capsys.readouterr().err


# ----------------------------------------------------------------------------- build / search
@pytest.mark.parametrize("fmt", ["jsonl", "tsv", "txt"])
def test_build_then_search_each_format(tmp_path, capsys, fmt):
    index, code = _build(tmp_path, fmt)
    assert code == 0, capsys.readouterr().err
    hits = _search_json(capsys, index, "banana bread recipe", "--mode", "lexical", "--top-k", "2")
    assert [h["rank"] for h in hits] == [1, 2]
    assert hits[0]["id"] == _bread_id(fmt)
    if fmt == "jsonl":
        assert hits[0]["text"] == "Baking a recipe for banana bread with walnuts"
        assert hits[0]["metadata"] == {"lang": "en"}
    dense = _search_json(capsys, index, "banana bread recipe", "--mode", "dense")
    assert len(dense) == len(DOCS) and all(isinstance(h["score"], float) for h in dense)


def test_plain_search_output_is_rank_score_id_text(tmp_path, capsys):
    index, code = _build(tmp_path, "jsonl")
    assert code == 0
    capsys.readouterr()
    args = ["search", str(index), "lunar tides", "--mode", "lexical", "--top-k", "1", *MODEL]
    assert main(args) == 0
    rank, score, doc_id, text = capsys.readouterr().out.split(maxsplit=3)
    assert (rank, doc_id) == ("1", "tides") and float(score) > 0
    assert text.strip() == "Ocean why lunar gravity drives the ocean tides"


def test_build_refuses_an_existing_index_unless_force_and_never_a_foreign_dir(tmp_path, capsys):
    index, code = _build(tmp_path, "txt")
    assert code == 0
    corpus = str(tmp_path / "corpus.txt")
    capsys.readouterr()
    assert main(["index", "build", str(index), "--input", corpus, *MODEL]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["index", "build", str(index), "--input", corpus, *MODEL, "--force"]) == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.md").write_text("mine", encoding="utf-8")
    assert main(["index", "build", str(foreign), "--input", corpus, *MODEL, "--force"]) == 1
    assert "not an index" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["notes.md"]


def test_add_then_search_finds_the_new_document_and_refuses_a_known_id(tmp_path, capsys):
    index, code = _build(tmp_path, "jsonl", "--no-lexical")
    assert code == 0
    more = tmp_path / "more.jsonl"
    more.write_text('{"_id": "violin", "text": "tuning a violin by ear"}\n', encoding="utf-8")
    add = ["index", "add", str(index), "--input", str(more), *MODEL, "--no-progress"]
    assert main(add) == 0
    hits = _search_json(capsys, index, "tuning a violin by ear", "--mode", "dense", "--top-k", "1")
    assert hits[0]["id"] == "violin"
    assert main(add) == 1  # the id is in the index now
    err = capsys.readouterr().err
    assert "'violin'" in err and "--upsert" in err
    assert main([*add, "--upsert"]) == 0
    assert len(_search_json(capsys, index, "violin", "--mode", "dense", "--top-k", "50")) == 5


def test_search_of_a_dense_only_index_in_lexical_mode_is_an_error(tmp_path, capsys):
    index, code = _build(tmp_path, "txt", "--no-lexical")
    assert code == 0
    capsys.readouterr()
    assert main(["search", str(index), "cat", "--mode", "lexical", *MODEL]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["search", str(index), "cat", " ", *MODEL]) == 2  # an empty query: usage
    assert "QUERY is empty" in capsys.readouterr().err


def test_search_without_model_uses_the_model_the_index_records(tmp_path, capsys):
    index, code = _build(tmp_path, "jsonl")
    assert code == 0
    capsys.readouterr()
    args = ["search", str(index), "quantum entanglement", "--mode", "lexical", "--json"]
    assert main([*args, "--backend", "eager", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["id"] == "quantum"


# ----------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    import fastlm
    from fastlm.index import Index
    from fastlm.serve import ServeConfig, create_app

    lm = fastlm.load("transformer", backend="eager", device="cpu", threads=1)
    index = Index(lm)
    ids = list(DOCS)
    index.add(
        [f"{t} {x}" for t, x, _ in DOCS.values()], ids, [{"lang": d[2]} for d in DOCS.values()]
    )
    config = ServeConfig(max_items=4)
    with TestClient(create_app(lm, "transformer", config, index)) as with_index:
        with TestClient(create_app(lm, "transformer", config)) as without:
            yield with_index, without


def test_search_endpoint_one_query_is_a_list_of_hits(served):
    client, _ = served
    r = client.post("/v1/search", json={"query": "banana bread", "top_k": 2, "mode": "lexical"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and len(body["data"]) == 2
    top = body["data"][0]
    assert set(top) == {"id", "score", "text", "metadata"}
    assert top["id"] == "bread" and top["metadata"] == {"lang": "en"}


def test_search_endpoint_a_list_of_queries_is_a_list_per_query(served):
    client, _ = served
    body = {"query": ["lunar tides", "woollen mat"], "top_k": 1, "mode": "lexical"}
    r = client.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    assert [[h["id"] for h in hits] for hits in r.json()["data"]] == [["tides"], ["cat"]]
    default = client.post("/v1/search", json={"query": "quantum"})  # mode null, top_k 10
    assert default.status_code == 200 and len(default.json()["data"]) == len(DOCS)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"query": ""}, "query"),
        ({"query": ["fine", "  "]}, "query"),
        ({"query": 3}, "query"),
        ({"query": []}, "query"),
        ({"query": ["q"] * 5}, "query"),  # max_items is 4 here
        ({"query": "q", "top_k": 0}, "top_k"),
        ({"query": "q", "top_k": 1001}, "top_k"),
        ({"query": "q", "top_k": "5"}, "top_k"),
        ({"query": "q", "mode": "semantic"}, "mode"),
        ({"query": "q", "model": "lstm"}, "model"),
    ],
)
def test_search_endpoint_bad_bodies_are_4xx_naming_the_field(served, body, param):
    client, _ = served
    r = client.post("/v1/search", json=body)
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_search_endpoint_without_an_index_is_a_404(served):
    _, client = served
    r = client.post("/v1/search", json={"query": "anything"})
    assert r.status_code == 404
    assert "--index" in r.json()["error"]["message"]


# ----------------------------------------------------------------------------- evaluate
def _beir(tmp_path: Path) -> Path:
    d = tmp_path / "beir"
    d.mkdir()
    corpus = [{"_id": i, "title": t, "text": x} for i, (t, x, _) in DOCS.items()]
    (d / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus), "utf-8")
    queries = [{"_id": "q1", "text": "banana walnuts"}, {"_id": "q2", "text": "lunar gravity"}]
    (d / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries), "utf-8")
    (d / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tbread\t1\nq2\ttides\t1\n")
    return d


def test_evaluate_retrieval_prints_each_mode_side_by_side(tmp_path, capsys):
    beir = str(_beir(tmp_path))
    base = ["evaluate", "transformer", "--retrieval", beir, "--backend", "eager"]
    modes = ["--mode", "dense", "--mode", "lexical", "--mode", "hybrid"]
    assert main([*base, *modes]) == 0
    out = capsys.readouterr().out
    assert all(mode in out for mode in ("dense", "lexical", "hybrid")), out
    assert main([*base, *modes, "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)["retrieval"][beir]
    assert list(figures["modes"]) == ["dense", "lexical", "hybrid"]
    # each query's words occur only in its relevant document: BM25 ranks it first
    assert figures["modes"]["lexical"] == {"ndcg@10": 100.0, "recall@100": 100.0}
    assert figures["queries"] == 2 and figures["documents"] == 4
    assert main([*base, "--json"]) == 0  # default: dense alone, figures as before
    dense = json.loads(capsys.readouterr().out)["retrieval"][beir]
    assert set(dense) == {"ndcg@10", "recall@100", "queries", "documents"}
    assert dense["ndcg@10"] == pytest.approx(figures["modes"]["dense"]["ndcg@10"])


def test_mode_choices_match_the_index():
    from fastlm.cli import index as cli_index
    from fastlm.embedding.evaluate import RETRIEVAL_MODES
    from fastlm.index import MODES
    from fastlm.serve.requests import SEARCH_MODES

    assert set(cli_index.MODES) == set(RETRIEVAL_MODES) == set(SEARCH_MODES) == set(MODES)
