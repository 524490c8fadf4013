"""TIGER-style generative recommender over Semantic IDs (T5 encoder-decoder + constrained beam search)."""
from unisid_pipeline.recommender.evaluate import evaluate_recommender, rank_histories
from unisid_pipeline.recommender.model import (
    GenerativeRecommender,
    RecommenderConfig,
    brute_force_topk,
    constrained_beam_search,
)
from unisid_pipeline.recommender.train import build_split_examples, build_train_examples, train_recommender
from unisid_pipeline.recommender.trie import SIDTrie
from unisid_pipeline.recommender.vocab import SIDVocab, hash_user_ids

__all__ = [
    "GenerativeRecommender",
    "RecommenderConfig",
    "SIDTrie",
    "SIDVocab",
    "brute_force_topk",
    "build_split_examples",
    "build_train_examples",
    "constrained_beam_search",
    "evaluate_recommender",
    "hash_user_ids",
    "rank_histories",
    "train_recommender",
]
