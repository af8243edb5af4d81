"""`fastlm evaluate` inputs: malformed STS/pair TSVs and BEIR directories are refused with one
line naming the file and line; BOMs and TREC 4-column qrels are read; pair files give AP."""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_helpers import BagOfLetters

from fastlm.cli import main
from fastlm.embedding.data import DataFileError, read_sts_tsv
from fastlm.embedding.evaluate import evaluate_pairs, evaluate_retrieval, evaluate_sts, read_beir
from fastlm.embedding.metrics import average_precision

HEADER = "sentence1\tsentence2\tscore\n"
GOOD_STS = "aaa\taaa\t5\naab\taaa\t3\nabc\txyz\t0\n"  # cosines 1, 2/sqrt(5), 0: Spearman 100


def write(path, text: str | bytes):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------- STS


@pytest.mark.parametrize(
    "body, where, words",
    [
        ("aaa\taaa\t5\nx\ty\tnan\n", ":3:", "finite"),
        ("aaa\taaa\tinf\nx\ty\t1\n", ":2:", "finite"),
        ("aaa\taaa\t5\nx\ty\t-Infinity\n", ":3:", "finite"),
        ("aaa\taaa\t5\nx\ty\tnope\n", ":3:", "not a number"),
        ("aaa\taaa\t5\nx\ty\n", ":3:", "2 columns"),
        ("aaa\taaa\t5\nx\ty\t1\textra\n", ":3:", "4 columns"),
        ("aaa\taaa\t5\n", ": ", "at least 2"),
        ("aaa\taaa\t2\nx\ty\t2\n", ": ", "equal"),
    ],
)
def test_sts_malformed_rows_name_file_and_line(tmp_path, body, where, words):
    f = write(tmp_path / "sts.tsv", HEADER + body)
    with pytest.raises(DataFileError, match=words) as err:
        read_sts_tsv(f)
    assert str(f) + where in str(err.value) and "\n" not in str(err.value)


def test_sts_header_naming_a_read_column_twice_is_refused(tmp_path):
    f = write(tmp_path / "sts.tsv", "sentence1\tsentence2\tscore\tscore\n" + "a\tb\t1\t2\n")
    with pytest.raises(DataFileError, match=r"sts\.tsv:1: .*'score' twice"):
        read_sts_tsv(f)
    write(f, "sentence1\tx\tsentence2\tscore\tx\naaa\t-\taaa\t5\t-\nx\t-\ty\t0\t-\n")
    assert read_sts_tsv(f)[0] == ["aaa", "x"]  # a repeated column that is not read is fine


def test_sts_nan_gold_is_refused_not_scored(tmp_path):
    f = write(tmp_path / "sts.tsv", HEADER + GOOD_STS + "abc\tabd\tnan\n")
    with pytest.raises(ValueError, match=r"sts\.tsv:5: .*finite"):
        evaluate_sts(BagOfLetters(), f)


def test_sts_empty_file_and_missing_header(tmp_path):
    f = write(tmp_path / "sts.tsv", "")
    with pytest.raises(DataFileError, match="empty"):
        read_sts_tsv(f)
    write(f, GOOD_STS)  # the first pair taken for a header
    with pytest.raises(DataFileError, match=r"sts\.tsv:1: .*missing column"):
        read_sts_tsv(f)


def test_sts_bom_and_crlf_and_blank_lines_are_read(tmp_path):
    body = (HEADER + GOOD_STS).replace("\n", "\r\n").replace("aab", "\r\naab")
    f = write(tmp_path / "sts.tsv", "\ufeff".encode() + body.encode())
    assert evaluate_sts(BagOfLetters(), f) == {"spearman": pytest.approx(100.0), "pairs": 3}
    s1, s2, _ = read_sts_tsv(f)
    assert s1 == ["aaa", "aab", "abc"] and s2 == ["aaa", "aaa", "xyz"]


