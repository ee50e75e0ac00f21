"""Items -> Semantic IDs: content embeddings, collaborative alignment, RQ-Kmeans, the SID index
and prefix trie, and the LLM tokenizer extended with SID tokens."""
