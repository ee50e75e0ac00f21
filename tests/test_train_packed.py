"""Packed (padding-free) training batches: same loss and gradients as the left-padded batch of the
same samples, packs that hold every sample once, and the Trainer of `thinkrec train` running on them.
A tiny random Llama on CPU: quick."""

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from model.collate import IGNORE, LeftPadCollator, answer_loss
from model.packing import PackedCollator, chunked_cross_entropy, pack_indices, packed_loss

VOCAB, PAD = 200, 2


def tiny_model(attention: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        pad_token_id=PAD,
    )
    cfg._attn_implementation = attention
    return LlamaForCausalLM(cfg).eval()


def rows(n: int = 5, seed: int = 0) -> list[dict]:
    """Chat-like rows: a prompt with some labelled 'code' tokens (the history loss), then an answer."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p_len, a_len = 12 + 7 * i, 3 + i % 3
        ids = torch.randint(10, VOCAB, (p_len + a_len,), generator=g).tolist()
        labels = [t if (j % 5 == 3) else IGNORE for j, t in enumerate(ids[:p_len])] + ids[p_len:]
        out.append({"input_ids": ids, "labels": labels})
    return out


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("budget", [None, 256])
def test_packed_loss_and_grads_match_the_padded_batch(attention, budget):
    model = tiny_model(attention)
    batch = rows()
    padded = answer_loss(model, LeftPadCollator(PAD)(batch))
    padded.backward()
    grad_padded = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    model.zero_grad()
    packed = packed_loss(model, PackedCollator(PAD, budget)(batch))
    packed.backward()
    grad_packed = model.model.layers[0].self_attn.q_proj.weight.grad
    assert torch.allclose(packed, padded, atol=1e-5), (packed.item(), padded.item())
    assert torch.allclose(grad_packed, grad_padded, atol=1e-6)


def test_samples_do_not_see_each_other():
    # the second sample's loss is the same alone and after the first one in a packed row
    model = tiny_model()
    a, b = rows(2)
    alone = packed_loss(model, PackedCollator(PAD)([b]))
    b_only = {**a, "labels": [IGNORE] * len(a["labels"])}  # a present, but predicting nothing
    together = packed_loss(model, PackedCollator(PAD)([b_only, b]))
    assert torch.allclose(alone, together, atol=1e-5)


def test_collator_shapes_targets_and_filler():
    batch = PackedCollator(PAD, 128)(rows(3))
    n = sum(len(r["input_ids"]) for r in rows(3))
    assert batch["input_ids"].shape == (1, 128) and batch["position_ids"].shape == (1, 128)
    assert batch["position_ids"][0, n:].tolist() == list(range(128 - n))  # the filler is its own sample
    assert (batch["input_ids"][0, n:] == PAD).all()
    assert int(batch["keep"].max()) < n and len(batch["keep"]) == len(batch["targets"])
    with pytest.raises(ValueError, match="batch_tokens"):
        PackedCollator(PAD, 16)(rows(3))


def test_pack_indices_hold_every_sample_once_within_budget():
    lengths = [int(x) for x in torch.randint(20, 300, (500,), generator=torch.Generator().manual_seed(1))]
    packs = pack_indices(lengths, 2048, seed=0)
    assert sorted(i for p in packs for i in p) == list(range(500))
    assert all(sum(lengths[i] for i in p) <= 2048 for p in packs)
    assert sum(lengths) / (2048 * len(packs)) > 0.9  # next-fit wastes under one sample per pack
    assert pack_indices(lengths, 2048, seed=0) == packs  # deterministic: resume sees the same packs
    with pytest.raises(ValueError, match="does not fit"):
        pack_indices([10, 3000], 2048, seed=0)


def test_chunked_cross_entropy_matches_the_plain_one():
    logits = torch.randn(50, VOCAB, requires_grad=True)
    targets = torch.randint(0, VOCAB, (50,))
    ours = chunked_cross_entropy(logits, targets, chunk=7)
    ours.backward()
    grad = logits.grad.clone()
    logits.grad = None
    plain = torch.nn.functional.cross_entropy(logits, targets)
    plain.backward()
    assert torch.allclose(ours, plain, atol=1e-6) and torch.allclose(grad, logits.grad, atol=1e-7)


@pytest.mark.parametrize("batch_tokens", [0, 512])
def test_the_trainer_trains_on_packed_batches(tmp_path, batch_tokens):
    from datasets import Dataset

    from model.train import build_trainer
    from thinkrec.config import TrainConfig

    encoded = Dataset.from_list(rows(12))
    cfg = TrainConfig(
        max_steps=3, batch_size=4, packing="on", batch_tokens=batch_tokens, save_steps=1000, logging_steps=1
    )
    model = tiny_model().train()
    trainer, speed = build_trainer(
        cfg, model, SimpleNamespace(pad_token_id=PAD, save_pretrained=lambda _dir: None), encoded, tmp_path
    )
    assert speed.packing and speed.batch_tokens == batch_tokens and not speed.compile  # CPU: no compile
    before = model.lm_head.weight.detach().clone()
    trainer.train()
    assert trainer.state.global_step == 3
    assert not torch.equal(before, model.lm_head.weight)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


def test_cpu_keeps_left_padding_by_default_and_bad_values_are_named():
    from model.fastpath import cpu_has_bf16, plan
    from thinkrec.config import TrainConfig
    from thinkrec.errors import ThinkRecError

    speed = plan(TrainConfig(), tiny_model())
    assert not speed.packing and not speed.compile and speed.attention is None
    assert not speed.bf16 and plan(TrainConfig(cpu_bf16=True), tiny_model()).bf16 == cpu_has_bf16()
    with pytest.raises(ThinkRecError, match="packing"):
        plan(TrainConfig(packing="yes"), tiny_model())
    # batches of alike lengths on CPU unless asked; packed rows are always drawn at random
    assert speed.sampling == "group_by_length"
    assert plan(TrainConfig(sampling="random"), tiny_model()).sampling == "random"
    assert plan(TrainConfig(packing="on"), tiny_model()).sampling == "random"
    with pytest.raises(ThinkRecError, match="sampling"):
        plan(TrainConfig(sampling="sorted"), tiny_model())
    with pytest.raises(ThinkRecError, match="packing off"):
        plan(TrainConfig(sampling="length", packing="on"), tiny_model())


def test_gradient_accumulation_on_packed_rows_matches_one_pack_per_step(tmp_path):
    # grad_accum 2 (packs collated in a worker process, as on a GPU): each micro-batch is one pack
    # within batch_tokens, and the first step's loss is the mean of the grad_accum-1 run's first two
    # steps, which see the same packs with the same weights (the first step's learning rate is 0)
    from datasets import Dataset

    from model.train import build_trainer
    from thinkrec.config import TrainConfig

    encoded = Dataset.from_list(rows(12))
    tok = SimpleNamespace(pad_token_id=PAD, save_pretrained=lambda _dir: None)
    losses = {}
    for accum, steps in ((1, 2), (2, 2)):
        cfg = TrainConfig(
            max_steps=steps,
            grad_accum=accum,
            packing="on",
            batch_tokens=128,
            dataloader_workers=1,
            save_steps=1000,
            logging_steps=1,
        )
        trainer, _ = build_trainer(cfg, tiny_model().train(), tok, encoded, tmp_path / str(accum))
        assert len(trainer.train_dataset) >= 2 * steps and trainer.data_collator.budget == 128
        trainer.train()
        assert trainer.state.global_step == steps
        losses[accum] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert all(torch.isfinite(torch.tensor(v)).all() for v in losses.values())
    assert losses[2][0] == pytest.approx((losses[1][0] + losses[1][1]) / 2, rel=1e-4), losses


def test_a_diverged_run_stops_with_a_clear_error(tmp_path):
    # a learning rate far too high sends a real tiny model's loss to inf/NaN within a few steps
    from transformers import TrainingArguments

    from model.collate import LeftPadCollator
    from model.train import AnswerOnlyTrainer, StopOnNonFiniteLoss
    from thinkrec.errors import ThinkRecError

    model = tiny_model()
    rows = [{"input_ids": [1, 2, 3, 4, 5, 6], "labels": [-100, -100, -100, 4, 5, 6]}] * 16
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=20, learning_rate=1e12,
        logging_steps=1, logging_nan_inf_filter=False, save_strategy="no", report_to="none", use_cpu=True,
        remove_unused_columns=False,
    )  # fmt: skip
    trainer = AnswerOnlyTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=LeftPadCollator(PAD),
        callbacks=[StopOnNonFiniteLoss()],
    )
    with pytest.raises(ThinkRecError, match="training loss became"):
        trainer.train()


def test_weight_average_is_measured_and_saved_and_the_raw_weights_come_back(tmp_path):
    """`--weight-average`: evaluations see the average of the weights, training goes on from the raw
    ones, and the model the stage saves is the average."""
    from datasets import Dataset
    from transformers import TrainerCallback

    from model.averaging import WeightAverage
    from model.train import build_trainer, with_weight_average
    from thinkrec.config import TrainConfig

    class Probe(TrainerCallback):  # stands where eval.curve.QualityCurve stands
        def __init__(self):
            self.average, self.seen = None, []

        def evaluate_with(self, average):
            self.average = average

        def on_step_end(self, args, state, control, model=None, **kw):
            raw = model.lm_head.weight.detach().clone()
            with self.average.applied():
                self.seen.append(model.lm_head.weight.detach().clone())
            assert torch.equal(model.lm_head.weight, raw)  # training goes on from the raw weights

    cfg = TrainConfig(
        max_steps=6,
        batch_size=4,
        packing="on",
        save_steps=1000,
        logging_steps=1,
        learning_rate=1e-2,
        weight_average=0.9,
    )
    probe = Probe()
    callbacks = with_weight_average(cfg, [probe])
    assert isinstance(callbacks[0], WeightAverage) and probe.average is callbacks[0]
    model = tiny_model().train()
    start = model.lm_head.weight.detach().clone()
    trainer, _ = build_trainer(
        cfg, model, SimpleNamespace(pad_token_id=PAD, save_pretrained=lambda _dir: None),
        Dataset.from_list(rows(12)), tmp_path, callbacks,
    )  # fmt: skip
    trainer.train()
    raw = model.lm_head.weight.detach().clone()
    average = callbacks[0].average[[p is model.lm_head.weight for p in callbacks[0].params].index(True)]
    assert torch.equal(probe.seen[-1], average)
    # the average lies between the start and the raw end point, off both
    assert not torch.equal(average, raw) and not torch.equal(average, start)
    assert (average - start).norm() < (raw - start).norm()
    callbacks[0].restore_best(model)  # what run_train does at the end
    assert torch.equal(model.lm_head.weight, average)
    from thinkrec.errors import ThinkRecError

    with pytest.raises(ThinkRecError, match="weight-average"):
        WeightAverage(1.5)


def test_weight_average_is_the_plain_mean_until_its_horizon_then_the_set_decay():
    from types import SimpleNamespace

    from model.averaging import WeightAverage

    def run(decay: float, steps: int) -> float:
        p = torch.nn.Parameter(torch.zeros(1))
        avg = WeightAverage(decay)
        avg.on_train_begin(None, None, None, model=torch.nn.ParameterList([p]))
        for step in range(1, steps + 1):
            p.data.fill_(float(step))  # the weight after optimizer step `step`
            avg.on_step_end(None, SimpleNamespace(global_step=step), None)
        return avg.average[0].item()

    # the weights 0, 1, ..., 9 (start included): within the horizon the average is their mean
    assert run(0.99, 9) == pytest.approx(4.5)
    # past it, the set decay counts (the flag mattered not at all under a (1 + t)/(10 + t) ramp)
    assert run(0.9, 200) != pytest.approx(run(0.99, 200), abs=1.0)
    assert WeightAverage(0.995).decay_at(10_000) == 0.995


def test_attention_dropout_acts_in_training_only_and_bad_values_are_named():
    from model.dropout import set_attention_dropout
    from model.fastpath import plan
    from thinkrec.config import TrainConfig
    from thinkrec.errors import ThinkRecError

    model = tiny_model()
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    set_attention_dropout(model, 0.5)
    assert all(layer.self_attn.attention_dropout == 0.5 for layer in model.model.layers)
    torch.manual_seed(0)
    model.train()
    a, b = model(ids).logits, model(ids).logits
    assert not torch.allclose(a, b)  # a fresh mask each pass
    model.eval()
    assert torch.allclose(model(ids).logits, model(ids).logits)
    set_attention_dropout(model, 0.0)
    assert model.config.attention_dropout == 0.0
    with pytest.raises(ThinkRecError, match="attention_dropout"):
        set_attention_dropout(model, 1.0)
    with pytest.raises(ThinkRecError, match="flex_attention has no dropout"):
        plan(TrainConfig(attention="flex_attention", attention_dropout=0.1), model)


def test_residual_dropout_acts_in_training_only_under_flex_packing_and_comes_off():
    from model.dropout import add_residual_dropout
    from model.fastpath import plan
    from thinkrec.config import TrainConfig
    from thinkrec.errors import ThinkRecError

    model = tiny_model()
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    model.eval()
    clean = model(ids).logits
    hooks = add_residual_dropout(model, 0.3)
    assert len(hooks) == 1 + 2 * len(model.model.layers)  # embeddings, then attention and MLP per layer
    assert torch.allclose(model(ids).logits, clean)  # eval mode: no dropout
    model.train()
    torch.manual_seed(0)
    a, b = model(ids).logits, model(ids).logits
    assert not torch.allclose(a, b) and not torch.allclose(a, clean)
    for hook in hooks:
        hook.remove()
    assert torch.allclose(model(ids).logits, clean)  # off again, even in training mode
    assert add_residual_dropout(model, 0.0) == []
    with pytest.raises(ThinkRecError, match="residual_dropout"):
        add_residual_dropout(model, 1.0)
    # unlike attention dropout, it goes with the packed rows' flex_attention
    plan(TrainConfig(attention="flex_attention", residual_dropout=0.2), model)
