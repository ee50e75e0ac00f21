"""Ranking with the LLM and measuring a ranking: the trie-constrained beam search and sampling on HF
forward passes (generate.py) and Recall/NDCG@K (metrics.py). Lower than the stages that use them:
the learning curve, `thinkrec eval`, RL's rollouts and selection, and the benchmarks."""
