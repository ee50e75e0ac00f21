"""Sequential recommenders trained on item ids (SASRec, GRU4Rec, most-popular): the honest baselines
that eval ranks against, and the source of collaborative item embeddings for the tokenizer."""
