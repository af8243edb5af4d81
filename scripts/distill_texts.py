"""Write the distillation texts (one JSON string per line) and cache the teacher's vectors.

    python scripts/distill_texts.py --out runs/distill --sentences 80000 --passages 40000
    python scripts/distill_texts.py --out runs/distill-wide --corpora ../shared/data/train-corpora \
        --sentences 30000 --passages 15000

STS-B *train* sentences come first (the domain of the similarity benchmark, allowed for
training), then Gutenberg sentences and passages from the training shards; `--corpora` adds every
text of the non-fiction training corpora (paragraphs, titles, questions, abstracts, reviews) and
SICK *train* sentences, shuffled with a fixed seed so that any finished prefix of the cache is a
fair sample. Run it again to resume: finished teacher shards are kept. Dev rows are never read.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

from fastlm.embedding.corpus import extract_texts
from fastlm.embedding.teacher import teacher_vectors

DATA = Path("../shared/data")


def stsb_sentences(path: Path) -> list[str]:
    seen: dict[str, None] = {}
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            seen.setdefault(row["sentence1"], None)
            seen.setdefault(row["sentence2"], None)
    return list(seen)


def corpus_texts(root: Path, sick: Path | None) -> list[str]:
    """Every distinct text of the training corpora under `root`: text.txt lines and each column
    of the pair files (query, positive, negative; not the NQ title column), plus SICK train
    sentences. Texts under 3 characters are dropped."""
    seen: dict[str, None] = {}
    for path in sorted(root.glob("*/*")):
        with open(path, encoding="utf-8") as f:
            if path.suffix == ".txt":
                rows = ([line] for line in f)
            else:
                reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                next(reader)  # header
                rows = (row[:3] if path.parent.name != "nq_qed" else row[:2] for row in reader)
            for row in rows:
                for text in row:
                    text = text.strip()
                    if len(text) >= 3:
                        seen.setdefault(text, None)
    if sick is not None and sick.exists():
        with open(sick, encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                if row["split"] == "train":
                    seen.setdefault(row["sentence1"], None)
                    seen.setdefault(row["sentence2"], None)
    return list(seen)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--data", nargs="+", type=Path, default=sorted((DATA / "gutenberg_en").glob("train-*.txt"))
    )
    p.add_argument("--stsb-train", type=Path, default=DATA / "stsb-train" / "sts-train.tsv")
    p.add_argument("--sentences", type=int, default=80000)
    p.add_argument("--passages", type=int, default=40000)
    p.add_argument("--corpora", type=Path, help="also every text of these training corpora")
    p.add_argument("--sick", type=Path, default=DATA / "pairs" / "sick" / "pairs.tsv")
    p.add_argument("--teacher", default="all-MiniLM-L6-v2")
    p.add_argument(
        "--max-tokens",
        type=int,
        help="the teacher reads at most this many word pieces (default: its own 256)",
    )
    args = p.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    texts_path = args.out / "texts.jsonl"
    if texts_path.exists():
        texts = [json.loads(line) for line in texts_path.open(encoding="utf-8")]
    else:
        sts = stsb_sentences(args.stsb_train) if args.stsb_train.exists() else []
        book, stats = extract_texts(args.data, args.sentences, args.passages)
        print(f"{len(sts)} STS-B train sentences; books: {stats}")
        texts = sts + [t for t in book if t not in set(sts)]
        if args.corpora:
            known = set(texts)
            wide = [t for t in corpus_texts(args.corpora, args.sick) if t not in known]
            print(f"{len(wide)} texts from {args.corpora} and SICK train")
            texts += wide
            random.Random(0).shuffle(texts)
        tmp = texts_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
        tmp.replace(texts_path)
    cache = args.out / f"teacher-{args.teacher}"
    vecs = teacher_vectors(texts, cache, args.teacher, max_tokens=args.max_tokens)
    print(f"{len(texts)} texts, teacher vectors {vecs.shape}")


if __name__ == "__main__":
    main()
