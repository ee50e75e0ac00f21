"""Stage `chat-eval`: does the model listen? Held-out users (never asked in training) and held-out
phrasings (never trained on) of every request kind in sft_data/requests.py, through the chat path
the server runs: the model writes its reply, then the constrained beam search after that reply
gives the items, seen and already shown items excluded.

  (a) per kind, share of the top-k that satisfies the request, against the same users' list with
      no request (behaviour prompt);
  (b) Recall/NDCG@K of the test item with a request derived from it, and without a request;
  (c) two turns: no item of the first answer comes again, and the follow-up's constraint is met;
  (d) replies: non-empty, naming the requested attribute, naming a title from the history shown;
  (e) plain Recall/NDCG@K (no request) of the asked model and, when given, a behaviour-only model,
      on the chat users or on the first `plain_users` users (94 users move Recall@10 by 0.04 in
      either direction by chance; all 943 settle it), with a paired bootstrap interval of the gap.
Writes <run>/eval/chat_eval.json.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from backbone.llm import load_causal_lm
from ranking.generate import beam_recommend
from rl.served import served_model_dir
from serve.understand import RequestReader, settle, tidy_reply
from sft_data.prompts import TITLED, chat_messages
from sft_data.qa import is_heldout_user
from sft_data.requests import (
    FOLLOW_UPS,
    KINDS,
    Constraint,
    counterfactual,
    derive,
    follow_up,
    parse_reply,
    phrase,
    unsatisfying,
)
from thinkrec.config import ChatEvalConfig
from thinkrec.data import Dataset, load_prepared
from thinkrec.errors import ThinkRecError
from thinkrec.metrics import hits_at, rank_metrics
from thinkrec.rundir import RunDir
from tokenizer_ext.sid import SID_BEGIN, SIDIndex, TokenTrie
from tokenizer_ext.stage import load_index


@torch.no_grad()
def write_replies(model, tok, prompts: list[list[dict]], max_tokens: int, batch_size: int) -> list[str]:
    """Greedy replies up to the first <|sid_begin|>, as the server's chat writes them."""
    tok.padding_side = "left"
    stop = [tok.convert_tokens_to_ids(SID_BEGIN), tok.eos_token_id]
    out: list[str] = []
    for s in tqdm(range(0, len(prompts), batch_size), desc="replies", leave=False):
        texts = [
            tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in prompts[s : s + batch_size]
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        gen = model.generate(
            **enc, max_new_tokens=max_tokens, do_sample=False, eos_token_id=stop, pad_token_id=tok.pad_token_id
        )
        for row in gen[:, enc["input_ids"].shape[1] :]:
            out.append(
                tok.decode(row, skip_special_tokens=False).split(SID_BEGIN)[0].replace(tok.eos_token, "").strip()
            )
    return out


class Asker:
    """One model behind the chat path: replies, then the top-k after them."""

    def __init__(self, model, tok, ds: Dataset, index: SIDIndex, history_len: int, cfg: ChatEvalConfig):
        self.model, self.tok, self.ds, self.index, self.cfg = model, tok, ds, index, cfg
        self.reader = RequestReader(ds)  # the served chat's reading of the user's words (serve/understand.py)
        self.history_len, self.trie = history_len, TokenTrie(index, tok)

    def top_k(self, prompts: list[list[dict]], excluded: list[set[int]], prefixes: list[str] | None) -> list[list[int]]:
        codes = [{self.index.codes[i] for i in e} for e in excluded]
        res = beam_recommend(
            self.model,
            self.tok,
            self.trie,
            self.index.lookup,
            prompts,
            self.cfg.chat_beams,
            self.cfg.chat_batch_size,
            modes=(True,),
            desc="items",
            exclude=codes,
            answer_prefixes=prefixes,
        )[True]
        return [
            [i for i in found if i not in e][: self.cfg.chat_k] for found, e in zip(res.items, excluded, strict=True)
        ]

    def chat(
        self,
        histories: list[list[int]],
        conversations: list[list[dict]],
        shown: list[set[int]],
        previous: list[list[int]] | None = None,
        unchecked: bool = False,
    ):
        """(replies, top-k items, unchecked items) for each conversation, which ends with a user
        turn. As the served chat does, the items keep to what the reply says it heard (parse_reply);
        `previous[i]` is the answer before, for follow-ups such as "something different". With
        `unchecked`, also the items after the same reply without that check (what the LLM alone does)."""
        prompts = [
            chat_messages(self.ds, self.index, h, self.history_len, c)
            for h, c in zip(histories, conversations, strict=True)
        ]
        replies = write_replies(self.model, self.tok, prompts, self.cfg.reply_tokens, self.cfg.chat_batch_size)
        replies = [tidy_reply(r) for r in replies]  # as the server cuts them
        previous = previous or [[] for _ in histories]
        heard = [parse_reply(self.ds, r, p) for r, p in zip(replies, previous, strict=True)]
        # as the server does: the user's words, read by meaning, win where the reply's reading misses them
        for k, conversation in enumerate(conversations):
            said = self.reader.read(conversation[-1]["content"]) if conversation[-1]["role"] == "user" else None
            heard[k] = settle(heard[k], said)
        excluded = [set(h) | s | unsatisfying(self.ds, c) for h, s, c in zip(histories, shown, heard, strict=True)]
        prefixes = [r + " " if r else "" for r in replies]
        items = self.top_k(prompts, excluded, prefixes)
        seen = [set(h) | s for h, s in zip(histories, shown, strict=True)]
        return replies, items, self.top_k(prompts, seen, prefixes) if unchecked else None

    def plain(self, histories: list[list[int]]) -> list[list[int]]:
        prompts = [chat_messages(self.ds, self.index, h, self.history_len) for h in histories]
        return self.top_k(prompts, [set(h) for h in histories], None)


def plain_user_ids(n_users: int, chat_users: list[int], plain_users: int) -> list[int]:
    """Users of the plain comparison (e): the chat users (0), or the first `plain_users` of all."""
    if plain_users < 0:
        raise ThinkRecError("plain_users must be >= 0 (0 = the chat users)")
    return list(chat_users) if plain_users == 0 else list(range(min(plain_users, n_users)))


def paired_bootstrap_ci(ours: list[float], theirs: list[float], seed: int, rounds: int = 2000) -> list[float]:
    """95% interval of mean(ours) - mean(theirs) over users resampled with replacement (paired:
    both models answer the same users, so the users' own difficulty cancels out)."""
    diff = np.asarray(ours) - np.asarray(theirs)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(rounds, len(diff)))].mean(axis=1)
    return [round(float(np.quantile(means, 0.025)), 4), round(float(np.quantile(means, 0.975)), 4)]


