"""The MCA baseline cascade (stage ``mca``): faiss recall -> linear pre-ranker -> GBDT ranker."""
