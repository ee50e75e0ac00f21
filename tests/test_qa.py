"""User-QA, video-QA and reasoning builders (answers read off the data, held-out users and items
kept out of training), the stage mixtures, and QA training lifting held-out accuracy."""

from collections import Counter

import pytest
import torch

from sft_data.qa import (
    is_heldout_item,
    is_heldout_user,
    item_questions,
    rationale,
    rationale_well_formed,
    reasoning_samples,
    top_genres,
    user_questions,
)
from sft_data.stage import mixture_ratios
from thinkrec.config import SFTDataConfig
from thinkrec.errors import ThinkRecError
from tokenizer_ext.sid import find_sids


def test_user_questions_are_answered_by_the_history(data):
    ds, index = data
    questions = user_questions(ds, index, 90, history_len=10, heldout=False, seed=3)
    assert Counter(q.task for q in questions) == {"user_top_genre": 30, "user_watched": 30, "user_rating": 30}
    for q in questions:
        right = q.options[q.label]
        text = q.messages[1]["content"]
        if q.task == "user_top_genre":
            shown = [i for i in range(len(ds.items)) if f"{index.sid(i)} {ds.items[i].title}\n" in text + "\n"]
            counts = Counter(g for i in shown for g in ds.items[i].genres)
            assert counts.most_common(1)[0] == (right, max(counts.values()))
            assert all(counts[o] == 0 for k, o in enumerate(q.options) if k != q.label)
        elif q.task == "user_watched":
            watched = [i for i in range(len(ds.items)) if ds.items[i].title == right]
            assert any(index.sid(i) in text for i in watched)  # the history lists it (as a SID only)
            assert right not in text.split("Which of these")[0]  # only its SID is shown
        else:
            assert q.options == ["Yes", "No"]
        if q.task != "user_rating":
            assert len(set(q.options)) == 4 and all(f"- {o}\n" in text for o in q.options)


def test_item_questions_and_rationales_match_the_catalogue(data):
    ds, index = data
    for q in item_questions(ds, index, 60, heldout=True, seed=1):
        item = index.item(find_sids(q.messages[1]["content"])[0])
        assert is_heldout_item(item)
        right = q.options[q.label]
        it = ds.items[item]
        expected = {"item_title": [it.title], "item_genre": it.genres, "item_decade": [f"{it.year[:3]}0s"]}[q.task]
        assert right in expected
    shown = ds.users[0].train_items()[-10:]
    text = rationale(ds, shown, target=ds.users[0].train_items()[-1])
    top = Counter(g for i in shown for g in ds.items[i].genres).most_common(1)[0]
    assert text.startswith(f"Recent movies lean to {top[0]} ({top[1]} of 10)") and top[0] in top_genres(ds, shown)
    for row in reasoning_samples(ds, index, 20, 10, seed=0):
        answer = row["messages"][-1]["content"]
        assert answer.startswith("<think>") and "</think>\n<|sid_begin|>" in answer
        index.item(answer.split("\n")[-1])  # the trace ends in a catalogue item


def test_the_format_reward_checks_every_claim_of_a_rationale(data):
    ds, _ = data
    shown = ds.users[0].train_items()[-10:]
    teacher = f"<think>{rationale(ds, shown, target=ds.users[0].train_items()[-1])}</think>"
    assert rationale_well_formed(ds, shown, teacher, closed=True)
    assert not rationale_well_formed(ds, shown, teacher, closed=False)  # cut at the length cap
    wrong_title = teacher.replace(ds.items[shown[-1]].title, ds.items[shown[0]].title)
    assert shown[0] == shown[-1] or not rationale_well_formed(ds, shown, wrong_title, closed=True)
    lead = Counter(g for i in shown for g in ds.items[i].genres).most_common(1)[0][0]
    other = next(g for g in ("Documentary", "Film-Noir", "Western") if g not in top_genres(ds, shown))
    wrong_genre = teacher.replace(f"lean to {lead} (", f"lean to {other} (", 1)
    assert wrong_genre != teacher and not rationale_well_formed(ds, shown, wrong_genre, closed=True)
    assert not rationale_well_formed(ds, shown, "<think>I like movies.</think>", closed=True)


def test_training_questions_never_touch_held_out_users_or_items(data):
    ds, index = data
    for q in item_questions(ds, index, 150, heldout=False, seed=0):
        assert not is_heldout_item(index.item(find_sids(q.messages[1]["content"])[0]))
    held_histories = {
        "\n".join(index.sid(i) for i in u.train_items()[-10:]) for p, u in enumerate(ds.users) if is_heldout_user(p)
    }
    for q in user_questions(ds, index, 60, 10, heldout=False, seed=0, tasks=("user_watched",)):
        assert not any(h in q.messages[1]["content"] for h in held_histories)
    assert any(is_heldout_item(i) for i in range(len(ds.items)))  # the split is not empty


def test_mixture_ratios_parse_and_refuse_bad_input():
    assert mixture_ratios(SFTDataConfig()) == {"behaviour": 1.0, "alignment": 0.3, "request": 0.3}
    r = mixture_ratios(SFTDataConfig(mixture="activation", ratios="user_qa=0.8, behaviour=0"))
    assert r["user_qa"] == 0.8 and r["behaviour"] == 0.0 and r["reasoning"] == 0.5
    with pytest.raises(ThinkRecError, match="unknown mixture"):
        mixture_ratios(SFTDataConfig(mixture="nope"))
    with pytest.raises(ThinkRecError, match="unknown task"):
        mixture_ratios(SFTDataConfig(ratios="chat=1"))
    with pytest.raises(ThinkRecError, match="task=number"):
        mixture_ratios(SFTDataConfig(ratios="user_qa=lots"))