def test_sts_line_numbers_count_blank_lines(tmp_path):
    f = write(tmp_path / "sts.tsv", HEADER + "aaa\taaa\t5\n\n\nx\ty\tnan\n")
    with pytest.raises(DataFileError, match=r"sts\.tsv:5:"):
        read_sts_tsv(f)


def test_sts_invalid_utf8_names_the_line(tmp_path):
    f = write(tmp_path / "sts.tsv", (HEADER + "aaa\taaa\t5\n").encode() + b"x\xff\ty\t1\n")
    with pytest.raises(DataFileError, match=r"sts\.tsv:3: .*UTF-8"):
        read_sts_tsv(f)


# -------------------------------------------------------------------------------- BEIR


def beir(tmp_path, qrels: str | bytes, corpus=None, queries=None):
    """A BEIR directory; by default the corpus and queries of the hand-computed case below."""
    d = tmp_path / "beir"
    d.mkdir(exist_ok=True)
    corpus = corpus or [
        {"_id": "d1", "title": "", "text": "aaaa"},
        {"_id": "d2", "title": "bbbb", "text": "bbb"},
        {"_id": "d3", "title": "", "text": "cccc"},
    ]
    queries = queries or [{"_id": "q1", "text": "aaa"}, {"_id": "q2", "text": "bb"}]
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        lines = (r if isinstance(r, str) else json.dumps(r) for r in rows)
        write(d / name, "".join(line + "\n" for line in lines))
    write(d / "qrels.tsv", qrels)
    return d


BEIR_HEADER = "query-id\tcorpus-id\tscore\n"
# q1 -> d1 first (nDCG 1); q2's relevant d3 ranks third: 1/log2(4) = 0.5
HAND_NDCG = 100 * (1 + 0.5) / 2


def test_qrels_without_header_is_refused(tmp_path):
    d = beir(tmp_path, "q1\td1\t1\nq2\td3\t1\n")
    with pytest.raises(DataFileError, match=r"qrels\.tsv:1: .*header"):
        read_beir(d)


def test_trec_qrels_with_numeric_ids_are_read(tmp_path):
    texts = ["aaaa", "bbbb bbb", "cccc"]
    corpus = [{"_id": i, "text": t} for i, t in enumerate(texts, start=1)]  # integer ids
    queries = [{"_id": "1", "text": "aaa"}, {"_id": "2", "text": "bb"}]
    d = beir(tmp_path, "1 0 1 1\n2\t0\t3\t1\n", corpus, queries)
    assert read_beir(d)[2] == {"1": {"1": 1}, "2": {"3": 1}}
    r = evaluate_retrieval(BagOfLetters(), d)
    assert r["queries"] == 2 and r["ndcg@10"] == pytest.approx(HAND_NDCG)


def test_beir_qrels_and_jsonl_with_bom_are_read(tmp_path):
    d = beir(tmp_path, "\ufeff" + BEIR_HEADER + "q1\td1\t1\nq2\td3\t1\n")
    for name in ("corpus.jsonl", "queries.jsonl"):
        write(d / name, "\ufeff" + (d / name).read_text(encoding="utf-8"))
    assert evaluate_retrieval(BagOfLetters(), d)["ndcg@10"] == pytest.approx(HAND_NDCG)


@pytest.mark.parametrize(
    "rows, where, words",
    [
        ("q1\td1\tinf\n", ":2:", "finite"),
        ("q1\td1\tnan\n", ":2:", "finite"),
        ("q1\td1\t1e400\n", ":2:", "finite"),
        ("q1\td1\t1.5\n", ":2:", "integer"),
        ("q1\td1\thigh\n", ":2:", "not a number"),
        ("q1\td1\n", ":2:", "3 columns"),
        ("q1\td1\t1\t7\n", ":2:", "3 columns"),
        ("q1\td1\t1\nq1\td1\t2\n", ":3:", "duplicate"),
        ("q1\td9\t1\n", ":2:", "'d9' is not in corpus.jsonl"),
        ("q9\td1\t1\n", ":2:", "'q9' is not in queries.jsonl"),
        ("", ": ", "no judgments"),
        ("q1\td1\t0\n", ": ", "relevance > 0"),
    ],
)
def test_qrels_malformed_rows_name_file_and_line(tmp_path, rows, where, words):
    d = beir(tmp_path, BEIR_HEADER + rows)
    with pytest.raises(DataFileError, match=words) as err:
        read_beir(d)
    assert "qrels.tsv" + where in str(err.value)