def _share(items: list[int], c: Constraint, ds: Dataset) -> float:
    return sum(c.satisfied(ds.items[i]) for i in items) / len(items) if items else 0.0


def _mean(xs: list[float]) -> float:
    return round(sum(xs) / len(xs), 4) if xs else float("nan")


def run_chat_eval(cfg: ChatEvalConfig, run: RunDir) -> dict:
    if min(cfg.chat_users, cfg.chat_k, cfg.chat_beams, cfg.reply_tokens, cfg.chat_batch_size) < 1:
        raise ThinkRecError("chat_users, chat_k, chat_beams, reply_tokens and chat_batch_size must be >= 1")
    t0 = time.time()
    ds, index = load_prepared(run), load_index(run)
    history_len = run.history_len()
    model_dir = Path(cfg.chat_model_dir) if cfg.chat_model_dir else served_model_dir(run)
    tok, model = load_causal_lm(model_dir, accelerate=True)
    ask = Asker(model, tok, ds, index, history_len, cfg)
    users = [p for p in range(len(ds.users)) if is_heldout_user(p)][: cfg.chat_users]
    hist = [ds.users[p].history_for("test") for p in users]
    test = [ds.users[p].target_for("test") for p in users]
    rng = random.Random(cfg.seed)
    plain_ids = plain_user_ids(len(ds.users), users, cfg.plain_users)
    asked = sorted(set(plain_ids) | set(users))  # the chat users' plain lists are the baseline of (a) and (b)
    plain_hist = {p: ds.users[p].history_for("test") for p in asked}
    plain_all = dict(zip(asked, ask.plain([plain_hist[p] for p in asked]), strict=True))
    plain = [plain_all[p] for p in users]
    plain_test = [ds.users[p].target_for("test") for p in plain_ids]

    # (a) every kind, a counterfactual request per user in a held-out phrasing
    per_kind, reply_named, reply_title, nonempty = {}, [], [], []
    titles = [{ds.items[i].title for i in h[-history_len:][-TITLED:]} for h in hist]
    for kind in KINDS:
        asks = [(u, c) for u in range(len(users)) if (c := counterfactual(kind, ds, hist[u], rng)) is not None]
        if not asks:
            continue
        convs = [[{"role": "user", "content": phrase(c, rng, heldout=True)}] for _, c in asks]
        replies, items, unchecked = ask.chat([hist[u] for u, _ in asks], convs, [set()] * len(asks), unchecked=True)
        chat_share = [_share(it, c, ds) for it, (_, c) in zip(items, asks, strict=True)]
        base_share = [_share(plain[u], c, ds) for u, c in asks]
        alone = [_share(it, c, ds) for it, (_, c) in zip(unchecked, asks, strict=True)]
        per_kind[kind] = {
            "asked": len(asks),
            "satisfaction_model_only": _mean(alone),
            "satisfaction_chat": _mean(chat_share),
            "satisfaction_unconditioned": _mean(base_share),
        }
        for r, (u, c) in zip(replies, asks, strict=True):
            nonempty.append(bool(r))
            reply_named.append(c.named_in(r))
            reply_title.append(any(t in r for t in titles[u]))
        per_kind[kind]["example"] = {"request": convs[0][0]["content"], "reply": replies[0]}

    # (b) a request derived from the test item itself
    derived = []
    for u in range(len(users)):
        for kind in rng.sample(KINDS, len(KINDS)):
            if (c := derive(kind, ds, hist[u], test[u], rng)) is not None:
                derived.append((u, c))
                break
    convs = [[{"role": "user", "content": phrase(c, rng, heldout=True)}] for _, c in derived]
    _, with_req, _ = ask.chat([hist[u] for u, _ in derived], convs, [set()] * len(derived))
    ks = [5, cfg.chat_k] if cfg.chat_k != 5 else [5]
    m_with = rank_metrics(with_req, [test[u] for u, _ in derived], ks)
    m_plain = rank_metrics([plain_all[p] for p in plain_ids], plain_test, [cfg.chat_k])
    m_without = rank_metrics([plain[u] for u, _ in derived], [test[u] for u, _ in derived], ks)

    # (c) a second turn: a follow-up about the first answer's top item
    first_conv = [
        [{"role": "user", "content": phrase(counterfactual("genre", ds, h, rng), rng, heldout=True)}] for h in hist
    ]
    r1, items1, _ = ask.chat(hist, first_conv, [set()] * len(hist))
    second, convs2, shown2, prev2 = [], [], [], []
    for u, (conv, reply, items) in enumerate(zip(first_conv, r1, items1, strict=True)):
        f = follow_up(FOLLOW_UPS[u % len(FOLLOW_UPS)], ds, items[0], rng) if items else None
        if f is None:
            continue
        said = f"{reply} {' '.join(index.sid(i) for i in items)}".strip()
        convs2.append(
            [*conv, {"role": "assistant", "content": said}, {"role": "user", "content": phrase(f, rng, heldout=True)}]
        )
        second.append((u, f))
        shown2.append(set(items))
        prev2.append(items)
    r2, items2, _ = ask.chat([hist[u] for u, _ in second], convs2, shown2, prev2)
    repeats = [bool(set(it) & s) for it, s in zip(items2, shown2, strict=True)]
    follow_share = [_share(it, f, ds) for it, (_, f) in zip(items2, second, strict=True)]
    for r, (_, f) in zip(r2, second, strict=True):
        nonempty.append(bool(r))
        reply_named.append(f.named_in(r))

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "model": str(model_dir),
        "users": len(users),
        "k": cfg.chat_k,
        "satisfaction_chat": _mean([v["satisfaction_chat"] for v in per_kind.values()]),
        "satisfaction_unconditioned": _mean([v["satisfaction_unconditioned"] for v in per_kind.values()]),
        # the LLM's items after its own reply, before the served check keeps them to what it heard
        "satisfaction_model_only": _mean([v["satisfaction_model_only"] for v in per_kind.values()]),
        "per_kind": per_kind,
        f"recall@{cfg.chat_k}_with_request": m_with[f"recall@{cfg.chat_k}"],
        f"recall@{cfg.chat_k}_without_request": m_without[f"recall@{cfg.chat_k}"],
        f"ndcg@{cfg.chat_k}_with_request": m_with[f"ndcg@{cfg.chat_k}"],
        f"ndcg@{cfg.chat_k}_without_request": m_without[f"ndcg@{cfg.chat_k}"],
        "derived_requests": len(derived),
        "multi_turn": {
            "conversations": len(second),
            "repeat_rate": _mean([float(x) for x in repeats]),
            "follow_up_satisfaction": _mean(follow_share),
            "per_follow_up": {
                k: _mean([s for s, (_, f) in zip(follow_share, second, strict=True) if f.kind == k]) for k in FOLLOW_UPS
            },
        },
        "replies": {
            "turns": len(nonempty),
            "non_empty": _mean([float(x) for x in nonempty]),
            "names_attribute": _mean([float(x) for x in reply_named]),
            "names_history_title": _mean([float(x) for x in reply_title]),
        },
        "plain_users": len(plain_ids),
        f"plain_recall@{cfg.chat_k}": m_plain[f"recall@{cfg.chat_k}"],
        f"plain_ndcg@{cfg.chat_k}": m_plain[f"ndcg@{cfg.chat_k}"],
        f"plain_recall@{cfg.chat_k}_sft_only": None,
        f"plain_ndcg@{cfg.chat_k}_sft_only": None,
    }
    if cfg.compare_model_dir:
        other_tok, other = load_causal_lm(cfg.compare_model_dir, accelerate=True)
        ranked = Asker(other, other_tok, ds, index, history_len, cfg).plain([plain_hist[p] for p in plain_ids])
        m = rank_metrics(ranked, plain_test, [cfg.chat_k])
        report[f"plain_recall@{cfg.chat_k}_sft_only"] = m[f"recall@{cfg.chat_k}"]
        report[f"plain_ndcg@{cfg.chat_k}_sft_only"] = m[f"ndcg@{cfg.chat_k}"]
        ours = hits_at([plain_all[p] for p in plain_ids], plain_test, cfg.chat_k)
        theirs = hits_at(ranked, plain_test, cfg.chat_k)
        report[f"plain_recall@{cfg.chat_k}_gap_ci95"] = paired_bootstrap_ci(ours, theirs, cfg.seed)
        report["compare_model"] = cfg.compare_model_dir
    report["seconds"] = round(time.time() - t0, 1)
    out = run.sub("eval") / "chat_eval.json"
    out.write_text(json.dumps(report, indent=2))
    return report


