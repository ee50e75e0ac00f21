"""ThinkRec: a generative recommender in the OneRec-Think style."""

__version__ = "0.1.0"
