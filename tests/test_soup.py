"""Model soups (model/soup.py, eval/soup.py): the mean of the weights, written beside the first
ingredient's tokenizer and SIDs, and named refusals of folders that cannot be averaged. Tiny random
Llamas: quick. The greedy soup on a trained run is in tests/test_pipeline.py."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from model.soup import average_models
from thinkrec.errors import ThinkRecError


def _model(folder, seed: int, sids: str = '{"levels": 3}', dtype=torch.float32, hidden: int = 32):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=40, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    LlamaForCausalLM(cfg).to(dtype).save_pretrained(folder)
    (folder / "thinkrec_sid_index.json").write_text(sids)
    return folder


def test_the_soup_is_the_mean_in_the_first_models_dtype_with_its_files(tmp_path):
    a, b, c = (_model(tmp_path / n, s, dtype=torch.bfloat16) for n, s in (("a", 0), ("b", 1), ("c", 2)))
    # a trained model saves use_cache off, its base on: the same architecture
    cfg = json.loads((b / "config.json").read_text())
    (b / "config.json").write_text(json.dumps({**cfg, "use_cache": not cfg.get("use_cache", True)}))
    out = average_models([a, b, c], tmp_path / "soup")
    wa, wb, wc, ws = (load_file(str(f / "model.safetensors")) for f in (a, b, c, out))
    assert set(ws) == set(wa)
    for k in wa:
        mean = (wa[k].float() + wb[k].float() + wc[k].float()) / 3
        assert ws[k].dtype == torch.bfloat16
        torch.testing.assert_close(ws[k].float(), mean.to(torch.bfloat16).float())
    assert (out / "thinkrec_sid_index.json").read_text() == (a / "thinkrec_sid_index.json").read_text()
    assert LlamaForCausalLM.from_pretrained(out).config.hidden_size == 32  # loads as a model
    assert not (tmp_path / "soup.partial").exists()


def test_folders_that_cannot_be_averaged_are_refused_by_name(tmp_path):
    a = _model(tmp_path / "a", 0)
    other_sids = _model(tmp_path / "s", 1, sids='{"levels": 4}')
    with pytest.raises(ThinkRecError, match="thinkrec_sid_index.json"):
        average_models([a, other_sids], tmp_path / "out")
    wider = _model(tmp_path / "w", 1, hidden=48)
    with pytest.raises(ThinkRecError, match="config.json"):
        average_models([a, wider], tmp_path / "out")
    with pytest.raises(ThinkRecError, match="one of its ingredients"):
        average_models([a, _model(tmp_path / "b", 2)], a)
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "config.json").write_text("{}")
    (tmp_path / "lora" / "adapter_config.json").write_text("{}")
    with pytest.raises(ThinkRecError, match="LoRA"):
        average_models([a, tmp_path / "lora"], tmp_path / "out")
    with pytest.raises(ThinkRecError, match="no model folder"):
        average_models([a, tmp_path / "missing"], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
