"""The LLM: loading any HF causal LM (offline default SmolLM2-135M-Instruct) and SFT training."""