def test_trec_qrels_malformed_rows(tmp_path):
    corpus = [{"_id": "1", "text": "a"}, {"_id": "2", "text": "b"}]
    queries = [{"_id": "1", "text": "a"}]
    for rows, where, words in [
        ("1 0 1 1\n1 0 1\n", ":2:", "4 columns"),
        ("1 0 1 1\n1 0 2 inf\n", ":2:", "finite"),
        ("1 0 1 1\n1 0 1 1\n", ":2:", "duplicate"),
    ]:
        d = beir(tmp_path, rows, corpus, queries)
        with pytest.raises(DataFileError, match=words) as err:
            read_beir(d)
        assert "qrels.tsv" + where in str(err.value)


def test_empty_qrels_file_is_refused(tmp_path):
    d = beir(tmp_path, "")
    with pytest.raises(DataFileError, match=r"qrels\.tsv: .*empty"):
        read_beir(d)


@pytest.mark.parametrize(
    "bad, words",
    [
        ('["d4", "text"]', "not a JSON object"),
        ('"just text"', "not a JSON object"),
        ("{not json", "not JSON"),
        ('{"_id": "d4"}', "keys"),
        ('{"text": "dddd"}', "keys"),
        ('{"_id": null, "text": "dddd"}', "_id"),
        ('{"_id": 4.0, "text": "dddd"}', "_id"),
        ('{"_id": "", "text": "dddd"}', "_id"),
        ('{"_id": "d4", "text": null}', "text"),
        ('{"_id": "d4", "title": 7, "text": "dddd"}', "title"),
        ('{"_id": "d1", "text": "dddd"}', "duplicate _id 'd1' .*line 1"),
    ],
)
def test_corpus_lines_name_file_and_line(tmp_path, bad, words):
    d = beir(tmp_path, BEIR_HEADER + "q1\td1\t1\n")
    write(d / "corpus.jsonl", (d / "corpus.jsonl").read_text() + "\n" + bad + "\n")
    with pytest.raises(DataFileError, match=words) as err:
        read_beir(d)
    assert "corpus.jsonl:5:" in str(err.value)  # 3 documents, a blank line, the bad one


def test_queries_duplicate_and_empty_files(tmp_path):
    d = beir(tmp_path, BEIR_HEADER + "q1\td1\t1\n")
    write(d / "queries.jsonl", '{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n')
    with pytest.raises(DataFileError, match=r"queries\.jsonl:2: duplicate"):
        read_beir(d)
    write(d / "queries.jsonl", "\n")
    with pytest.raises(DataFileError, match=r"queries\.jsonl: .*no queries"):
        read_beir(d)
    write(d / "corpus.jsonl", "")
    with pytest.raises(DataFileError, match=r"corpus\.jsonl: .*no documents"):
        read_beir(d)


def test_jsonl_invalid_utf8_names_the_line(tmp_path):
    d = beir(tmp_path, BEIR_HEADER + "q1\td1\t1\n")
    write(d / "queries.jsonl", b'{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "\xff"}\n')
    with pytest.raises(DataFileError, match=r"queries\.jsonl:2: .*UTF-8"):
        read_beir(d)


# ------------------------------------------------------------------------------- pairs


