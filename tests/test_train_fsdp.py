"""Saving the final model after FSDP2 training: every process gathers the full state dict, process 0
loads it into a plain copy of the model (LoRA-wrapped as trained), merges and saves. Two CPU
processes on gloo with a tiny Llama: quick."""

import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from test_train_packed import VOCAB, tiny_model

SID = [f"<s_{i}>" for i in range(5)]


def _lora(model):
    from model.train import _wrap_lora
    from thinkrec.config import TrainConfig

    tok = SimpleNamespace(get_vocab=lambda: {t: 150 + i for i, t in enumerate(SID)})
    return _wrap_lora(model, tok, TrainConfig(lora_rank=4), SID), tok


def _worker(rank: int, port: int, out: str) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    import model.train as train
    from thinkrec.config import TrainConfig

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model, tok = _lora(tiny_model().train())
    torch.manual_seed(1)
    with torch.no_grad():  # the "trained" weights, the same on both processes
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    for layer in model.get_base_model().model.layers:
        fully_shard(layer)
    fully_shard(model)
    model(input_ids=torch.randint(0, VOCAB, (1, 16))).logits.sum().backward()
    # what Accelerator.get_state_dict does under FSDP2, collectively
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        train.load_causal_lm = lambda _start: (tok, tiny_model())
        train.sid_tokens = lambda _levels, _size: SID
        index = SimpleNamespace(levels=1, codebook_size=len(SID))
        copy = train._unsharded_copy("base", tok, TrainConfig(lora=True, lora_rank=4), index, state)
        got = copy.state_dict()
        assert set(got) == set(reference) and all(torch.equal(got[k], reference[k]) for k in reference)
        copy.merge_and_unload().save_pretrained(out)
    dist.barrier()
    dist.destroy_process_group()


def test_fsdp2_final_model_is_gathered_then_saved_by_process_zero(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("no gloo backend")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_worker, args=(port, str(tmp_path)), nprocs=2)
    from transformers import LlamaForCausalLM

    saved = LlamaForCausalLM.from_pretrained(tmp_path)
    assert saved.config.vocab_size == VOCAB and not any("lora" in k for k in saved.state_dict())
