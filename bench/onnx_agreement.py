"""How closely the ONNX text tower (what the query engine runs texts through) agrees with PyTorch's.

The README's "same results"; tests/test_query_tools.py holds the tiny model to the same measures.

    python bench/onnx_agreement.py [--model clipsearch-tiny|ViT-B-32 ...] [--pictures 20000]

For each model (random weights: no download needed; the arithmetic is what is compared), the text
tower is exported exactly as `search query` exports it, 200 prompts (20 of the paper's templates × 10
labels) are embedded both ways, and each prompt searches the same set of random unit vectors. Prints
the lowest and median cosine between the two embeddings, the largest score difference, and how many
prompts get the identical top-10 in the identical order.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings

import numpy as np

LABELS = ("dog", "cat", "red bicycle", "beach at sunset", "receipt", "screenshot of code", "golden retriever",
          "mountain lake", "birthday cake", "a person smiling")


def agreement(model: str, pictures: int) -> dict:
    from encoders import PAPER_TEMPLATES, ModelSpec, load_encoder
    from encoders.text.export import export_text_tower
    from encoders.text.onnx_runtime import OnnxTextEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder = load_encoder(ModelSpec.from_options(model, "none", None))
    with tempfile.TemporaryDirectory() as folder:
        export_text_tower(encoder, folder)
        onnx = OnnxTextEncoder.for_library(folder, encoder.fingerprint.id)
        texts = [t.format(label) for label in LABELS for t in PAPER_TEMPLATES[:20]]
        fast, slow = onnx.encode_texts(texts), encoder.encode_texts(texts)
    cosines = (fast * slow).sum(axis=1)
    rng = np.random.default_rng(0)
    library = rng.standard_normal((pictures, encoder.dim)).astype(np.float32)
    library /= np.linalg.norm(library, axis=1, keepdims=True)
    fast_scores, slow_scores = library @ fast.T, library @ slow.T
    top = lambda scores: np.argsort(-scores, axis=0, kind="stable")[:10].T  # noqa: E731
    same = int((top(fast_scores) == top(slow_scores)).all(axis=1).sum())
    return {"model": model, "texts": len(texts), "min_cosine": float(cosines.min()),
            "median_cosine": float(np.median(cosines)),
            "max_score_diff": float(np.abs(fast_scores - slow_scores).max()), "identical_top10": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="open_clip architecture (repeatable)")
    parser.add_argument("--pictures", type=int, default=20_000, help="random unit vectors searched")
    args = parser.parse_args()
    for model in args.model or ["clipsearch-tiny", "ViT-B-32"]:
        r = agreement(model, args.pictures)
        print(f"{r['model']:>16}: {r['texts']} prompts, cosine min {r['min_cosine']:.7f} median "
              f"{r['median_cosine']:.7f}, max score difference {r['max_score_diff']:.1e}, identical top-10 "
              f"{r['identical_top10']}/{r['texts']} over {args.pictures:,} vectors")


if __name__ == "__main__":
    main()
