"""The extended LLM: SID tokens, their initialisation, answer-only loss and trie beam search,
on the real offline SmolLM2 weights."""

import pytest
import torch

from backbone.llm import load_causal_lm
from model.collate import IGNORE, LeftPadCollator, answer_loss, encode_chat
from ranking.generate import beam_recommend, generation_prompt
from sft_data.prompts import behaviour_prompt
from thinkrec.data import load_prepared
from tokenizer_ext.prompt_block import PROMPT_BLOCK, filler_id
from tokenizer_ext.sid import SID_BEGIN, TokenTrie, code_token
from tokenizer_ext.stage import load_index


@pytest.fixture(scope="module")
def extended(tokenized_run):
    run, report = tokenized_run
    tok, model = load_causal_lm(run.path / "model_base")
    model.eval()
    ds, index = load_prepared(run), load_index(run)
    return run, report, tok, model, ds, index


def test_codebook_report_matches_table_11_shape(extended):
    _, report, *_ = extended
    assert report["items"] == 1349 and report["levels"] == 3 and report["codebook_size"] == 32
    assert report["relative_reconstruction_loss"] < 0.6
    for lv in report["per_level"]:
        assert lv["utilisation"] == 1.0 and lv["entropy"] > 0.95 * report["max_entropy"]


def test_sid_tokens_are_single_tokens_with_meaningful_embeddings(extended):
    _, report, tok, model, ds, index = extended
    assert report["llm"]["added_tokens"] == 2 + 3 * 32
    sid = index.sid(0)
    ids = tok(sid, add_special_tokens=False)["input_ids"]
    assert len(ids) == 5 and tok.decode(ids) == sid
    emb = model.get_input_embeddings().weight
    rows = torch.stack([emb[tok.convert_tokens_to_ids(code_token(0, c))] for c in range(32)])
    # not the mean-initialised constant rows resize_token_embeddings would give
    assert rows.std(0).mean() > 1e-3
    assert torch.allclose(model.get_output_embeddings().weight[ids[1]], emb[ids[1]])


@pytest.mark.parametrize("history_loss", [False, True])
def test_labels_and_truncated_logits_give_the_full_loss(extended, history_loss):
    *_, tok, model, ds, index = extended
    code_ids = {tok.convert_tokens_to_ids(code_token(lv, c)) for lv in range(3) for c in range(32)}
    rows = []
    for u in ds.users[:3]:
        msgs = behaviour_prompt(ds, index, u.train_items()[:-1]) + [
            {"role": "assistant", "content": index.sid(u.train_items()[-1])}
        ]
        rows.append(encode_chat(tok, msgs, max_length=384, prompt_label_ids=code_ids if history_loss else None))
    for r in rows:
        labelled = [t for t in r["labels"] if t != IGNORE]
        # the answer's 3 code tokens, plus with the history loss the 10 history items' 3 each
        assert sum(t in code_ids for t in labelled) == (33 if history_loss else 3)
        last_prompt = max(i for i, t in enumerate(r["labels"]) if t == IGNORE)
        answer = r["labels"][last_prompt + 1 :]
        assert tok.decode(answer).startswith(SID_BEGIN) and len(answer) <= 8
    batch = LeftPadCollator(tok.pad_token_id)(rows)
    with torch.no_grad():
        fast = answer_loss(model, batch)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert torch.allclose(fast, full, atol=1e-4)


def test_search_prompts_fill_whole_kv_blocks_with_the_fillers_training_puts_before_them(extended):
    *_, tok, model, ds, index = extended
    for u in ds.users[:4]:
        msgs = behaviour_prompt(ds, index, u.history_for("test"))
        ids = tok(generation_prompt(tok, msgs), add_special_tokens=False)["input_ids"]
        plain = tok(
            tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) + SID_BEGIN,
            add_special_tokens=False,
        )["input_ids"]
        fillers = len(ids) - len(plain)
        assert len(ids) % PROMPT_BLOCK == 0 and 0 <= fillers < PROMPT_BLOCK
        assert ids[fillers:] == plain and ids[:fillers] == [filler_id(tok)] * fillers
        # a training sample of the same prompt starts with the same tokens, fillers included
        row = encode_chat(tok, msgs + [{"role": "assistant", "content": index.sid(0)}], max_length=1024)
        assert row["input_ids"][: len(ids)] == ids


def test_trie_beam_search_matches_hf_constrained_beam_search(extended):
    *_, tok, model, ds, index = extended
    trie = TokenTrie(index, tok)
    prompts = [behaviour_prompt(ds, index, u.history_for("test")) for u in ds.users[:2]]
    ours = beam_recommend(model, tok, trie, index.lookup, prompts, num_beams=10, batch_size=2)
    assert all(len(items) == 10 for items in ours[True].items)
    assert ours[True].legal == ours[True].total  # constrained: every beam is a catalogue item
    tok.padding_side = "left"
    enc = tok([generation_prompt(tok, p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    width = enc["input_ids"].shape[1]
    out = model.generate(
        **enc,
        max_new_tokens=3,
        num_beams=10,
        num_return_sequences=10,
        do_sample=False,
        prefix_allowed_tokens_fn=lambda _b, ids: trie.allowed_after(ids[width:].tolist()),
        pad_token_id=tok.pad_token_id,
        eos_token_id=None,
    )
    hf = [[index.lookup(trie.decode_codes(b)) for b in row] for row in out[:, width:].view(2, 10, -1).tolist()]
    assert hf == ours[True].items
    # the beams decode inside the prompt's cache, which is cropped back after each search: a free
    # search run first off the same prefill leaves the constrained one unchanged
    again = beam_recommend(model, tok, trie, index.lookup, prompts, num_beams=10, batch_size=2, modes=(False, True))
    assert again[True].items == ours[True].items


def test_a_request_constraint_keeps_every_beam_inside_the_items_that_satisfy_it(extended):
    """The served chat's check (sft_data/requests.py): items ruled out by what the reply heard are
    excluded inside the search, whole branches at once, so all k answers satisfy it."""
    from sft_data.requests import parse_reply, unsatisfying

    *_, tok, model, ds, index = extended
    trie = TokenTrie(index, tok)
    heard = parse_reply(ds, "You asked for Comedy and Romance; you watched Toy Story, so this fits both:")
    assert heard is not None and heard.kind == "two_genres"
    users = ds.users[:2]
    prompts = [behaviour_prompt(ds, index, u.history_for("test")) for u in users]
    ruled_out = unsatisfying(ds, heard)
    exclude = [{index.codes[i] for i in ruled_out | set(u.history_for("test"))} for u in users]
    out = beam_recommend(model, tok, trie, index.lookup, prompts, 10, 2, modes=(True,), exclude=exclude)[True]
    assert all(len(items) == 10 for items in out.items)
    assert all(heard.satisfied(ds.items[i]) for items in out.items for i in items)
