"""Semantic-ID vocabulary, the item <-> SID index and the prefix trie of valid codes.

A SID is written `<|sid_begin|><s_a_12><s_b_3><s_c_40><|sid_end|>`: one token per level, each level
with its own token range so that the same number at different depths means different things.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from thinkrec.errors import ThinkRecError

SID_BEGIN = "<|sid_begin|>"
SID_END = "<|sid_end|>"
MODEL_SID_FILE = "thinkrec_sid_index.json"  # every ThinkRec model folder carries its SID index
LEVEL_NAMES = "abcdefgh"
_CODE_RE = re.compile(r"<s_([a-h])_(\d+)>")
_SID_RE = re.compile(re.escape(SID_BEGIN) + r"((?:<s_[a-h]_\d+>)+)" + re.escape(SID_END))


def code_token(level: int, code: int) -> str:
    return f"<s_{LEVEL_NAMES[level]}_{code}>"


def sid_tokens(levels: int, codebook_size: int) -> list[str]:
    """Every token the SIDs need, in a fixed order (begin, end, then level by level)."""
    return [SID_BEGIN, SID_END] + [code_token(lv, c) for lv in range(levels) for c in range(codebook_size)]


def sid_string(code: tuple[int, ...] | list[int]) -> str:
    return SID_BEGIN + "".join(code_token(lv, int(c)) for lv, c in enumerate(code)) + SID_END


def parse_sid(text: str) -> tuple[int, ...]:
    """The code of one SID string; ThinkRecError names what is wrong with a malformed one."""
    m = _SID_RE.fullmatch(text.strip())
    if not m:
        raise ThinkRecError(f"not a semantic ID: {text!r} (expected {SID_BEGIN}<s_a_N>...{SID_END})")
    parts = _CODE_RE.findall(m.group(1))
    for lv, (name, _) in enumerate(parts):
        if name != LEVEL_NAMES[lv]:
            raise ThinkRecError(f"semantic ID {text!r}: level {lv + 1} token should be <s_{LEVEL_NAMES[lv]}_N>")
    return tuple(int(n) for _, n in parts)


def find_sids(text: str) -> list[str]:
    """Every complete SID string in a generated text, in order."""
    return [m.group(0) for m in _SID_RE.finditer(text)]


def prefix_counts(codes: Iterable[tuple[int, ...]]) -> Counter:
    """How many of `codes` lie under each prefix, the empty one included."""
    return Counter(c[:d] for c in codes for d in range(len(c) + 1))


@dataclass
class SIDIndex:
    """Item index <-> code, plus the trie of valid prefixes for constrained decoding."""

    codes: list[tuple[int, ...]]  # codes[item_idx]
    levels: int
    codebook_size: int

    def __post_init__(self) -> None:
        self.item_of = {c: i for i, c in enumerate(self.codes)}
        if len(self.item_of) != len(self.codes):
            raise ThinkRecError("SID index has duplicate codes")
        self.trie: dict[tuple[int, ...], set[int]] = {}
        for c in self.codes:
            for depth in range(self.levels):
                self.trie.setdefault(c[:depth], set()).add(c[depth])
        # items under each prefix: a search skips a subtree once all of them are excluded
        self.items_under = prefix_counts(self.codes)

    def sid(self, item_idx: int) -> str:
        if not 0 <= item_idx < len(self.codes):
            raise ThinkRecError(f"unknown item index {item_idx} (catalogue has {len(self.codes)} items)")
        return sid_string(self.codes[item_idx])

    def item(self, sid: str) -> int:
        code = parse_sid(sid)
        if code not in self.item_of:
            raise ThinkRecError(f"semantic ID {sid} is not in the catalogue")
        return self.item_of[code]

    def lookup(self, code: tuple[int, ...]) -> int | None:
        return self.item_of.get(tuple(code))

    def next_codes(self, prefix: tuple[int, ...]) -> set[int]:
        """Codes that may follow `prefix` (empty when the prefix is complete or invalid)."""
        return self.trie.get(tuple(prefix), set())

    def save(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                {"levels": self.levels, "codebook_size": self.codebook_size, "codes": [list(c) for c in self.codes]}
            )
        )

    @classmethod
    def load(cls, path: Path) -> SIDIndex:
        try:
            data = json.loads(Path(path).read_text())
            return cls([tuple(c) for c in data["codes"]], int(data["levels"]), int(data["codebook_size"]))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ThinkRecError(f"SID index {path} is unreadable or corrupt ({e})") from None


class TokenTrie:
    """The SID trie in token-id space, for decoding: from the codes generated since the last
    <|sid_begin|>, the allowed next token ids. Lookups are dict hits, O(1) per row and step, and
    the table holds one entry per trie node, so it stays small for million-item catalogues."""

    def __init__(self, index: SIDIndex, tokenizer_or_vocab) -> None:
        vocab = tokenizer_or_vocab if isinstance(tokenizer_or_vocab, dict) else tokenizer_or_vocab.get_vocab()
        missing = [t for t in sid_tokens(index.levels, index.codebook_size) if t not in vocab]
        if missing:
            raise ThinkRecError(f"tokenizer lacks SID tokens (e.g. {missing[:3]}); was it extended?")
        self.index = index
        self.begin_id = vocab[SID_BEGIN]
        self.end_id = vocab[SID_END]
        self.levels = index.levels
        self.level_ids = [[vocab[code_token(lv, c)] for c in range(index.codebook_size)] for lv in range(index.levels)]
        self.code_of_id = {tid: (lv, c) for lv, ids in enumerate(self.level_ids) for c, tid in enumerate(ids)}
        self.code_ids = sorted(self.code_of_id)
        self.allowed_by_prefix: dict[tuple[int, ...], list[int]] = {
            prefix: sorted(self.level_ids[len(prefix)][c] for c in nxt) for prefix, nxt in index.trie.items()
        }
        self.all_sid_ids = {self.begin_id, self.end_id, *self.code_of_id}

    @classmethod
    def from_model_dir(cls, path: Path) -> TokenTrie:
        """The trie of a ThinkRec model folder (its SID index file and tokenizer.json)."""
        from tokenizers import Tokenizer

        path = Path(path)
        index = SIDIndex.load(path / MODEL_SID_FILE)
        tok_file = path / "tokenizer.json"
        if not tok_file.exists():
            raise ThinkRecError(f"{path} has no tokenizer.json")
        return cls(index, Tokenizer.from_file(str(tok_file)).get_vocab(with_added_tokens=True))

    def allowed(self, prefix: tuple[int, ...]) -> list[int]:
        """Allowed token ids inside an open SID whose codes so far are `prefix`. A prefix off the
        trie (only possible from a bad prompt) gets <|sid_end|>, closing the SID at once."""
        if len(prefix) >= self.levels:
            return [self.end_id]
        return self.allowed_by_prefix.get(tuple(prefix)) or [self.end_id]

    def allowed_after(self, token_ids_since_begin: list[int]) -> list[int]:
        """Allowed ids after <|sid_begin|> followed by `token_ids_since_begin` (an open SID)."""
        if len(token_ids_since_begin) >= self.levels:
            return [self.end_id]
        prefix = tuple(self.code_of_id.get(t, (-1, -1))[1] for t in token_ids_since_begin)
        return self.allowed_by_prefix.get(prefix, [])

    def step(self, prefix: tuple[int, ...] | None, token: int) -> tuple[int, ...] | None:
        """The open-SID state after `token`: the codes since <|sid_begin|>, or None outside a SID."""
        if token == self.begin_id:
            return ()
        if prefix is None or token == self.end_id:
            return None
        hit = self.code_of_id.get(token)
        if hit is None or hit[0] != len(prefix):
            return None
        return (*prefix, hit[1])

    def open_prefix(self, token_ids: list[int]) -> tuple[int, ...] | None:
        """If `token_ids` ends inside an open SID, its codes so far; otherwise None."""
        for back in range(1, min(self.levels + 1, len(token_ids)) + 1):
            t = token_ids[-back]
            if t == self.begin_id:
                prefix: tuple[int, ...] | None = ()
                for u in token_ids[len(token_ids) - back + 1 :]:
                    prefix = self.step(prefix, u)
                return prefix
            if t not in self.code_of_id:
                return None
        return None

    def decode_codes(self, token_ids: list[int]) -> tuple[int, ...] | None:
        """The code spelled by `levels` code-token ids, or None if any is not the right level's token."""
        out = []
        for lv, t in enumerate(token_ids[: self.levels]):
            hit = self.code_of_id.get(int(t))
            if hit is None or hit[0] != lv:
                return None
            out.append(hit[1])
        return tuple(out) if len(out) == self.levels else None
