"""Evaluation: metrics for rating error, within-query and full-catalogue ranking, and popularity bias."""

from metarec.eval.metrics import (
    RELEVANT_RATING,
    average_precision_at_k,
    catalogue_mrr,
    catalogue_ndcg_at_k,
    catalogue_ranking_metrics,
    catalogue_recall_at_k,
    coverage_at_k,
    head_items,
    long_tail_share,
    mae,
    mae_rmse,
    map_at_k,
    mean_popularity_percentile,
    ndcg_at_k,
    popularity_percentile,
    precision_at_k,
    query_ranking_metrics,
    rmse,
    top_k_items,
)

__all__ = [
    "RELEVANT_RATING", "mae", "rmse", "mae_rmse",
    "ndcg_at_k", "precision_at_k", "average_precision_at_k", "map_at_k", "query_ranking_metrics",
    "catalogue_ndcg_at_k", "catalogue_recall_at_k", "catalogue_mrr", "top_k_items", "catalogue_ranking_metrics",
    "coverage_at_k", "popularity_percentile", "mean_popularity_percentile", "head_items", "long_tail_share",
]
