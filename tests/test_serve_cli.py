"""`thinkrec serve` arguments: ServeConfig flags before or after RUN_DIR, only what follows `--`
goes to vLLM, and an API key given to vLLM is kept off its command line."""

from __future__ import annotations

from cli.main import _build, _split_vllm_args, parser
from serve.launch import _take_api_key
from thinkrec.config import ServeConfig


def _parse(argv: list[str]):
    own, vllm_args = _split_vllm_args(argv)
    args = parser().parse_args(own)
    return args, _build(ServeConfig, args), vllm_args


def test_flags_before_and_after_run_dir():
    for argv in (
        ["serve", "runs/demo", "--model-dir", "X", "--port", "9000"],
        ["serve", "--model-dir", "X", "runs/demo", "--port", "9000"],
        ["serve", "--model-dir", "X", "--port", "9000", "runs/demo"],
    ):
        args, cfg, vllm_args = _parse(argv)
        assert args.run_dir == "runs/demo" and cfg.model_dir == "X" and cfg.port == 9000, argv
        assert vllm_args == []


def test_only_what_follows_the_separator_goes_to_vllm():
    args, cfg, vllm_args = _parse(["serve", "runs/demo", "--api-key", "K", "--", "--max-log-len", "10", "--port", "1"])
    assert cfg.api_key == "K" and cfg.port == 8000  # the --port after `--` is vLLM's, not ServeConfig's
    assert vllm_args == ["--max-log-len", "10", "--port", "1"]
    _, cfg, _ = _parse(["serve"])
    assert cfg == ServeConfig()


def test_api_key_for_vllm_is_taken_off_the_command_line():
    assert _take_api_key(["--api-key", "K", "--x", "1"]) == ("K", ["--x", "1"])
    assert _take_api_key(["--api-key=K"]) == ("K", [])
    assert _take_api_key(["--x"]) == ("", ["--x"])


def test_item_labels_show_the_configured_attributes_in_the_catalogue_terms():
    from serve.catalogue import item_label
    from thinkrec.data import Item

    movie = Item(
        0, "1", "Toy Story", "1995", ["Animation", "Comedy"], {"genres": ["Animation", "Comedy"], "year": 1995.0}
    )
    assert item_label(movie, [("genres", "")]) == "Toy Story (1995) [Animation, Comedy]"  # year: the time attribute
    mug = Item(1, "A1", "Mug", "", ["Kitchen"], {"category": "Kitchen", "brand": "Acme", "price": 3.5, "series": None})
    shown = [("category", ""), ("brand", ""), ("price", "$"), ("series", "")]
    assert item_label(mug, shown) == "Mug [Kitchen; Acme; $3.5]"  # an empty value is left out
    assert item_label(mug, []) == "Mug [Kitchen]" and item_label(Item(2, "x", "X", "", [], {}), []) == "X"
