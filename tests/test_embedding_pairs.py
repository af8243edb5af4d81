"""Weak pair files for contrastive tower training: what is read, skipped and refused."""

from __future__ import annotations

import pytest

from fastlm.embedding.pairs import (
    PairFileError,
    mine_negatives,
    read_pair_files,
    read_pairs_tsv,
    training_pairs,
)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_queries_positives_and_hard_negatives(tmp_path):
    path = write(tmp_path, "t.tsv", 'query\tpositive\tnegative\nq "1"\tp1\tn1\nq2\tp2\t\n')
    pairs = read_pairs_tsv(path)
    assert pairs.queries == ['q "1"', "q2"]
    assert pairs.positives == ["p1", "p2"]
    assert pairs.negatives == ["n1", None]


def test_nli_triples_name_the_query_anchor(tmp_path):
    path = write(tmp_path, "t.tsv", "anchor\tpositive\tnegative\tsplit\na\tp\tn\tdev\n")
    pairs = read_pairs_tsv(path)
    assert (pairs.queries, pairs.positives, pairs.negatives) == (["a"], ["p"], ["n"])
    both = write(tmp_path, "b.tsv", "anchor\tquery\tpositive\na\tq\tp\n")
    assert read_pairs_tsv(both).queries == ["q"]  # query wins where a file has both


def test_mined_negative_is_the_best_other_bm25_hit_never_the_own_positive():
    positives = [
        "volcanic eruptions of lava and ash",
        "volcanic ash clouds ground aircraft",
        "the history of chess openings",
        "the history of chess openings",  # a copy of another row's positive
    ]
    queries = ["lava eruptions", "ash clouds and aircraft", "chess openings", "chess history"]
    mined = mine_negatives(queries, positives, depth=2)
    assert mined[0] == positives[1]  # shares "volcanic", "ash" with the query's own positive
    assert mined[1] == positives[0]
    # the top 2 hold only the own positive and its copy: no negative rather than a false one
    assert mined[2] is None and mined[3] is None


def test_training_pairs_drop_dev_rows_and_dev_negatives(tmp_path):
    dev = {"dev query", "dev passage"}
    fresh = lambda *texts: not dev.intersection(texts)  # noqa: E731
    path = write(
        tmp_path,
        "t.tsv",
        "query\tpositive\tnegative\n"
        "q1\tp1\tn1\n"
        "dev query\tp2\tn2\n"  # the query is a dev text: the row goes
        "q3\tdev passage\tn3\n"  # the positive is: the row goes
        "q4\tp4\tdev passage\n",  # only the negative is: the row stays, without it
    )
    pairs, dropped, mined = training_pairs(path, fresh, mine_depth=5)
    assert (pairs.queries, pairs.positives, pairs.negatives) == (
        ["q1", "q4"],
        ["p1", "p4"],
        ["n1", None],
    )
    assert (dropped, mined) == (2, 0)  # the file has negatives: none mined


def test_training_pairs_mine_negatives_only_where_a_file_has_none(tmp_path):
    rows = [
        ("lava eruptions", "volcanic eruptions of lava and ash"),
        ("ash clouds and aircraft", "volcanic ash clouds ground aircraft"),
        ("chess openings", "the history of chess openings"),
    ]
    text = "query\tpositive\n" + "".join(f"{q}\t{p}\n" for q, p in rows)
    path = write(tmp_path, "t.tsv", text)
    pairs, dropped, mined = training_pairs(path, lambda *t: True, mine_depth=2)
    assert pairs.negatives[0] == rows[1][1] and pairs.negatives[1] == rows[0][1]
    assert (dropped, mined) == (0, sum(n is not None for n in pairs.negatives))
    unmined, _, none = training_pairs(path, lambda *t: True)
    assert unmined.negatives == [None, None, None] and none == 0


def test_extra_columns_are_ignored_and_bom_is_handled(tmp_path):
    path = write(tmp_path, "t.tsv", "\ufeffquery\tpositive\ttitle\nwho\tanswer\tSome title\n")
    pairs = read_pairs_tsv(path)
    assert (pairs.queries, pairs.positives, pairs.negatives) == (["who"], ["answer"], [None])


def test_empty_texts_are_skipped_and_counted(tmp_path):
    a = write(tmp_path, "a.tsv", "query\tpositive\n \tp\nq\tp\n")
    b = write(tmp_path, "b.tsv", "query\tpositive\nq\t\nq2\tp2\n")
    pairs = read_pair_files([a, b])
    assert pairs.queries == ["q", "q2"]
    assert pairs.skipped_empty == 2
    assert len(pairs) == 2


@pytest.mark.parametrize(
    "text, where",
    [
        ("", "empty file"),
        ("query\tanswer\nq\ta\n", ":1: header"),
        ("query\tpositive\nq\tp\nonly one column\n", ":3: 1 columns"),
        ("query\tpositive\nq\tp\textra\n", ":2: 3 columns"),
    ],
)
def test_malformed_files_name_the_file_and_line(tmp_path, text, where):
    path = write(tmp_path, "bad.tsv", text)
    with pytest.raises(PairFileError, match="bad.tsv") as err:
        read_pairs_tsv(path)
    assert where in str(err.value)


def test_read_sick_keeps_one_split_and_names_bad_rows(tmp_path):
    from fastlm.embedding.data import DataFileError, read_sick

    f = tmp_path / "pairs.tsv"
    f.write_text(
        "sentence1\tsentence2\tscore\tsplit\tentailment_label\n"
        "a b\tc d\t4.5\ttrain\tneutral\n"
        "e f\tg h\t1.0\ttrial\tneutral\n"
        "i j\tk l\t3.0\ttrain\tneutral\n",
        encoding="utf-8",
    )
    s1, s2, gold = read_sick(f, "train")
    assert s1 == ["a b", "i j"] and s2 == ["c d", "k l"] and gold.tolist() == [4.5, 3.0]
    with pytest.raises(DataFileError, match="no rows of split 'test'"):
        read_sick(f, "test")
    f.write_text("sentence1\tsentence2\tscore\tsplit\nx\ty\tnot-a-number\ttrial\n")
    with pytest.raises(DataFileError, match=r"pairs.tsv.*2"):
        read_sick(f, "trial")
