"""CLIP's BPE tokenizer, built offline: the same ids as OpenAI's CLIP, with no file downloaded.

The tokenizer of every tiny pipeline (the proving ground's backbone, the SD 2.x / SDXL
stand-ins) and of the full-size architectures the benchmarks build; SD's text encoders all
read CLIP's 49,408 BPE ids.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

from transformers import CLIPTokenizer


@functools.cache
def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocab and merges, rebuilt in memory from the BPE file open_clip ships.

    Same construction as open_clip's SimpleTokenizer (and OpenAI's CLIP): 256 byte symbols,
    their `</w>` forms, the first 48,894 merges, then the two special tokens = 49,408 ids.
    """
    import open_clip

    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    byte_symbols = list(_bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode map."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def clip_tokenizer() -> CLIPTokenizer:
    """The real CLIP tokenizer (same ids as OpenAI's), with no file written anywhere."""
    vocab, merges = _clip_bpe()
    # model_max_length is not stored in a bare vocab: CLIP's text context is 77 tokens.
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77)


def write_clip_tokenizer_files(folder: Path) -> None:
    """CLIP's BPE as the hub's SD 2.x and SDXL checkpoints ship their tokenizers: vocab.json and
    merges.txt, which `CLIPTokenizer.from_pretrained` reads (with the folder's
    tokenizer_config.json) into the tokenizer `clip_tokenizer` builds. Without a tokenizer.json
    beside them: transformers parses that file several times a load, in Python (the load's cost
    is in docs/environment.md)."""
    vocab, merges = _clip_bpe()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
