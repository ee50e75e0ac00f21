"""The pretrained parts every stage builds on: locating and loading the base LLM (llm.py) and the
frozen image encoder (image.py). Nothing here imports a stage, so the tokenizer, the data builders,
training, evaluation, RL and serving can all use it without importing one another."""