def format_chat_table(r: dict) -> str:
    k = r["k"]
    lines = [f"request following on {r['users']} held-out users, held-out phrasings, top-{k}", ""]
    lines.append(f"{'kind':<12} {'asked':>5} {'chat':>6} {'no request':>10} {'LLM alone':>9}")
    for kind, v in r["per_kind"].items():
        lines.append(
            f"{kind:<12} {v['asked']:>5} {v['satisfaction_chat']:>6.3f} {v['satisfaction_unconditioned']:>10.3f}"
            f" {v['satisfaction_model_only']:>9.3f}"
        )
    lines.append(
        f"{'mean':<12} {'':>5} {r['satisfaction_chat']:>6.3f} {r['satisfaction_unconditioned']:>10.3f}"
        f" {r['satisfaction_model_only']:>9.3f}"
    )
    lines.append("")
    lines.append(
        f"Recall@{k} of the test item: with a request derived from it {r[f'recall@{k}_with_request']:.3f}, "
        f"without {r[f'recall@{k}_without_request']:.3f}"
    )
    mt = r["multi_turn"]
    lines.append(f"two turns: repeats {mt['repeat_rate']:.3f}, follow-up met {mt['follow_up_satisfaction']:.3f}")
    rp = r["replies"]
    lines.append(
        f"replies: non-empty {rp['non_empty']:.3f}, name the attribute {rp['names_attribute']:.3f}, "
        f"name a history title {rp['names_history_title']:.3f}"
    )
    sft = r[f"plain_recall@{k}_sft_only"]
    sft_text = "not given" if sft is None else f"{sft:.3f}"
    gap = r.get(f"plain_recall@{k}_gap_ci95")
    gap_text = f" (gap 95% interval {gap[0]:+.3f} .. {gap[1]:+.3f})" if gap else ""
    lines.append(
        f"plain Recall@{k} on {r.get('plain_users', r['users'])} users: this model {r[f'plain_recall@{k}']:.3f}, "
        f"behaviour-only SFT {sft_text}{gap_text}"
    )
    return "\n".join(lines)
