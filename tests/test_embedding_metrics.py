"""Embedding metrics and `fastlm evaluate` inputs, checked against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from model_helpers import BagOfLetters

import fastlm
from fastlm.embedding.evaluate import evaluate_retrieval, evaluate_sts, read_beir
from fastlm.embedding.metrics import ndcg_at_k, recall_at_k, spearman, top_k_ids


def test_spearman_hand_computed():
    # ranks a = 1,2,3,4 ; ranks b = 1,3,2,4 -> d^2 = 0,1,1,0 -> rho = 1 - 6*2/(4*15) = 0.8
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_ties_take_average_ranks():
    # a ranks: 1, 2.5, 2.5, 4 ; b ranks: 1, 2, 3, 4 -> Pearson of the ranks
    ra, rb = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    want = (ra * rb).sum() / math.sqrt((ra * ra).sum() * (rb * rb).sum())
    assert spearman([0.1, 0.5, 0.5, 0.9], [1, 2, 3, 4]) == pytest.approx(want)


def test_spearman_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        spearman([1], [1])
    with pytest.raises(ValueError, match="one length"):
        spearman([1, 2], [1, 2, 3])
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_ndcg_hand_computed():
    qrels = {"a": 1, "b": 2}
    # ranked b at 1, x at 2, a at 3: DCG = 2/log2(2) + 1/log2(4) = 2.5 ; IDCG = 2 + 1/log2(3)
    assert ndcg_at_k(["b", "x", "a"], qrels, 10) == pytest.approx(2.5 / (2 + 1 / math.log2(3)))
    assert ndcg_at_k(["x", "y"], qrels, 10) == 0.0
    assert ndcg_at_k(["a", "b"], qrels, 1) == pytest.approx(1 / 2)  # only "a" counted, ideal 2
    assert ndcg_at_k(["x"], {"a": 0}, 10) == 0.0  # judged non-relevant only


def test_recall_hand_computed():
    assert recall_at_k(["a", "x", "b"], {"a": 1, "b": 1, "c": 1}, 2) == pytest.approx(1 / 3)
    assert recall_at_k(["a", "x", "b"], {"a": 1, "b": 1, "c": 1}, 100) == pytest.approx(2 / 3)


def test_top_k_ties_keep_corpus_order():
    scores = np.array([[0.5, 0.9, 0.5, 0.1]])
    assert top_k_ids(scores, ["d0", "d1", "d2", "d3"], 3) == [["d1", "d0", "d2"]]


def test_evaluate_sts_on_hand_made_file(tmp_path):
    f = tmp_path / "sts.tsv"
    f.write_text(
        "sentence1\tsentence2\tscore\n"
        "aaa\taaa\t5\n"  # cosine 1
        "aab\taaa\t3\n"  # cosine 2/sqrt(5)
        "abc\txyz\t0\n",  # cosine 0
        encoding="utf-8",
    )
    r = evaluate_sts(BagOfLetters(), f)
    assert r == {"spearman": pytest.approx(100.0), "pairs": 3}


def test_evaluate_sts_bad_files(tmp_path):
    f = tmp_path / "bad.tsv"
    f.write_text("a\tb\tscore\nx\ty\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing column"):
        evaluate_sts(BagOfLetters(), f)
    f.write_text("sentence1\tsentence2\tscore\nx\ty\tnope\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a number"):
        evaluate_sts(BagOfLetters(), f)


def _beir(tmp_path, qrels_rows):
    d = tmp_path / "beir"
    d.mkdir()
    corpus = [
        {"_id": "d1", "title": "", "text": "aaaa"},
        {"_id": "d2", "title": "bbbb", "text": "bbb"},
        {"_id": "d3", "title": "", "text": "cccc"},
    ]
    queries = [
        {"_id": "q1", "text": "aaa"},
        {"_id": "q2", "text": "bb"},
        {"_id": "q3", "text": "z"},
    ]
    (d / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (d / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (d / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels_rows)
    return d


def test_evaluate_retrieval_hand_computed(tmp_path):
    # q1 -> d1 ranked first (nDCG 1); q2's relevant doc d3 ranks last of 3: 1/log2(4) = 0.5;
    # q3 has no relevant document: skipped.
    d = _beir(tmp_path, "q1\td1\t1\nq2\td3\t1\nq3\td2\t0\n")
    r = evaluate_retrieval(BagOfLetters(), d)
    assert r["queries"] == 2 and r["documents"] == 3
    assert r["ndcg@10"] == pytest.approx(100 * (1 + 0.5) / 2)
    assert r["recall@100"] == pytest.approx(100.0)


def test_read_beir_joins_title_and_rejects_bad_lines(tmp_path):
    d = _beir(tmp_path, "q1\td1\t1\n")
    corpus, queries, qrels = read_beir(d)
    assert corpus["d2"] == "bbbb bbb" and qrels == {"q1": {"d1": 1}}
    (d / "queries.jsonl").write_text('{"_id": "q1"}\n')
    with pytest.raises(ValueError, match="keys"):
        read_beir(d)
    (d / "qrels.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="qrels"):
        read_beir(d)


def test_evaluate_command(tmp_path, small_checkpoints, capsys):
    """`fastlm evaluate` end to end: the JSON carries the figures evaluate_* compute."""
    from fastlm.cli import main

    sts = tmp_path / "sts.tsv"
    sts.write_text(
        "sentence1\tsentence2\tscore\nA cat sat.\tA cat sat.\t5\nA cat sat.\tRain fell.\t0\n"
        "Boats float.\tShips float.\t4\n",
        encoding="utf-8",
    )
    beir = _beir(tmp_path, "q1\td1\t1\nq2\td2\t1\n")
    ckpt = str(small_checkpoints["transformer"])
    args = ["evaluate", ckpt, "--sts", str(sts), "--retrieval", str(beir), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = fastlm.load(ckpt, backend="auto")  # the command's default backend
    want_sts, want_r = evaluate_sts(model, sts), evaluate_retrieval(model, beir)
    assert out["sts"][str(sts)]["pairs"] == want_sts["pairs"] == 3
    assert out["sts"][str(sts)]["spearman"] == pytest.approx(want_sts["spearman"], abs=1e-6)
    r = out["retrieval"][str(beir)]
    assert r["queries"] == 2 and r["documents"] == 3
    assert r == pytest.approx(want_r, abs=1e-6)
    with pytest.raises(SystemExit) as usage:
        main(["evaluate", ckpt, "--sts", str(sts), "--batch-size", "0"])
    assert usage.value.code == 2
    assert main(["evaluate", ckpt]) == 1  # neither --sts nor --retrieval: one-line error
