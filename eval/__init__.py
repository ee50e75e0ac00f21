"""Evaluation: Recall/NDCG on held-out next items, SID legality, and the baselines."""
