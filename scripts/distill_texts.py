"""Write the distillation texts (one JSON string per line) and cache the teacher's vectors.

    python scripts/distill_texts.py --out runs/distill --sentences 80000 --passages 40000

STS-B *train* sentences come first (the domain of the similarity benchmark, allowed for
training), then Gutenberg sentences and passages from the training shards. Run it again to resume:
finished teacher shards are kept.
"""

from __future__ import annotations

import argparse
import csv
import json
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--data", nargs="+", type=Path, default=sorted((DATA / "gutenberg_en").glob("train-*.txt"))
    )
    p.add_argument("--stsb-train", type=Path, default=DATA / "stsb-train" / "sts-train.tsv")
    p.add_argument("--sentences", type=int, default=80000)
    p.add_argument("--passages", type=int, default=40000)
    p.add_argument("--teacher", default="all-MiniLM-L6-v2")
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
        tmp = texts_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
        tmp.replace(texts_path)
    vecs = teacher_vectors(texts, args.out / f"teacher-{args.teacher}", args.teacher)
    print(f"{len(texts)} texts, teacher vectors {vecs.shape}")


if __name__ == "__main__":
    main()
