"""A CLIP tokenizer whose vocabulary is the shapes world's words.

The vocabulary holds the 256 byte characters (alone and with the end-of-word mark `</w>`),
so any text still tokenizes, plus every world word as one token, reached through BPE merges
that build the word left to right. Captions are short, so the context is 16 tokens, not 77.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

__all__ = ["build_world_tokenizer", "byte_level_alphabet", "word_merges", "CONTEXT_LENGTH"]

CONTEXT_LENGTH = 16
END_OF_WORD = "</w>"


def byte_level_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values.

    Printable Latin-1 bytes stand for themselves; the others are mapped, in order, to the
    code points from 256 up, so every byte has a visible, non-whitespace character.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def word_merges(word: str) -> list[tuple[str, str]]:
    """The merges that join `word`'s characters into the single token `word</w>`, left to right:
    ('r', 'e'), ('re', 'd</w>') for 'red'."""
    if len(word) < 2:
        return []
    merges, prefix = [], word[0]
    for i, char in enumerate(word[1:], start=1):
        piece = char + END_OF_WORD if i == len(word) - 1 else char
        merges.append((prefix, piece))
        prefix += char
    return merges


def build_world_tokenizer(directory: str | Path, words: list[str], context_length: int = CONTEXT_LENGTH) -> CLIPTokenizer:
    """Write vocab.json / merges.txt for `words` under `directory` and load them.

    Raises ValueError if a word would not come out as one token (a merge of one word firing
    inside another), naming the word and what it became.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = byte_level_alphabet()
    tokens = chars + [c + END_OF_WORD for c in chars]
    merges: list[tuple[str, str]] = []
    # Longest words first: their merges outrank the shorter words' ones, whose pieces (the
    # "gr" of "green") could otherwise fire inside them ("background") and block their chain.
    for word in sorted(set(words), key=lambda w: (-len(w), w)):
        for left, right in word_merges(word):
            if (left, right) not in merges:
                merges.append((left, right))
                if left + right not in tokens:
                    tokens.append(left + right)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer.from_pretrained(str(directory), model_max_length=context_length)
    for word in words:
        pieces = tokenizer.tokenize(word)
        if pieces != [word + END_OF_WORD]:
            raise ValueError(f"words: {word!r} tokenizes to {pieces}, not to one token; reorder or rename it")
    return tokenizer