# QA training CI runs: activation from the SFT fixture's model (as the demo's curriculum does), with
# batches drawn at random; steps and the history shown, small enough for 2 cores (~12 min)
QA_TRAIN_STEPS = 75
QA_HISTORY = 6
QA_RATIOS = "behaviour=0.1,user_qa=0.4,video_qa=0.4,alignment=0.2,reasoning=0.3,request=0"


@pytest.mark.slow
def test_training_on_the_qa_mixture_lifts_held_out_qa_accuracy_above_the_untrained_model(trained_run, tmp_path):
    import shutil

    from eval.qa import format_qa_table, run_qa_eval
    from model.train import run_train
    from sft_data.stage import run_sft_data
    from thinkrec.config import QAEvalConfig, TrainConfig
    from thinkrec.rundir import RunDir

    src, _ = trained_run
    # a copy: the QA mixture's history length must not reach the run the later tests share
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    for part in ("manifest.json", "data", "tokenizer", "model_base", "sft"):
        (shutil.copytree if (src.path / part).is_dir() else shutil.copy)(src.path / part, run.path / part)
    counts = run_sft_data(SFTDataConfig(mixture="activation", history_len=QA_HISTORY, ratios=QA_RATIOS), run)
    assert {"user_top_genre", "item_genre", "reasoning", "behaviour"} <= set(counts)
    train = TrainConfig(
        mixture="activation",
        sft_name="sft_qa",
        init_from="sft",
        max_steps=QA_TRAIN_STEPS,
        save_steps=10_000,
        cpu_bf16=True,
        sampling="random",
    )
    run_train(train, run)
    # the rationale is scored on the recommendation users: with 16, one user moves it by 1/16
    cfg = QAEvalConfig(qa_models="base,sft_qa", qa_history_len=QA_HISTORY, qa_questions=32, qa_rec_users=16)
    report = run_qa_eval(cfg, run)
    print(format_qa_table(report))
    base, trained = report["models"]["base"]["accuracy"], report["models"]["sft_qa"]["accuracy"]
    choice_tasks = [t for t in base if t != "rationale"]
    mean = lambda acc: sum(acc[t] for t in choice_tasks) / len(choice_tasks)  # noqa: E731
    assert mean(trained) > mean(base) + 0.1, (base, trained)
    for task in ("user_top_genre", "item_decade"):  # the tasks these steps clearly teach
        assert trained[task] > base[task] + 0.25, (task, base, trained)
    assert trained["rationale"] > base["rationale"] + 0.3
    assert (run.path / "eval" / "qa.json").exists()


def test_options_scored_together_get_the_log_likelihood_each_gets_alone():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from backbone.llm import resolve_base_model
    from eval.options import option_row, option_scores
    from model.collate import IGNORE, LeftPadCollator, answer_logits, encode_chat

    tok = AutoTokenizer.from_pretrained(resolve_base_model(""))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    questions = [
        ([{"role": "user", "content": "Which genre?"}], ["Drama", "Film-Noir", "Sci-Fi", "Children's"]),
        ([{"role": "system", "content": "be brief"}, {"role": "user", "content": "Seen it?"}], ["Yes", "No"]),
    ]
    together = option_scores(model, [option_row(tok, m, o) for m, o in questions], tok.pad_token_id)
    for (messages, options), scores in zip(questions, together, strict=True):
        for option, score in zip(options, scores, strict=True):
            batch = LeftPadCollator(tok.pad_token_id)(
                [encode_chat(tok, [*messages, {"role": "assistant", "content": option}], 256)]
            )
            with torch.no_grad():
                logits, target = answer_logits(model, batch)
            alone = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            assert score == pytest.approx(float((alone * (target != IGNORE)).sum()), abs=1e-4)


def test_a_registered_task_joins_the_mixture_by_its_ratio(tokenized_run, tmp_path):
    import shutil

    from sft_data.stage import run_sft_data
    from sft_data.tasks import TASKS, register_task
    from thinkrec.rundir import RunDir

    @register_task("item_id")  # a new task: one function
    def item_ids(ctx, n):
        return [
            {"messages": [{"role": "user", "content": f"Id of {ctx.index.sid(i)}?"},
                          {"role": "assistant", "content": ctx.ds.items[i].item_id}], "task": "item_id"}
            for i in range(n)
        ]  # fmt: skip

    src, _ = tokenized_run
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    for part in ("manifest.json", "data", "tokenizer"):
        (shutil.copytree if (src.path / part).is_dir() else shutil.copy)(src.path / part, run.path / part)
    (run.path / "model_base").symlink_to(src.path / "model_base")
    try:
        counts = run_sft_data(SFTDataConfig(ratios="item_id=0.01,request=0"), run)
        assert counts["item_id"] == round(0.01 * counts["behaviour"]) and "request" not in counts
        with pytest.raises(ValueError, match="registered already"):
            register_task("item_id")(item_ids)
    finally:
        del TASKS["item_id"]
    with pytest.raises(ThinkRecError, match="unknown task"):
        run_sft_data(SFTDataConfig(ratios="item_id=0.01"), run)
