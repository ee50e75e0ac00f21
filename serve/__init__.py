"""Serving through vLLM with a SID-trie logits processor. Not built yet; see the README's roadmap."""
