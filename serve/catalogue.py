"""What the serving side knows about a run: items, users, SIDs, the chat template. Loaded once per
server process from the run directory named by THINKREC_RUN_DIR (set by `thinkrec serve`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from ranking.generate import generation_prompt
from rl.served import served_model_dir
from sft_data.prompts import chat_messages, item_description
from thinkrec.data import Dataset, load_prepared
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir
from tokenizer_ext.sid import SIDIndex, find_sids, parse_sid
from tokenizer_ext.stage import load_index

# a SID-looking span, complete or not, so that malformed ones are caught too
SID_SPAN_HINT = ("<|sid_begin|>", "<s_a_")


def item_label(it, shown: list[tuple[str, str]]) -> str:
    """ "Toy Story (1995) [Animation, Children's, Comedy]", "Mug [Kitchen; Acme; $3.5]": the title, its
    time, then the shown attributes' values (list values joined by commas, units before numbers)."""
    parts = []
    for name, unit in shown:
        value = it.attributes.get(name)
        if isinstance(value, list | tuple):
            value = ", ".join(map(str, value))
        elif isinstance(value, float):
            value = f"{unit}{int(value) if value.is_integer() else value}"
        if value not in (None, ""):
            parts.append(str(value))
    if not shown:
        parts = [", ".join(it.genres)] if it.genres else []
    year = f" ({it.year})" if it.year else ""
    return f"{it.title}{year}" + (f" [{'; '.join(parts)}]" if parts else "")


@dataclass
class Catalogue:
    run: RunDir
    ds: Dataset
    index: SIDIndex
    model_dir: Path
    history_len: int
    align_prompts: bool = True  # search prompts in whole KV blocks (tokenizer_ext.prompt_block)

    @classmethod
    def from_run(cls, run_dir: str | Path, model_dir: str | Path | None = None) -> Catalogue:
        run = RunDir(run_dir)
        ds, index = load_prepared(run), load_index(run)
        if model_dir is None:  # the run's recorded choice by a valid metric (rl/served.py), else SFT, else base
            model_dir = served_model_dir(run)
        return cls(run, ds, index, Path(model_dir), run.history_len())

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model_dir)

    @cached_property
    def shown_attributes(self) -> list[tuple[str, str]]:
        """(name, unit) of the attributes an item's label shows, in the data set config's order: all
        but free text and the time attribute (which follows the title). [] = the primary values."""
        from thinkrec.data.stage import load_run_schema

        schema = load_run_schema(self.run) or {}
        attributes = (schema.get("items") or {}).get("attributes") or {}
        return [(n, a.get("unit", "")) for n, a in attributes.items() if a.get("kind") != "text" and not a.get("time")]

    def item_json(self, idx: int) -> dict:
        """An item as the API returns it: its id, title, every configured attribute, a one-line label
        in the catalogue's own terms and its SID (year and genres: the time and primary attribute)."""
        it = self.ds.items[idx]
        return {
            "item_id": it.item_id,
            "title": it.title,
            "year": it.year,
            "genres": it.genres,
            "attributes": it.attributes,
            "label": item_label(it, self.shown_attributes),
            "sid": self.index.sid(idx),
        }

    def items_in_text(self, text: str) -> tuple[list[dict], list[str]]:
        """Catalogue items named by the SIDs in `text`, and the SIDs that name no item."""
        found, unknown = [], []
        for sid in find_sids(text):
            code = parse_sid(sid)
            idx = self.index.lookup(code)
            if idx is None:
                unknown.append(sid)
            else:
                found.append(self.item_json(idx))
        return found, unknown

    def check_text(self, text: str) -> None:
        """Raise ThinkRecError naming the first SID in `text` that is malformed or not in the catalogue."""
        if not any(h in text for h in SID_SPAN_HINT):
            return
        for sid in find_sids(text):
            self.index.item(sid)  # raises for an unknown or malformed SID

    def history(self, user_id: str | None, item_ids: list[str] | None) -> list[int]:
        if item_ids:
            return [self.ds.item_by_id(str(i)).idx for i in item_ids]
        if user_id is None:
            raise ThinkRecError("give a user_id or a non-empty history of item ids")
        # the whole known sequence: at serving time every interaction is history
        return list(self.ds.user_by_id(str(user_id)).items)

    def messages(self, history: list[int], conversation: list[dict] | None = None) -> list[dict]:
        """The behaviour prompt for `history`, with the user's chat turns (if any) after it, built as
        the request-following training samples are (sft_data/prompts.py)."""
        try:
            return chat_messages(self.ds, self.index, history, self.history_len, conversation)
        except ValueError as e:
            raise ThinkRecError(str(e)) from None

    def sid_prompt(self, messages: list[dict], prefix_text: str = "") -> str:
        """Prompt text that opens the assistant turn (plus `prefix_text`) with <|sid_begin|>, in whole
        KV blocks: each branch of the search then computes only its own code tokens."""
        return generation_prompt(self.tokenizer, messages, prefix_text, aligned=self.align_prompts)

    def describe(self, idx: int) -> str:
        return item_description(self.ds, idx)


@lru_cache(maxsize=1)
def server_catalogue() -> Catalogue:
    run_dir = os.environ.get("THINKREC_RUN_DIR")
    if not run_dir:
        raise ThinkRecError("THINKREC_RUN_DIR is not set; start the server with `thinkrec serve RUN_DIR`")
    cat = Catalogue.from_run(run_dir, os.environ.get("THINKREC_MODEL_DIR") or None)
    cat.align_prompts = os.environ.get("THINKREC_ALIGN_PROMPTS", "1") != "0"
    return cat