def test_average_precision_hand_computed():
    # ranked labels 1, 0, 1, 0: precision at the positives 1/1 and 2/3
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0.1, 0.2, 0.3], [1, 1, 0]) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # tied scores form one threshold (as sklearn): precision 1/2 at recall 1
    assert average_precision([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)


def test_average_precision_matches_sklearn_with_ties():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = np.round(rng.normal(size=41), 1)  # many tied scores
        labels = rng.integers(0, 2, 41)
        want = sklearn_metrics.average_precision_score(labels, scores)
        assert average_precision(scores, labels) == pytest.approx(want, abs=1e-12)


PAIRS = (
    "sentence1\tsentence2\tlabel\n"
    "aaa\taaa\t1\n"  # cosine 1
    "aab\taaa\t0\n"  # cosine 2/sqrt(5) = 0.894
    "ab\ta\t1\n"  # cosine 1/sqrt(2) = 0.707
    "abc\txyz\t0\n"  # cosine 0
)
PAIRS_AP = 100 * (1 + 2 / 3) / 2  # ranked labels 1, 0, 1, 0


def test_evaluate_pairs_hand_computed(tmp_path):
    f = write(tmp_path / "pairs.tsv", PAIRS)
    r = evaluate_pairs(BagOfLetters(), f)
    assert r == {"ap": pytest.approx(PAIRS_AP), "pairs": 4, "positives": 2}


def test_pairs_score_column_is_accepted_as_the_label(tmp_path):
    f = write(tmp_path / "pairs.tsv", PAIRS.replace("label", "score") + "")
    assert evaluate_pairs(BagOfLetters(), f)["ap"] == pytest.approx(PAIRS_AP)


@pytest.mark.parametrize(
    "row, words",
    [
        ("x\ty\t2\n", "0 or 1"),
        ("x\ty\t0.5\n", "0 or 1"),
        ("x\ty\tnan\n", "0 or 1"),
        ("x\ty\tyes\n", "0 or 1"),
        ("x\ty\n", "2 columns"),
    ],
)
def test_pairs_labels_must_be_0_or_1(tmp_path, row, words):
    f = write(tmp_path / "pairs.tsv", PAIRS + row)
    with pytest.raises(DataFileError, match=r"pairs\.tsv:6: .*" + words):
        evaluate_pairs(BagOfLetters(), f)


def test_pairs_need_both_labels(tmp_path):
    f = write(tmp_path / "pairs.tsv", "sentence1\tsentence2\tlabel\na\tb\t1\nc\td\t1\n")
    with pytest.raises(DataFileError, match="both"):
        evaluate_pairs(BagOfLetters(), f)
    write(f, "sentence1\tsentence2\n")
    with pytest.raises(DataFileError, match=r"pairs\.tsv:1: .*label"):
        evaluate_pairs(BagOfLetters(), f)


# --------------------------------------------------------------------------------- CLI


def test_cli_bad_inputs_are_one_line_before_the_model_loads(tmp_path, capsys):
    sts = write(tmp_path / "sts.tsv", HEADER + GOOD_STS + "abc\tabd\tnan\n")
    # the model name does not exist: the file is refused first, without loading anything
    assert main(["evaluate", "no-such-model", "--sts", str(sts)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{sts}:5:" in err and "finite" in err
    d = beir(tmp_path, BEIR_HEADER + "q1\td1\tinf\n")
    assert main(["evaluate", "no-such-model", "--retrieval", str(d)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "qrels.tsv:2:" in err and "Overflow" not in err


def test_cli_pairs_figure_printed_and_in_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("fastlm.engine.load", lambda name, backend="auto": BagOfLetters())
    pairs = write(tmp_path / "pairs.tsv", PAIRS)
    sts = write(tmp_path / "sts.tsv", HEADER + GOOD_STS)
    assert main(["evaluate", "m", "--pairs", str(pairs), "--sts", str(sts), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pairs"][str(pairs)] == {"ap": pytest.approx(PAIRS_AP), "pairs": 4, "positives": 2}
    assert out["sts"][str(sts)]["spearman"] == pytest.approx(100.0)
    assert main(["evaluate", "m", "--pairs", str(pairs)]) == 0
    assert f"{pairs}: AP x100 {PAIRS_AP:.2f} (4 pairs, 2 positive)" in capsys.readouterr().out
